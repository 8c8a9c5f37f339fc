"""The event journal: what happened to containers, images, volumes and networks.

There is no daemon to keep events in memory, so each command (or container
monitor) that causes an event appends it to a journal on disk, and
`nsbox events` reads the journal back and follows it.

API (stable; other parts of the engine call these):

    emit(root, type_, action, actor_id, attributes=None) -> None
        Append one event.  ROOT is the engine's storage root: the path
        (str / PathLike) or anything with a `.root` attribute (an Engine).
        TYPE_ is Docker's type: container, image, volume, network, plugin,
        daemon; here also `guard`.  ACTION is Docker's action: create,
        start, die, "health_status: healthy", "exec_create: sh -c ..." ...
        ATTRIBUTES are str -> str (name, image, exitCode, signal, labels...).
        Cheap (one open/flock/write/close, nothing imported) and never
        raises: a failed write is logged and the caller goes on.

    emit_container(root, container_or_row, action, **extra_attributes)
        A container event with Docker's attributes (labels, image, name).

    read(root, since=None, until=None, filters=None) -> Iterator[Event]
        The events already in the journal, oldest first, with
        since <= time <= until.

    follow(root, since=None, filters=None, until=None) -> Iterator[Event]
        The events since SINCE (none of the past when None), then every new
        one as it is appended; ends only after UNTIL (when given) or when the
        caller stops iterating.

    Event: Docker's JSON fields as attributes: Type, Action,
        Actor (Actor.ID, Actor.Attributes), scope ("local"), time (seconds),
        timeNano, and for container and image events the old `status`,
        `id` and (containers) `from`.  as_dict() is Docker's JSON object;
        text() is the line `docker events` prints.

    parse_time(text, now=None) -> float    (parse_time_ns: exact nanoseconds)
        --since/--until values: Unix seconds ("1700000000.5"), RFC 3339,
        or a duration ago ("10m", "1h30m", "90s").

    (parse_time, normalize_filters, matches: nsbox/engine/eventfilter.py, re-exported here.)
    FILTER_KEYS: container, event, image, type, label, network, volume.
    A filters argument is {key: [values]} (or {key: value}); values of one
    key are ORed, different keys ANDed, as Docker does.

The journal: <root>/events/journal, one JSON object per line, as Docker
prints it.  A writer opens it O_APPEND, takes an flock, reads the clock
(time.time_ns()), writes the line in one write() and closes: the order of
lines is the order of timeNano even when commands race, and a reader never
sees two records interleaved.  A reader may see the tail of a line still
being written: it only takes lines that end in a newline.  A writer that
crashed mid-line leaves a partial line; the next writer starts on a new line
and readers skip what does not parse.  When the file passes MAX_BYTES the
writer holding the lock renames journal -> journal.1 (-> .2 ... KEEP), and
the next writer creates a new one; a writer that opened the old file checks
after taking the lock that it is still the current one, and reopens if not.
Why a file and not a second SQLite database: emit() is on the path of every
`run --rm` (create, start, die, destroy), and a JSON-lines append costs a few
microseconds with no module to import, where opening a WAL database costs
an sqlite3 connection and a few page writes per event (docs/observability.md).

Follow mode watches <root>/events with inotify (IN_MODIFY, IN_CREATE,
IN_MOVED_TO) and reads only when the kernel says the journal changed; it
falls back to a poll with backoff (POLL_MIN_S .. POLL_MAX_S) if inotify is
not available.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox.engine.eventfilter import (  # noqa: F401 - part of this module's API
    FILTER_KEYS,
    matches,
    normalize_filters,
    parse_duration,
    parse_time,
    parse_time_ns,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

log = get_logger(__name__)

EVENTS_DIR = "events"
JOURNAL = "journal"
MAX_BYTES = 8 << 20  # rotate past this size
KEEP = 3  # rotated generations kept: journal.1 .. journal.KEEP
POLL_MIN_S = 0.05
POLL_MAX_S = 1.0
WAKE_S = 1.0  # inotify wait: also wakes this often to check --until and rotation
_LEGACY_TYPES = ("container", "image")  # carry Docker's old status/id(/from) fields


def _root_of(root: object) -> str:
    if isinstance(root, str):
        return root
    inner = getattr(root, "root", None)
    if isinstance(inner, str):
        return inner
    return os.fspath(root)  # type: ignore[arg-type]


def journal_dir(root: object) -> str:
    return os.path.join(_root_of(root), EVENTS_DIR)


def journal_path(root: object) -> str:
    return os.path.join(_root_of(root), EVENTS_DIR, JOURNAL)


# ================================================================ writing
def emit(root: object, type_: str, action: str, actor_id: str,
         attributes: Mapping[str, str] | None = None) -> None:
    """Append one event to ROOT's journal; never raises (see the module docstring)."""
    try:
        _append(journal_path(root), type_, action, actor_id, attributes)
    except Exception as exc:  # noqa: BLE001 - an event must never fail the command
        log.warning("event %s %s %s not recorded: %s", type_, action, actor_id[:12], exc)


def container_attributes(c: object, **extra: object) -> dict[str, str]:
    """Docker's attributes of a container event: its labels, image and name, then EXTRA.

    C is a Container (lifecycle/record.py) or a row of container_containers
    (a dict, whose spec column is JSON)."""
    try:
        if isinstance(c, dict):
            spec = _json.loads(c.get("spec") or "{}")
            labels = spec.get("labels") or {} if isinstance(spec, dict) else {}
            attrs = {str(k): str(v) for k, v in labels.items()}
            attrs["image"] = str(c.get("image", ""))
            attrs["name"] = str(c.get("name", ""))
        else:
            spec = getattr(c, "spec", None)
            attrs = {str(k): str(v) for k, v in (getattr(spec, "labels", None) or {}).items()}
            attrs["image"] = str(getattr(c, "image", ""))
            attrs["name"] = str(getattr(c, "name", ""))
    except (ValueError, AttributeError, TypeError):
        attrs = {}
    for key, value in extra.items():
        attrs[key] = str(value)
    return attrs


def emit_container(root: object, c: object, action: str, **extra: object) -> None:
    """emit() of a container event for C (a Container or a row), with container_attributes."""
    try:
        cid = c["id"] if isinstance(c, dict) else c.id  # type: ignore[attr-defined]
    except (KeyError, AttributeError):
        return
    emit(root, "container", action, str(cid), container_attributes(c, **extra))


def _open_journal(path: str) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC  # read: the last byte
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return os.open(path, flags, 0o600)


def _append(path: str, type_: str, action: str, actor_id: str,
            attributes: Mapping[str, str] | None) -> None:
    import fcntl  # a C module, ~0.1 ms; not on any import-time path

    for _ in range(8):
        fd = _open_journal(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = _still_current(fd, path)
            if st is None:
                continue  # rotated away while we waited for the lock
            now = time.time_ns()
            line = _json.dumps(_record(type_, action, actor_id, attributes, now)) + "\n"
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                line = "\n" + line  # a writer died mid-line: do not glue onto its fragment
            data = line.encode()
            os.write(fd, data)
            if st.st_size + len(data) > MAX_BYTES:
                _rotate(path)
            return
        finally:
            _unlock_and_close(fd)
    raise OSError(f"{path} keeps being rotated")


def _unlock_and_close(fd: int) -> None:
    """Release FD's flock explicitly, then close it.

    Closing alone releases an flock only when no other fd shares the open file
    description: a process forked (by another thread) while we held the lock
    inherits the fd, and the lock would live as long as that child, deadlocking
    every writer after it.  LOCK_UN acts on the description itself."""
    import fcntl  # already imported by the caller: a dict lookup

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _still_current(fd: int, path: str) -> os.stat_result | None:
    """FD's stat if FD is still the file at PATH (the current journal), else None."""
    st = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return None
    return st if (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev) else None


def _rotate(path: str) -> None:
    """Shift journal.N -> journal.N+1 (dropping the oldest) and journal -> journal.1.

    Called with the current journal's flock held, so only one writer rotates."""
    for n in range(KEEP - 1, 0, -1):
        try:
            os.rename(f"{path}.{n}", f"{path}.{n + 1}")
        except FileNotFoundError:
            pass
    os.rename(path, f"{path}.1")


def _record(type_: str, action: str, actor_id: str, attributes: Mapping[str, str] | None,
            now: int) -> dict:
    attrs = {str(k): str(v) for k, v in (attributes or {}).items()}
    rec: dict = {}
    if type_ in _LEGACY_TYPES:
        rec["status"] = action
        rec["id"] = actor_id
        if type_ == "container" and "image" in attrs:
            rec["from"] = attrs["image"]
    rec["Type"] = type_
    rec["Action"] = action
    rec["Actor"] = {"ID": actor_id, "Attributes": attrs}
    rec["scope"] = "local"
    rec["time"] = now // 1_000_000_000
    rec["timeNano"] = now
    return rec


# ================================================================ the record
class Actor:
    __slots__ = ("ID", "Attributes")

    def __init__(self, ID: str, Attributes: dict[str, str]) -> None:  # noqa: N803 - Docker's names
        self.ID = ID
        self.Attributes = Attributes

    def __repr__(self) -> str:
        return f"Actor(ID={self.ID!r}, Attributes={self.Attributes!r})"


class Event:
    """One event, with Docker's JSON field names as attributes."""

    __slots__ = ("Type", "Action", "Actor", "scope", "time", "timeNano", "status", "id", "from_")

    def __init__(self, Type: str, Action: str, Actor: Actor, timeNano: int,  # noqa: N803
                 scope: str = "local") -> None:
        self.Type = Type
        self.Action = Action
        self.Actor = Actor
        self.scope = scope
        self.timeNano = timeNano
        self.time = timeNano // 1_000_000_000
        legacy = Type in _LEGACY_TYPES
        self.status = Action if legacy else None
        self.id = Actor.ID if legacy else None
        self.from_ = Actor.Attributes.get("image") if Type == "container" else None

    @classmethod
    def from_dict(cls, doc: dict) -> Event:
        actor = doc.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        return cls(str(doc["Type"]), str(doc["Action"]),
                   Actor(str(actor.get("ID", "")), {str(k): str(v) for k, v in attrs.items()}),
                   int(doc["timeNano"]), str(doc.get("scope", "local")))

    def as_dict(self) -> dict:
        """Docker's JSON object for this event (what `--format json` prints)."""
        rec = _record(self.Type, self.Action, self.Actor.ID, self.Actor.Attributes, self.timeNano)
        rec["scope"] = self.scope
        return rec

    def text(self) -> str:
        """`2026-12-04T20:00:00.000000000Z container start ID (image=..., name=...)`."""
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(self.Actor.Attributes.items()))
        line = f"{format_time_nano(self.timeNano)} {self.Type} {self.Action} {self.Actor.ID}"
        return f"{line} ({attrs})" if attrs else line

    def __repr__(self) -> str:
        return (f"Event({self.Type} {self.Action} {self.Actor.ID[:12]} "
                f"{self.Actor.Attributes!r} @{self.timeNano})")


def format_time_nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


# ================================================================ reading
def _parse_lines(data: bytes) -> Iterator[Event]:
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            doc = _json.loads(raw)
            if isinstance(doc, dict):
                yield Event.from_dict(doc)
        except (ValueError, KeyError, TypeError):
            continue  # a writer's crash left a fragment


def _open_generations(path: str) -> list[int]:
    """Read fds of journal, journal.1 .. journal.KEEP, newest first, each inode once.

    Opened under a shared flock of the current journal: a writer rotates only
    while it holds that file's exclusive lock, so no rotation can shift the
    names while we open them. Without the lock a reader descheduled for a few
    rotations could meet a newer file at a name past the ones it had opened,
    and take it for an older one (events out of order)."""
    import fcntl  # a C module; readers only

    for _ in range(8):
        try:
            lock_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return _open_names(path)  # no current journal: nobody is rotating
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            if _still_current(lock_fd, path) is None:
                continue  # rotated while we waited for the lock
            return _open_names(path)
        finally:
            _unlock_and_close(lock_fd)
    return _open_names(path)


def _open_names(path: str) -> list[int]:
    fds: list[int] = []
    seen: set[tuple[int, int]] = set()
    for name in [path] + [f"{path}.{n}" for n in range(1, KEEP + 1)]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen:
            os.close(fd)
            continue
        seen.add((st.st_dev, st.st_ino))
        fds.append(fd)
    return fds


def _read_complete(fd: int, pending: bytearray) -> bytes:
    """Everything new in FD up to its last newline; the rest waits in PENDING."""
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        pending += chunk
    cut = pending.rfind(b"\n") + 1
    done = bytes(pending[:cut])
    del pending[:cut]
    return done


def _in_range(event: Event, since_ns: int | None, until_ns: int | None) -> bool:
    return (since_ns is None or event.timeNano >= since_ns) and \
        (until_ns is None or event.timeNano <= until_ns)


def to_ns(value: str | float | int | None) -> int | None:
    """A since/until argument in nanoseconds (None stays None; an int above 10**15 already is)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and value > 10**15:  # already nanoseconds
        return value
    return parse_time_ns(value)


def read(root: object, since: str | float | None = None, until: str | float | None = None,
         filters: Mapping[str, object] | Iterable[str] | None = None) -> Iterator[Event]:
    """The events in ROOT's journal with since <= time <= until, oldest first."""
    since_ns, until_ns = to_ns(since), to_ns(until)
    wanted = normalize_filters(filters)
    fds = _open_generations(journal_path(root))
    try:
        for fd in reversed(fds):
            for event in _parse_lines(_read_complete(fd, bytearray())):
                if _in_range(event, since_ns, until_ns) and matches(event, wanted):
                    yield event
    finally:
        for fd in fds:
            os.close(fd)


def follow(root: object, since: str | float | None = None,
           filters: Mapping[str, object] | Iterable[str] | None = None,
           until: str | float | None = None) -> Iterator[Event]:
    """The events since SINCE (no past ones when None), then each new one as it comes.

    Ends once UNTIL has passed (never when None).  The watch is set before
    the journal is read, so nothing appended in between is missed."""
    since_ns, until_ns = to_ns(since), to_ns(until)
    wanted = normalize_filters(filters)
    path = journal_path(root)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    watch = _Watch(os.path.dirname(path))
    fds: list[int] = []  # newest first; fds[0] is the file being followed
    try:
        fds = _open_generations(path)
        while len(fds) > 1:  # the rotated ones, oldest first
            old = fds.pop()
            if since_ns is not None:
                yield from _select(_read_complete(old, bytearray()), since_ns, until_ns, wanted)
            os.close(old)
        pending = bytearray()
        if fds and since_ns is None:
            os.lseek(fds[0], 0, os.SEEK_END)  # only what comes from now on
        while True:
            if fds:
                data = _read_complete(fds[0], pending)
                if data:
                    watch.delay = POLL_MIN_S
                    yield from _select(data, since_ns, until_ns, wanted)
            if until_ns is not None and time.time_ns() > until_ns:
                return
            if _rotated(path, fds[0] if fds else -1):
                # Finish the file we had (once renamed, nobody appends to it), then
                # every file rotated after it, oldest first, then follow the new one.
                if fds:
                    yield from _select(_read_complete(fds[0], pending), since_ns, until_ns, wanted)
                    done = fds.pop()
                    st = os.fstat(done)
                    os.close(done)
                    seen: tuple[int, int] | None = (st.st_dev, st.st_ino)
                else:
                    seen = None
                fds = _newer_generations(path, seen)
                while len(fds) > 1:
                    newer = fds.pop()
                    yield from _select(_read_complete(newer, bytearray()), since_ns, until_ns,
                                       wanted)
                    os.close(newer)
                pending = bytearray()
                continue
            watch.wait(until_ns)
    finally:
        for fd in fds:
            os.close(fd)
        watch.close()


def _rotated(path: str, fd: int) -> bool:
    """Whether PATH is now another file than the one FD reads (or exists where FD is -1)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    if fd < 0:
        return True
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) != (current.st_dev, current.st_ino)


def _newer_generations(path: str, seen: tuple[int, int] | None) -> list[int]:
    """Read fds of the journal files newer than the one whose (dev, inode) is SEEN, newest first.

    All of them when SEEN is None or is no longer among them (rotated away)."""
    fds = _open_generations(path)
    if seen is None:
        return fds
    for i, fd in enumerate(fds):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == seen:
            for old in fds[i:]:
                os.close(old)
            return fds[:i]
    return fds


def _select(data: bytes, since_ns: int | None, until_ns: int | None,
            wanted: dict[str, list[str]]) -> Iterator[Event]:
    for event in _parse_lines(data):
        if _in_range(event, since_ns, until_ns) and matches(event, wanted):
            yield event


class _Watch:
    """Waits until something in the journal directory changes: inotify, else a backing-off poll."""

    def __init__(self, directory: str) -> None:
        self.fd = -1
        self.delay = POLL_MIN_S
        try:
            from nsbox.runtime import syscalls
            self.fd = syscalls.inotify_init1(syscalls.IN_CLOEXEC | syscalls.IN_NONBLOCK)
            syscalls.inotify_add_watch(self.fd, directory, syscalls.IN_MODIFY | syscalls.IN_CREATE
                                       | syscalls.IN_MOVED_TO | syscalls.IN_CLOSE_WRITE)
        except (OSError, AttributeError) as exc:
            log.debug("inotify unavailable (%s): polling the journal", exc)
            self.close()

    def wait(self, until_ns: int | None) -> None:
        timeout = WAKE_S
        if until_ns is not None:
            timeout = max(0.0, min(timeout, (until_ns - time.time_ns()) / 1e9 + 0.01))
        if self.fd < 0:
            time.sleep(min(self.delay, timeout))
            self.delay = min(self.delay * 2, POLL_MAX_S)
            return
        import select
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
