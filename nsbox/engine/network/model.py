"""Networks and attachments: the records, and their tables in the engine's database.

Two tables in <root>/nsbox.db (the engine's Database, nsbox/engine/db.py):

- `networks`: one row per network (the default `bridge` too, made on first use);
- `attachments`: one row per (container, network): its interface, address,
  MAC and aliases.  These rows ARE the address leases: UNIQUE(network_id, ip)
  makes handing out one address twice impossible, and ipam.py allocates in
  one BEGIN IMMEDIATE transaction.

The tables are created on first use by this module (CREATE TABLE IF NOT
EXISTS), so an engine that never networks never touches them.
"""

from __future__ import annotations

from nsbox import _json
from nsbox._record import record
from nsbox.errors import NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.db import Database

DEFAULT_NETWORK = "bridge"          # Docker's name for the default network
DEFAULT_BRIDGE = "nsbox0"
DEFAULT_SUBNET = "172.30.0.0/16"    # off Podman's 10.88 and Docker's 172.17
DEFAULT_GATEWAY = "172.30.0.1"
DEFAULT_MTU = 1500
# The default network's id is fixed: the same on every host, as the name is.
DEFAULT_ID = "b" * 8 + "a7e0" * 14

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL DEFAULT 'bridge',
    bridge TEXT NOT NULL UNIQUE,
    subnet TEXT NOT NULL,
    gateway TEXT NOT NULL,
    ip_range TEXT NOT NULL DEFAULT '',
    internal INTEGER NOT NULL DEFAULT 0,
    ipv6 INTEGER NOT NULL DEFAULT 0,
    subnet6 TEXT NOT NULL DEFAULT '',
    gateway6 TEXT NOT NULL DEFAULT '',
    mtu INTEGER NOT NULL DEFAULT 1500,
    labels TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    ip TEXT NOT NULL,
    prefix INTEGER NOT NULL,
    mac TEXT NOT NULL,
    gateway TEXT NOT NULL,
    aliases TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    ip6 TEXT NOT NULL DEFAULT '',
    prefix6 INTEGER NOT NULL DEFAULT 0,
    gateway6 TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (container_id, network_id),
    UNIQUE (network_id, ip)
);
"""
# Columns added after the first release of the tables (IPv6): (table, column, declaration),
# added by ensure_schema to a database made before them.
_ADDED_COLUMNS = (
    ("networks", "subnet6", "TEXT NOT NULL DEFAULT ''"),
    ("networks", "gateway6", "TEXT NOT NULL DEFAULT ''"),
    ("attachments", "ip6", "TEXT NOT NULL DEFAULT ''"),
    ("attachments", "prefix6", "INTEGER NOT NULL DEFAULT 0"),
    ("attachments", "gateway6", "TEXT NOT NULL DEFAULT ''"),
)
# An IPv6 address is leased once per network too (the empty one of IPv4-only leases aside).
_INDEXES = ("CREATE UNIQUE INDEX IF NOT EXISTS attachments_ip6 ON attachments "
            "(network_id, ip6) WHERE ip6 != ''")


class NetworkNotFound(NsboxError):
    """No network with that name or id."""


class NetworkError(NsboxError):
    """A network request that cannot be done (overlap, in use, bad address)."""


@record
class Network:
    id: str
    name: str
    driver: str = "bridge"
    bridge: str = ""
    subnet: str = ""            # "172.31.0.0/16"
    gateway: str = ""           # "172.31.0.1"
    ip_range: str = ""          # "" = the whole subnet
    internal: bool = False
    ipv6: bool = False
    subnet6: str = ""           # "fd00:77::/64" with ipv6
    gateway6: str = ""          # "fd00:77::1"
    mtu: int = DEFAULT_MTU
    labels: dict = dict
    options: dict = dict
    created: float = 0.0

    @property
    def prefix(self) -> int:
        return int(self.subnet.partition("/")[2])

    @property
    def prefix6(self) -> int:
        return int(self.subnet6.partition("/")[2] or 0)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_NETWORK


@record
class Attachment:
    container_id: str
    network_id: str
    ifname: str                 # eth0, eth1, ... inside the container
    ip: str
    prefix: int
    mac: str
    gateway: str
    aliases: list = list
    created: float = 0.0
    ip6: str = ""               # "" on an IPv4-only network
    prefix6: int = 0
    gateway6: str = ""


_SCHEMA_DONE: set[str] = set()


def ensure_schema(db: Database) -> None:
    """Create the two tables in DB (once per process and database)."""
    if db.path in _SCHEMA_DONE:
        return

    def make() -> None:
        with db.connection() as conn:
            conn.executescript(_SCHEMA)
            for table, column, declaration in _ADDED_COLUMNS:
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    try:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                    except Exception as err:  # noqa: BLE001 - sqlite3 is imported lazily
                        if "duplicate column" not in str(err):  # another command was first
                            raise
            conn.execute(_INDEXES)
    db._retry(make)
    _SCHEMA_DONE.add(db.path)


def network_from_row(row: dict) -> Network:
    return Network(id=row["id"], name=row["name"], driver=row["driver"], bridge=row["bridge"],
                   subnet=row["subnet"], gateway=row["gateway"], ip_range=row["ip_range"],
                   internal=bool(row["internal"]), ipv6=bool(row["ipv6"]),
                   subnet6=row.get("subnet6") or "", gateway6=row.get("gateway6") or "",
                   mtu=row["mtu"],
                   labels=_json.loads(row["labels"] or "{}"),
                   options=_json.loads(row["options"] or "{}"), created=row["created"])


def attachment_from_row(row: dict) -> Attachment:
    return Attachment(container_id=row["container_id"], network_id=row["network_id"],
                      ifname=row["ifname"], ip=row["ip"], prefix=row["prefix"], mac=row["mac"],
                      gateway=row["gateway"], aliases=_json.loads(row["aliases"] or "[]"),
                      created=row["created"], ip6=row.get("ip6") or "",
                      prefix6=row.get("prefix6") or 0, gateway6=row.get("gateway6") or "")


def _query(db: Database, sql: str, args: tuple = ()) -> list[dict]:
    ensure_schema(db)

    def get() -> list[dict]:
        with db.connection() as conn:
            return [dict(r) for r in conn.execute(sql, args)]
    return db._retry(get)


def _write(db: Database, sql: str, args: tuple = ()) -> int:
    ensure_schema(db)

    def put() -> int:
        with db.transaction() as conn:
            return conn.execute(sql, args).rowcount
    return db._retry(put)


def networks(db: Database) -> list[Network]:
    return [network_from_row(r) for r in _query(db, "SELECT * FROM networks ORDER BY created")]


def find_network(db: Database, ref: str) -> Network:
    """The network named REF, else with id REF or unique id prefix REF; NetworkNotFound else."""
    rows = _query(db, "SELECT * FROM networks WHERE name=? OR id=?", (ref, ref))
    if not rows and ref and all(c in "0123456789abcdef" for c in ref):
        rows = _query(db, "SELECT * FROM networks WHERE id LIKE ?", (ref + "%",))
    if len(rows) != 1:
        if rows:
            raise NetworkNotFound(f"network id prefix {ref!r} is ambiguous ({len(rows)} matches)")
        raise NetworkNotFound(f"network {ref} not found")
    return network_from_row(rows[0])


def insert_network(db: Database, net: Network) -> None:
    """Record NET; the database's IntegrityError if its name, id or bridge is taken."""
    _write(db, "INSERT INTO networks (id, name, driver, bridge, subnet, gateway, ip_range, "
               "internal, ipv6, subnet6, gateway6, mtu, labels, options, created) "
               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
           (net.id, net.name, net.driver, net.bridge, net.subnet, net.gateway, net.ip_range,
            int(net.internal), int(net.ipv6), net.subnet6, net.gateway6, net.mtu,
            _json.dumps(net.labels), _json.dumps(net.options), net.created))


def delete_network(db: Database, network_id: str) -> None:
    _write(db, "DELETE FROM networks WHERE id=?", (network_id,))


def attachments(db: Database, container_id: str | None = None,
                network_id: str | None = None) -> list[Attachment]:
    sql, args = "SELECT * FROM attachments", ()
    if container_id is not None and network_id is not None:
        sql, args = sql + " WHERE container_id=? AND network_id=?", (container_id, network_id)
    elif container_id is not None:
        sql, args = sql + " WHERE container_id=?", (container_id,)
    elif network_id is not None:
        sql, args = sql + " WHERE network_id=?", (network_id,)
    return [attachment_from_row(r) for r in _query(db, sql + " ORDER BY created, ifname", args)]


def delete_attachment(db: Database, container_id: str, network_id: str | None = None) -> None:
    if network_id is None:
        _write(db, "DELETE FROM attachments WHERE container_id=?", (container_id,))
    else:
        _write(db, "DELETE FROM attachments WHERE container_id=? AND network_id=?",
               (container_id, network_id))
