"""The engine's metadata: one SQLite database, <root>/nsbox.db, in WAL mode.

Every nsbox command is its own process and there is no daemon, so many
processes may write at once.  Each thread keeps one connection (with a busy
timeout) for the life of its process; SQLite serialises the writers, WAL lets
readers go on, and
`database is locked` (which a busy timeout does not always absorb, e.g. when
a read transaction is upgraded) is retried here.  Container names are a
UNIQUE column, so two racing `run --name x` cannot both win.

Tables are prefixed `container_` and `volume_`; the image store may keep its
own `image_` tables in the same file.

A full filesystem: <root>/nsbox.db-reserve is a preallocated file
(RESERVE_SIZE, env NSBOX_DB_RESERVE; 0 turns it off).  When SQLite answers
SQLITE_FULL (or SQLITE_IOERR with the filesystem full: its -shm or -wal
cannot grow), the reserve is cut by RESERVE_CHUNK, which gives SQLite room,
and the operation is retried, so removing a container, recording an exit
and reading the records still work on a full disk; a chunk at a time, so a
container still writing cannot take all of it at once.  A later
Database() makes the reserve whole again once the filesystem has room for
it twice over.  Nothing is checked on the way in: one stat() per
Database().  Past the reserve, DatabaseFull: the commands that free space
go on without the write they could not make (docs/engine.md, "A full
disk").
"""

from __future__ import annotations

import os
import time
from _weakref import ref as _weakref  # the weakref package costs ~1 ms to import

from nsbox import _json
from nsbox.errors import NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

DB_FILE = "nsbox.db"
BUSY_TIMEOUT_S = 30.0
_RETRIES = 50
RESERVE_SUFFIX = "-reserve"  # <root>/nsbox.db-reserve
RESERVE_SIZE = 1 << 20
RESERVE_CHUNK = 256 << 10  # given back per full disk
RESERVE_ENV = "NSBOX_DB_RESERVE"
_SQLITE_IOERR, _SQLITE_FULL = 10, 13  # primary result codes
_FULL_RETRIES = 4  # tries after a full disk, each with a chunk of the reserve


class DatabaseFull(NsboxError):
    """SQLite could not write: the filesystem of the root is full, and the reserve used up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS container_containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL DEFAULT 0,
    monitor_pid INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    restart_count INTEGER NOT NULL DEFAULT 0,
    stopped_by_user INTEGER NOT NULL DEFAULT 0,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    bundle TEXT NOT NULL,
    runtime TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    owner_pid INTEGER NOT NULL DEFAULT 0,
    reader_pid INTEGER NOT NULL DEFAULT 0,
    cgroup_parent TEXT NOT NULL DEFAULT '',
    exit_unknown INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS volume_volumes (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    mountpoint TEXT NOT NULL,
    driver TEXT NOT NULL DEFAULT 'local',
    labels TEXT NOT NULL DEFAULT '{}',
    anonymous INTEGER NOT NULL DEFAULT 0
);
"""

CONTAINER_COLUMNS = ("id", "name", "image", "image_id", "created", "state", "exit_code", "pid",
                     "monitor_pid", "started_at", "finished_at", "restart_count",
                     "stopped_by_user", "oom_killed", "error", "spec", "bundle", "runtime", "extra",
                     "owner_pid", "reader_pid", "cgroup_parent", "exit_unknown")

# Columns added after the first release, with their definitions: a database
# made before them gets them on first open (see Database._init_schema).
# owner_pid: the process creating or starting the container (its state is
# `creating`/`starting` meanwhile); reader_pid: an attached `run` that reads
# the output to the end and then removes a --rm container itself;
# cgroup_parent: the starter's /proc/self/cgroup, recorded before the
# runtime makes the container's cgroups below it; exit_unknown: nobody saw
# the exit (the monitor was gone), `error` says why.  docs/engine.md,
# "Crash safety".
_ADDED_CONTAINER_COLUMNS = (("owner_pid", "INTEGER NOT NULL DEFAULT 0"),
                            ("reader_pid", "INTEGER NOT NULL DEFAULT 0"),
                            ("cgroup_parent", "TEXT NOT NULL DEFAULT ''"),
                            ("exit_unknown", "INTEGER NOT NULL DEFAULT 0"))
_SCHEMA_VERSION = 1  # PRAGMA user_version once the columns above are in


_INHERITED: list = []  # connections a forked child inherited; kept open, never used
_OPEN: list = []  # weak references to every connection this process opened
_GENERATION = [0]  # bumped by close_all_connections: kept connections of older ones are closed
_connection_class = None


def sqlite():  # noqa: ANN201 - the module
    """The SQLite binding's C module, all the engine uses of it.

    The `sqlite3` package around it adds only datetime adapters, and
    importing it (datetime included) costs ~2.5 ms on every command.
    """
    try:
        import _sqlite3 as module
    except ImportError:  # an interpreter that builds it differently
        import sqlite3 as module
    return module


def _connection_factory():  # noqa: ANN202 - a sqlite3.Connection subclass
    global _connection_class
    if _connection_class is None:
        sqlite3 = sqlite()

        class TrackedConnection(sqlite3.Connection):
            """sqlite3.Connection, but weakly referenceable (so _OPEN can track it)."""

        _connection_class = TrackedConnection
    return _connection_class


def close_all_connections() -> None:
    """Close every SQLite connection of this process, in every thread: before os.fork().

    SQLite keeps per-process state about each open database file (its fds,
    its shared-memory index, and fds whose close it defers while another
    connection has the file open); a child forked with any connection open
    would share it and corrupt its own use of the file.  Call this only
    while the process has a single thread.
    """
    _GENERATION[0] += 1
    refs = list(_OPEN)
    del _OPEN[:len(refs)]
    for conn in (r() for r in refs):
        if conn is None:
            continue
        try:
            conn.close()
        except Exception:  # noqa: BLE001, S110 - closing is all we want; a closed one is fine
            pass


class Database:
    """Connections to <root>/nsbox.db, one kept per thread; safe to share between threads."""

    def __init__(self, root: str) -> None:
        import _thread
        self.path = os.path.join(root, DB_FILE)
        self.reserve_path = self.path + RESERVE_SUFFIX
        self._local = _thread._local()
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._retry(self._init_schema)
        keep_reserve(self.reserve_path)

    def _connect(self):  # noqa: ANN202 - sqlite3.Connection, imported lazily
        sqlite3 = sqlite()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False, factory=_connection_factory())
        _OPEN.append(_weakref(conn))  # one per connection kept (per thread): few
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # WAL with NORMAL: a commit is atomic and survives a crash of the
        # process; only a power loss may drop the newest commits.  FULL syncs
        # the WAL at every commit (several ms each on a virtual disk).
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _acquire(self):  # noqa: ANN202 - (sqlite3.Connection, owned: bool)
        """This thread's kept connection, or a new one to close after use.

        Keeping one connection per thread spares an open per operation and,
        above all, the WAL checkpoint SQLite runs when the last connection
        of a process closes.  A forked child never uses (or closes) its
        parent's connection: it opens its own.
        """
        local = self._local
        if getattr(local, "pid", 0) == os.getpid() and local.conn is not None \
                and local.generation == _GENERATION[0]:
            if local.busy:
                return self._connect(), True  # nested use: a separate connection
            local.busy = True
            return local.conn, False
        inherited = getattr(local, "conn", None)
        if inherited is not None and getattr(local, "pid", 0) != os.getpid():
            _INHERITED.append(inherited)  # the parent's: never closed here
        local.conn, local.pid, local.busy = self._connect(), os.getpid(), True
        local.generation = _GENERATION[0]
        return local.conn, False

    def _release(self, conn, owned: bool) -> None:  # noqa: ANN001
        if owned:
            conn.close()
        else:
            self._local.busy = False

    def _init_schema(self) -> None:
        with self.connection() as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                self._add_columns(conn)

    @staticmethod
    def _add_columns(conn) -> None:  # noqa: ANN001
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in conn.execute("PRAGMA table_info(container_containers)")}
            for name, definition in _ADDED_CONTAINER_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE container_containers ADD COLUMN {name} {definition}")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def connection(self) -> _Connection:
        """`with db.connection() as conn:` a connection, closed at the end."""
        return _Connection(self, transaction=False)

    def transaction(self) -> _Connection:
        """A write transaction taken up front (BEGIN IMMEDIATE), so it cannot deadlock on upgrade.

        Committed at the end of the `with` block, rolled back if it raises.
        """
        return _Connection(self, transaction=True)

    def _retry(self, func: Callable[[], T]) -> T:
        sqlite3 = sqlite()
        full = 0
        for attempt in range(_RETRIES):
            try:
                return func()
            except sqlite3.OperationalError as err:
                code = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF
                if code in (_SQLITE_FULL, _SQLITE_IOERR):
                    # The filesystem may be full: make room (the reserve) and try again.
                    self._discard_connection()
                    full += 1
                    released = release_reserve(self.reserve_path, code == _SQLITE_FULL)
                    if released and full <= _FULL_RETRIES:
                        continue
                    if code == _SQLITE_FULL or _filesystem_full(self.path):
                        if full <= 2:
                            time.sleep(0.05)  # another process's removal may free space
                            continue
                        raise DatabaseFull(f"{self.path}: {err} (the filesystem is full: remove "
                                           "containers, volumes or images to free space)") from None
                    if full <= 1:
                        continue  # once more, on a new connection
                if "locked" not in str(err) and "busy" not in str(err):
                    raise NsboxError(f"{self.path}: {err}") from None
                if attempt == _RETRIES - 1:
                    raise NsboxError(f"{self.path}: {err} (gave up after {_RETRIES} tries)") from None
                import random
                time.sleep(0.01 + random.random() * 0.05)
        raise AssertionError("unreachable")

    def _discard_connection(self) -> None:
        """Close this thread's kept connection (after a failed write it may hold a transaction)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or getattr(local, "pid", 0) != os.getpid() or local.busy:
            return
        local.conn = None
        try:
            conn.close()
        except Exception:  # noqa: BLE001, S110 - it is dropped either way
            pass

    # ------------------------------------------------------------- containers
    def insert_container(self, row: dict) -> None:
        """Insert a container row; sqlite3.IntegrityError if its id or name is taken."""
        columns = [c for c in CONTAINER_COLUMNS if c in row]
        sql = (f"INSERT INTO container_containers ({','.join(columns)}) "
               f"VALUES ({','.join('?' for _ in columns)})")

        def insert() -> None:
            with self.transaction() as conn:
                conn.execute(sql, [_encode(row[c]) for c in columns])
        self._retry(insert)

    def update_container(self, container_id: str, **fields: Any) -> bool:
        """Set FIELDS of one container; False if it no longer exists."""
        if not fields:
            return True
        sql = (f"UPDATE container_containers SET {','.join(f'{k}=?' for k in fields)} WHERE id=?")

        def update() -> bool:
            with self.transaction() as conn:
                cur = conn.execute(sql, [_encode(v) for v in fields.values()] + [container_id])
                return cur.rowcount > 0
        return self._retry(update)

    def update_container_if(self, container_id: str, states: tuple[str, ...], **fields: Any) -> bool:
        """Set FIELDS of one container if its state is one of STATES; True if it was."""
        marks = ",".join("?" for _ in states)
        sql = (f"UPDATE container_containers SET {','.join(f'{k}=?' for k in fields)} "
               f"WHERE id=? AND state IN ({marks})")

        def update() -> bool:
            with self.transaction() as conn:
                cur = conn.execute(sql, [_encode(v) for v in fields.values()] + [container_id,
                                                                                 *states])
                return cur.rowcount > 0
        return self._retry(update)

    def increment_restart(self, container_id: str) -> int:
        def bump() -> int:
            with self.transaction() as conn:
                conn.execute("UPDATE container_containers SET restart_count=restart_count+1 "
                             "WHERE id=?", (container_id,))
                row = conn.execute("SELECT restart_count FROM container_containers WHERE id=?",
                                   (container_id,)).fetchone()
                return int(row[0]) if row else 0
        return self._retry(bump)

    def delete_container(self, container_id: str) -> bool:
        """Delete one container's row; True if this call deleted it (False: gone already)."""
        def delete() -> bool:
            with self.transaction() as conn:
                cur = conn.execute("DELETE FROM container_containers WHERE id=?", (container_id,))
                return cur.rowcount > 0
        return self._retry(delete)

    def container(self, container_id: str) -> dict | None:
        def get() -> dict | None:
            with self.connection() as conn:
                row = conn.execute("SELECT * FROM container_containers WHERE id=?",
                                   (container_id,)).fetchone()
                return dict(row) if row else None
        return self._retry(get)

    def containers(self) -> list[dict]:
        def get() -> list[dict]:
            with self.connection() as conn:
                rows = conn.execute("SELECT * FROM container_containers ORDER BY created DESC")
                return [dict(r) for r in rows]
        return self._retry(get)

    def container_ids(self) -> set[str]:
        def get() -> set[str]:
            with self.connection() as conn:
                return {r[0] for r in conn.execute("SELECT id FROM container_containers")}
        return self._retry(get)

    def find_containers(self, ref: str) -> list[dict]:
        """Rows whose name is REF, or else whose id starts with REF."""
        def get() -> list[dict]:
            with self.connection() as conn:
                rows = conn.execute("SELECT * FROM container_containers WHERE name=?",
                                    (ref,)).fetchall()
                if not rows and ref and all(c in "0123456789abcdef" for c in ref):
                    rows = conn.execute("SELECT * FROM container_containers WHERE id LIKE ?",
                                        (ref + "%",)).fetchall()
                return [dict(r) for r in rows]
        return self._retry(get)

    # ---------------------------------------------------------------- volumes
    def insert_volume(self, row: dict) -> None:
        def insert() -> None:
            with self.transaction() as conn:
                conn.execute("INSERT INTO volume_volumes (name, created, mountpoint, driver, labels,"
                             " anonymous) VALUES (?,?,?,?,?,?)",
                             (row["name"], row["created"], row["mountpoint"],
                              row.get("driver", "local"), _json.dumps(row.get("labels") or {}),
                              int(row.get("anonymous", 0))))
        self._retry(insert)

    def volume(self, name: str) -> dict | None:
        def get() -> dict | None:
            with self.connection() as conn:
                row = conn.execute("SELECT * FROM volume_volumes WHERE name=?", (name,)).fetchone()
                return _volume_row(row)
        return self._retry(get)

    def volumes(self) -> list[dict]:
        def get() -> list[dict]:
            with self.connection() as conn:
                return [_volume_row(r) for r in
                        conn.execute("SELECT * FROM volume_volumes ORDER BY name")]
        return self._retry(get)

    def delete_volume(self, name: str) -> None:
        def delete() -> None:
            with self.transaction() as conn:
                conn.execute("DELETE FROM volume_volumes WHERE name=?", (name,))
        self._retry(delete)


class _Connection:
    """The context manager of Database.connection() and .transaction() (contextlib is slow to import)."""

    __slots__ = ("_db", "_transaction", "_conn")

    def __init__(self, db: Database, transaction: bool) -> None:
        self._db = db
        self._transaction = transaction
        self._conn = None

    def __enter__(self):  # noqa: ANN204 - sqlite3.Connection, imported lazily
        conn, owned = self._db._acquire()
        if self._transaction:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._db._release(conn, owned)
                raise
        self._conn = (conn, owned)
        return conn

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        (conn, owned), self._conn = self._conn, None
        try:
            if self._transaction and exc_type is None:
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)  # a failed COMMIT (a full disk) leaves it open
                    raise
            elif exc_type is not None:
                _rollback(conn)  # never hide the error with one of the rollback's
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self._db._release(conn, owned)
        return False


def _rollback(conn) -> None:  # noqa: ANN001
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001, S110 - Database._retry drops the connection if need be
        pass


def reserve_size() -> int:
    """The reserve's size: NSBOX_DB_RESERVE (bytes, or with a k/m suffix), else RESERVE_SIZE."""
    text = os.environ.get(RESERVE_ENV, "").strip().lower().rstrip("b")
    if not text:
        return RESERVE_SIZE
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1], 1)
    try:
        return max(0, int(float(text[:-1] if scale > 1 else text) * scale))
    except ValueError:
        return RESERVE_SIZE


def keep_reserve(path: str) -> None:
    """Make PATH the reserve's size again if it is short and the filesystem has room twice over."""
    size = reserve_size()
    if size <= 0:
        return
    try:
        if os.stat(path).st_size >= size:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        st = os.statvfs(os.path.dirname(path))
        if st.f_bavail * st.f_frsize < 2 * size:
            return  # not now: a full disk would only be fuller
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: no fallocate here
                raise
            os.lseek(fd, 0, 0)
            zeros = bytes(65536)
            for _ in range(0, size, len(zeros)):
                os.write(fd, zeros)
            os.ftruncate(fd, size)
    except OSError:
        try:
            os.ftruncate(fd, 0)  # ENOSPC meanwhile: hold nothing half-way
        except OSError:
            pass
    finally:
        os.close(fd)


def check_room(root: str) -> None:
    """DatabaseFull if ROOT's filesystem has less than twice the reserve free: nothing new then.

    Making a container there would take the room the reserve keeps for
    removing one (create calls this; one statvfs).
    """
    size = reserve_size()
    if size <= 0:
        return
    try:
        st = os.statvfs(root)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < 2 * size:
        raise DatabaseFull(f"no space left in {root} ({free >> 10} KiB free, "
                           f"{(2 * size) >> 10} KiB needed): remove containers, volumes or images "
                           "to free space")


def with_room(root: str, func: Callable[[], T]) -> T:
    """FUNC(), again with a chunk of ROOT's reserve given back each time it fails with ENOSPC.

    For what frees space without the database but must write a little
    first (rmi rewrites the image index); FUNC must be safe to run again.
    """
    reserve = os.path.join(root, DB_FILE + RESERVE_SUFFIX)
    for attempt in range(_FULL_RETRIES + 1):
        try:
            return func()
        except OSError as err:
            if err.errno != 28 or attempt == _FULL_RETRIES or not release_reserve(reserve, True):
                raise  # not ENOSPC, or no reserve left
    raise AssertionError("unreachable")


def _filesystem_full(path: str) -> bool:
    """Has PATH's filesystem less than RESERVE_CHUNK free?"""
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < RESERVE_CHUNK


def release_reserve(path: str, full: bool) -> bool:
    """Give a chunk of the reserve back to the filesystem; True if there was any.

    FULL: SQLite said the disk is full; else (an I/O error) only if the
    filesystem is (nearly) full.
    """
    try:
        if not full and not _filesystem_full(path):
            return False
        size = os.stat(path).st_size
        if size == 0:
            return False
        os.truncate(path, max(0, size - RESERVE_CHUNK))
    except OSError:
        return False
    return True


def _encode(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return _json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _volume_row(row: Any) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    out["labels"] = _json.loads(out.get("labels") or "{}")
    out["anonymous"] = bool(out.get("anonymous"))
    return out
