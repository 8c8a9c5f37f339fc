"""Reading container logs written by the monitor (json-file or k8s-file, rotated files too)."""

from __future__ import annotations

import os
import time
from _collections import deque  # the collections package costs ~1.5 ms to import

from nsbox import _json

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

LOG_FILE = "ctr.log"
MAX_FILES_SCAN = 100
# The default limits of a container's log, set at create unless --log-opt
# gives max-size (docs/engine.md, "Logs"); "0" or "-1" in the environment: unlimited.
LOG_MAX_SIZE_ENV, LOG_MAX_FILE_ENV = "NSBOX_LOG_MAX_SIZE", "NSBOX_LOG_MAX_FILE"
DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_MAX_FILE = "10m", "2"
# The monitor's count of output it could not write (a full disk): "LINES BYTES".
DROPS_SUFFIX = ".dropped"


def parse_size(text: str | None) -> int:
    """'10m' / '1g' / '512k' / '100' -> bytes (0 = unlimited)."""
    if not text:
        return 0
    text = text.strip().lower().rstrip("b")
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def log_limits(opts: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """OPTS (--log-opt) with the effective max-size and max-file filled in.

    Without max-size: NSBOX_LOG_MAX_SIZE (default 10m; 0 or -1: unlimited)
    and, unless given, max-file NSBOX_LOG_MAX_FILE (default 2).  With
    max-size but no max-file: 1, as Docker.  ValueError for a bad variable.
    """
    env = os.environ if environ is None else environ
    out = dict(opts)
    if "max-size" not in out:
        size = env.get(LOG_MAX_SIZE_ENV, "").strip() or DEFAULT_LOG_MAX_SIZE
        if size.lstrip("-") == "0" or size == "-1":
            return out  # unlimited
        if parse_size(size) <= 0:
            raise ValueError(f"{LOG_MAX_SIZE_ENV}={size}: not a size")
        out["max-size"] = size
        if "max-file" not in out:
            count = env.get(LOG_MAX_FILE_ENV, "").strip() or DEFAULT_LOG_MAX_FILE
            if int(count) < 1:
                raise ValueError(f"{LOG_MAX_FILE_ENV}={count}: not a count of files")
            out["max-file"] = count
    elif "max-file" not in out:
        out["max-file"] = "1"
    return out


def read_drops(log_path: str) -> tuple[int, int]:
    """(lines, bytes) of output the monitor dropped because the log could not be written."""
    try:
        with open(log_path + DROPS_SUFFIX, "rb") as f:
            fields = f.read(64).split()
        return (int(fields[0]), int(fields[1])) if len(fields) == 2 else (0, 0)
    except (OSError, ValueError):
        return 0, 0


def _parse_time(text: str) -> float:
    from nsbox.engine.images.config import parse_time
    try:
        return parse_time(text)
    except Exception:  # noqa: BLE001 - a malformed stamp only loses its --since filtering
        return 0.0


def parse_line(raw: str, driver: str) -> tuple[str, str, bytes] | None:
    """One stored line -> (time, stream, text) or None if it is not a log line."""
    if driver == "k8s-file":
        parts = raw.rstrip("\n").split(" ", 3)
        if len(parts) < 3:
            return None
        text = parts[3] if len(parts) > 3 else ""
        return parts[0], parts[1], (text + ("\n" if parts[2] == "F" else "")).encode()
    try:
        entry = _json.loads(raw)
    except ValueError:
        return None
    return entry.get("time", ""), entry.get("stream", "stdout"), entry.get("log", "").encode()


def _files(path: str) -> list[str]:
    rotated = [f"{path}.{n}" for n in range(MAX_FILES_SCAN, 0, -1) if os.path.exists(f"{path}.{n}")]
    return rotated + [path]


def read_logs(path: str, driver: str, follow: bool, tail: int | None, since: float | None,
              running: Callable[[], bool], poll: float = 0.1,
              wake_fd: int = -1, sleep: Callable[[float], object] | None = None
              ) -> Iterator[tuple[str, str, bytes]]:
    """Lines of the log (oldest first); with FOLLOW, keep going while RUNNING() says so.

    WAKE_FD, if given, is a pipe whose end-of-file means the writer is done:
    following stops waiting the moment it comes instead of at the next poll.
    SLEEP(POLL), if given, is how to wait between reads instead.
    """
    def wanted(entry: tuple[str, str, bytes] | None) -> bool:
        return entry is not None and (since is None or _parse_time(entry[0]) >= since)

    entries: deque | list = deque(maxlen=tail) if tail is not None and tail >= 0 else []
    position = 0
    inode = None
    for name in _files(path):
        try:
            with open(name, errors="replace") as f:
                for raw in f:
                    entry = parse_line(raw, driver)
                    if wanted(entry):
                        entries.append(entry)
                if name == path:
                    position = f.tell()
                    inode = os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            continue
    yield from entries
    if not follow:
        return
    pending = ""
    while True:
        alive = running()
        try:
            with open(path, errors="replace") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != inode or st.st_size < position:
                    position, inode = 0, st.st_ino  # rotated: start the new file
                f.seek(position)
                data = f.read()
                position = f.tell()
        except FileNotFoundError:
            data = ""
        if data:
            pending += data
            *lines, pending = pending.split("\n")
            for raw in lines:
                entry = parse_line(raw, driver)
                if wanted(entry):
                    yield entry
        elif not alive:
            return
        elif sleep is not None:
            sleep(poll)
        else:
            wake_fd = nap(wake_fd, poll)


def nap(wake_fd: int, seconds: float) -> int:
    """Sleep SECONDS, or less if WAKE_FD reaches end-of-file; the fd to nap on next time (-1 after EOF)."""
    if wake_fd < 0:
        time.sleep(seconds)
        return -1
    import select

    readable, _, _ = select.select([wake_fd], [], [], seconds)
    if readable:
        try:
            if os.read(wake_fd, 512):
                return wake_fd
        except OSError:
            pass
        return -1
    return wake_fd


def split_record(record: tuple) -> tuple[str, str, bytes]:
    """An engine log record as (stream, timestamp, data), whichever order it comes in."""
    first, second, data = record
    if first in ("stdout", "stderr"):
        return first, second, data
    return second, first, data
