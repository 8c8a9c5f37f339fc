"""Usage:  nsbox inspect [OPTIONS] NAME|ID [NAME|ID...]

Low-level information on containers or images, as a JSON array, or one
line per object with -f/--format (Go template: {{.State.Pid}}, {{json .Config}}).
  --type container|image   only look for that kind of object
  --security               a container's security posture instead: capabilities,
                           seccomp, namespaces shared with the host or other
                           containers, masked paths, pids limit, user mapping;
                           anything weaker than nsbox's default is flagged
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str", "type": "str", "size": "bool", "security": "bool"}
ALIASES = {"f": "format", "s": "size"}
HELP = {
    "format": ("string", "Format output using a Go template"),
    "type": ("string", "Only inspect this type: container or image"),
    "size": "Accepted for Docker compatibility; ignored",
    "security": "Show the security posture of containers instead",
}


def lookup(ctx, ref: str, kind: str | None) -> dict:  # noqa: ANN001
    from nsbox.errors import ContainerNotFound, ImageNotFound, NsboxError

    if kind in (None, "", "container"):
        try:
            return ctx.engine().inspect(ref)
        except (ContainerNotFound, ImportError):
            if kind == "container":
                raise ContainerNotFound(f"no such container: {ref}") from None
        except NsboxError as exc:
            if kind == "container" or "no such" not in str(exc).lower():
                raise
    try:
        return ctx.images().inspect(ref)
    except ImageNotFound:
        if kind == "image":
            raise ImageNotFound(f"No such image: {ref}") from None
        raise ContainerNotFound(f"no such object: {ref}") from None


def emit(items: list[dict], template: str | None) -> None:
    import json

    from nsbox.engine.cli._format import render

    if template:
        for item in items:
            sys.stdout.write(render(template, item) + "\n")
    else:
        sys.stdout.write(json.dumps(items, indent=4) + "\n")


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.errors import ConfigError, NsboxError

    refs = need_args(args, "inspect", 1)
    if args["security"]:
        return security(ctx, refs, args["format"])
    kind = args["type"]
    if kind not in (None, "", "container", "image"):
        raise ConfigError(f'"{kind}" is not a valid value for --type')
    items, failed = [], False
    for ref in refs:
        try:
            items.append(lookup(ctx, ref, kind))
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    if items or not args["format"]:
        emit(items, args["format"])
    return 125 if failed else 0


def security(ctx, refs: list[str], template: str | None) -> int:  # noqa: ANN001
    from nsbox.engine.cli._format import render
    from nsbox.errors import NsboxError

    failed = False
    for ref in refs:
        try:
            report = ctx.engine().security_posture(ref)
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
            continue
        if template:
            sys.stdout.write(render(template, report) + "\n")
            continue
        out = [f"{report['Name']} ({report['Id'][:12]}):"]
        width = max(len(i["item"]) for i in report["items"])
        for entry in report["items"]:
            value = entry["value"]
            if isinstance(value, list):
                value = " ".join(str(v).removeprefix("CAP_") for v in value) or "none"
            flag = "WEAKER  " if entry["weaker"] else "ok      "
            why = f"  ({entry['why']})" if entry["why"] else ""
            out.append(f"  {flag}{entry['item'].ljust(width)}  {value}{why}")
        weaker = report["weaker"]
        out.append(f"  {len(weaker)} item(s) weaker than the default"
                   + (f": {', '.join(weaker)}" if weaker else ""))
        sys.stdout.write("\n".join(out) + "\n")
    return 125 if failed else 0
