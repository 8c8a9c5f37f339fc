"""Usage:  nsbox pull [OPTIONS] NAME[:TAG|@DIGEST]

Pull an image from a registry (OCI distribution API) into the store and print
its id.  A short name resolves through registries.conf (aliases, then
unqualified-search registries); credentials come from auth.json.
"""

from __future__ import annotations

import sys
import threading

FLAGS = {"quiet": "bool", "platform": "str", "tls-verify": "bool", "cert-dir": "str", "authfile": "str",
         "arch": "str", "os": "str", "variant": "str"}
ALIASES = {"q": "quiet"}
HELP = {
    "quiet": "Print only the image id",
    "platform": ("os/arch[/variant]", "The platform to pick from a manifest list (default: this host's)"),
    "tls-verify": "Require HTTPS with a verified certificate (default true; false also allows plain HTTP)",
    "cert-dir": ("path", "CA certificates (*.crt) and a client certificate (*.cert, *.key) for the "
                         "registry (default: its certs.d directory)"),
    "authfile": ("path", "The auth.json to read credentials from"),
    "arch": ("arch", "The architecture to pick (instead of --platform)"),
    "os": ("os", "The OS to pick (instead of --platform)"),
    "variant": ("variant", "The architecture variant to pick"),
}


class PullProgress:
    """Progress of parallel downloads: one line per blob.

    On a terminal each blob keeps its own line, redrawn in place; piped, a
    line is written when a blob is done (or skipped).  Thread-safe.
    """

    def __init__(self, stream=None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.lines: list[str] = []      # labels, in the order shown
        self.finished: set[str] = set()

    def announce(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()
            if self.tty:
                self.lines.clear()

    def __call__(self, label: str, done: int, total: int) -> None:
        from nsbox.engine.cli._format import human_size
        complete = total == 0 or done >= total
        if complete:
            text = label if total == 0 else f"{label} done {human_size(total)}"
        else:
            width = 24
            filled = int(width * done / total)
            text = f"{label} [{'=' * filled}{'>' if filled < width else ''}" \
                   f"{' ' * (width - filled - 1)}] {human_size(done)}/{human_size(total)}"
        with self.lock:
            if label in self.finished:
                return
            if complete:
                self.finished.add(label)
            if not self.tty:
                if complete:
                    self.stream.write(text + "\n")
                    self.stream.flush()
                return
            if label not in self.lines:
                self.lines.append(label)
                self.stream.write(text + "\n")
            else:
                up = len(self.lines) - self.lines.index(label)
                self.stream.write(f"\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")
            self.stream.flush()


def platform_of(flags: dict) -> str | None:
    if flags.get("platform"):
        return flags["platform"]
    if any(flags.get(k) for k in ("os", "arch", "variant")):
        from nsbox.engine.images.layout import oci_architecture
        parts = [flags.get("os") or "linux", flags.get("arch") or oci_architecture()]
        if flags.get("variant"):
            parts.append(flags["variant"])
        return "/".join(parts)
    return None


def pull_image(store, ref: str, flags: dict, quiet: bool = False):  # noqa: ANN001, ANN201
    """Pull REF into STORE with the pull flags in FLAGS; progress on stderr unless QUIET."""
    progress = None if quiet else PullProgress()
    return store.pull(ref, platform=platform_of(flags), tls_verify=flags.get("tls-verify"),
                      authfile=flags.get("authfile") or None, progress=progress,
                      cert_dir=flags.get("cert-dir") or None,
                      announce=progress.announce if progress else None)


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args

    (ref,) = need_args(args, "pull", 1, 1)
    image = pull_image(ctx.images(), ref, args.flags, quiet=bool(args["quiet"]))
    sys.stdout.write(image.id.removeprefix("sha256:") + "\n")
    return 0
