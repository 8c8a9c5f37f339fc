"""Usage:  nsbox run [OPTIONS] IMAGE [COMMAND] [ARG...]

Create and run a new container from an image.  With -d, print the container
id; otherwise stream its output (a terminal with -t) and exit with its code.
Takes every `docker run` resource, mount, namespace and process flag
(see docs/engine-cli.md); bad values exit 125 before anything is created.
"""

from __future__ import annotations

import sys

from nsbox._lite import suppress
from nsbox.engine.run_flags import RUN_ALIASES, RUN_FLAG_HELP, RUN_FLAGS

FLAGS = dict(RUN_FLAGS)
ALIASES = RUN_ALIASES
HELP = RUN_FLAG_HELP
STOP_AFTER = 1


def make_spec(args, command_name: str):  # noqa: ANN001, ANN201
    from nsbox.engine import flags
    from nsbox.engine.cli import need_args

    need_args(args, command_name, 1)
    image, command = args.positional[0], args.positional[1:]
    return flags.build_spec(image, command or None, args.flags)


def prepare(args, ctx, command_name: str, spec=None):  # noqa: ANN001, ANN201
    """The spec from the flags (or SPEC) and the engine, with the image in place (built if offline)."""
    from nsbox import api
    from nsbox.engine.cli._format import Progress

    spec = spec or make_spec(args, command_name)
    if spec.privileged:
        from nsbox.engine.security import PRIVILEGED_WARNING
        sys.stderr.write(PRIVILEGED_WARNING + "\n")
    engine = ctx.engine()
    progress = Progress()
    flags = args.flags
    try:
        api.ensure_image(engine.images, spec.image, progress, pull=flags.get("pull") or "missing",
                         pull_image=_puller(flags))
    finally:
        progress.close()
    return spec, engine


def _puller(flags: dict):  # noqa: ANN202
    def pull_image(store, ref: str) -> None:  # noqa: ANN001
        from nsbox.engine.cli.cmd_pull import pull_image as pull
        pull(store, ref, flags)
    return pull_image


def run(args, ctx) -> int:  # noqa: ANN001
    spec = make_spec(args, "run")
    detach = bool(args["detach"])
    foreground = not detach and (spec.tty or spec.interactive)
    monitor = None
    if not foreground:
        # Forked now, the monitor gets ready while the container is being made.
        from nsbox.engine.containers import prefork_monitor
        monitor = prefork_monitor(notify=not detach)
    try:
        return _run(args, ctx, spec, detach, foreground, monitor)
    finally:
        if monitor is not None:
            monitor.close()


def _run(args, ctx, spec, detach: bool, foreground: bool, monitor) -> int:  # noqa: ANN001
    from nsbox import api
    from nsbox.engine.cli._common import reraise_invoke
    from nsbox.errors import ContainerExists, NsboxError

    spec, engine = prepare(args, ctx, "run", spec)
    if spec.name and api.name_holder(engine, spec.name):
        raise api.name_conflict(engine, spec.name)
    try:
        if foreground:
            # A terminal or stdin: the runtime runs in the foreground, in our terminal.
            return engine.run_foreground(spec)
        # Attached without a terminal: --rm is done here, after the output is
        # read, so the logs are not removed under our feet.  The record keeps
        # the intent all the same: should we die, the monitor (or the next
        # command) removes it (docs/engine.md, "Crash safety").
        auto_remove = spec.auto_remove
        remove_after = auto_remove and not detach
        container = api.create_container(engine, spec, then_start=True)
    except ContainerExists:
        if spec.name:
            raise api.name_conflict(engine, spec.name) from None
        raise
    try:
        if detach:
            engine.start(container.id, monitor=monitor)
        else:
            attached = engine.start_attached(container.id, monitor=monitor)
    except NsboxError as exc:
        if auto_remove:  # a container that never ran is not left behind with --rm
            with suppress(NsboxError):
                engine.remove(container.id, force=True, volumes=True)
        reraise_invoke(exc)
    if detach:
        sys.stdout.write(container.id + "\n")
        return 0
    from nsbox.engine.cli._common import stream_logs

    try:
        stream_logs(attached.logs())
    except BaseException:
        attached.close()
        if remove_after:
            engine.remove(container.id, force=True, volumes=True)
        raise
    return attached.finish(remove=remove_after)
