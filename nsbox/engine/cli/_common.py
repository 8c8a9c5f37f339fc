"""Pieces several `nsbox` commands share: container rows, statuses, error codes, loops."""

from __future__ import annotations

import sys
import time

from nsbox.errors import NsboxError


def invoke_exit_code(exc: NsboxError) -> int:
    """Docker's code for a container command that could not run: 127 not found, 126 not runnable."""
    code = getattr(exc, "exit_code", 1)
    if code in (126, 127):
        return code
    text = str(exc).lower()
    if "executable file not found" in text or ("exec" in text and "no such file" in text):
        return 127
    if "exec" in text and ("permission denied" in text or "not a regular file" in text):
        return 126
    return 125


def reraise_invoke(exc: NsboxError) -> None:
    """Give EXC Docker's exit code for a failed start of the container's command."""
    code = invoke_exit_code(exc)
    if code != 125:
        exc.exit_code = code
    raise exc


def command_of(container) -> list[str]:  # noqa: ANN001
    """The container's full command line (entrypoint + command) as far as known."""
    args = getattr(container, "command", None)
    if isinstance(args, list) and args:
        return args
    extra = getattr(container, "extra", None) or {}
    if extra.get("path"):  # what create resolved, the image's ENTRYPOINT/CMD included
        return [extra["path"], *extra.get("args", [])]
    spec = container.spec
    return list(spec.entrypoint or []) + list(spec.command or [])


def quoted_command(container, truncate: bool = True) -> str:  # noqa: ANN001
    text = " ".join(command_of(container))
    if truncate and len(text) > 20:
        text = text[:19] + "…"
    return f'"{text}"'


def status_of(container, now: float | None = None) -> str:  # noqa: ANN001
    """Docker's STATUS column: "Up 3 seconds", "Exited (0) 2 seconds ago", "Created"."""
    from ._format import ago, human_duration, to_epoch

    now = now or time.time()
    state = container.state
    if state == "created":
        return "Created"
    if state in ("running", "paused"):
        text = "Up " + human_duration(now - to_epoch(container.started_at))
        if state == "paused":
            return text + " (Paused)"
        extra = getattr(container, "extra", None) or {}
        if extra.get("healthcheck"):  # Docker's "(healthy)", "(health: starting)"
            from nsbox.engine.health.state import STARTING, status
            health = status(container.bundle)
            if health:
                text += f" (health: {health})" if health == STARTING else f" ({health})"
        return text
    if state == "restarting":
        return f"Restarting ({container.exit_code}) {ago(container.finished_at, now)}".rstrip()
    if state == "dead":
        return "Dead"
    # Nobody saw the exit (its monitor was gone): no code is made up.
    code = "unknown" if getattr(container, "exit_unknown", False) else container.exit_code
    return f"Exited ({code}) {ago(container.finished_at, now)}".rstrip()


def ports_of(engine, container) -> str:  # noqa: ANN001
    if container.state != "running":
        return ""
    try:
        ports = engine.port(container.id)
    except Exception:  # noqa: BLE001 - the PORTS column is best effort
        return ""
    return ", ".join(f"{host}->{inside}" for inside, hosts in sorted(ports.items())
                     for host in (hosts if isinstance(hosts, list) else [hosts]))


def row_of(engine, container, truncate: bool = True, now: float | None = None) -> dict:  # noqa: ANN001
    """One `ps` item as Docker's --format fields see it."""
    from ._format import ago, to_epoch

    created = to_epoch(container.created)
    labels = container.spec.labels or {}
    return {
        "ID": container.id[:12] if truncate else container.id,
        "Names": container.name,
        "Image": container.image,
        "Command": quoted_command(container, truncate),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(created)),
        "RunningFor": ago(created, now),
        "Status": status_of(container, now),
        "State": container.state,
        "Ports": ports_of(engine, container),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Mounts": ",".join(m.source or m.target for m in container.spec.mounts),
        "Size": "",
    }


def for_each(refs: list[str], action, echo: bool = True,  # noqa: ANN001
             not_found: int = 125) -> int:
    """Apply ACTION to each ref like `docker stop a b`: print each, report errors, go on.

    The exit code is 125 after an error; NOT_FOUND if every error was a missing container.
    """
    from nsbox.errors import ContainerNotFound

    failed = missing = False
    for ref in refs:
        try:
            result = action(ref)
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            if isinstance(exc, ContainerNotFound):
                missing = True
            else:
                failed = True
            continue
        if echo:
            sys.stdout.write(f"{result if isinstance(result, str) else ref}\n")
    return 125 if failed else not_found if missing else 0


def image_row(summary) -> list[dict]:  # noqa: ANN001
    """`images` items, one per name (or one <none> row), as Docker's --format sees them."""
    from ._format import ago, human_size

    rows = []
    names = summary.repo_tags or ["<none>:<none>"]
    # One digest per repository: after `push --format` they differ between repositories.
    digests = dict(d.partition("@")[::2] for d in summary.repo_digests)
    first = summary.repo_digests[0].partition("@")[2] if summary.repo_digests else "<none>"
    for name in names:
        repo, _, tag = name.rpartition(":")
        if "/" in tag or not repo:
            repo, tag = name, "<none>"
        rows.append({"Repository": repo, "Tag": tag, "ID": summary.id.removeprefix("sha256:")[:12],
                     "FullID": summary.id, "CreatedSince": ago(summary.created),
                     "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z %Z",
                                                time.localtime(summary.created)),
                     "Size": human_size(summary.size),
                     "Digest": digests.get(repo, first)})
    return rows


def stream_logs(records, timestamps: bool = False) -> None:  # noqa: ANN001
    """Copy log records to our stdout/stderr as they come."""
    from nsbox.engine.logs import split_record

    for record in records:
        stream, stamp, data = split_record(record)
        out = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        if timestamps and stamp:
            out.write(stamp.encode() + b" ")
        out.write(data)
        out.flush()


def parse_since(text: str | None) -> float | None:
    """--since: a Unix time, an RFC 3339 time, or a duration ago like 10s, 5m, 2h."""
    if not text:
        return None
    from nsbox.errors import ConfigError

    from ._format import to_epoch

    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    stamp = to_epoch(text)
    if not stamp:
        raise ConfigError(f'invalid argument "{text}" for "--since" flag: not a time or duration')
    return stamp
