"""Published ports of slirp4netns containers: rootless `-p`/`-P` (docs/networking.md).

No firewall here: slirp4netns itself listens on each host port (as the
user, in the host's network namespace) and carries the connections to the
container's tap0 address (10.0.2.100 by default).  At each start,
`publish()` turns the request into concrete mappings exactly as
ports.py does for bridge networks (free ports picked, fixed ones checked
with a bind as the user and against the ports the user's other running
containers publish) and writes them to the same record,
<run_root>/ports/<id>.json, so `nsbox port`, `ps` and inspect read them the
same way.  slirp.start() then hands the record to the slirp4netns it
starts, through its API socket (`add_hostfwd`), so the ports live exactly
as long as that process: released when the container stops, added again
when it starts or is restarted by its policy.  Errors are one line
(ConfigError, exit 125), before any slirp4netns process or namespace exists.
"""

from __future__ import annotations

import os

from nsbox import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.lifecycle.state import EngineBase

LIVE_STATES = ("running", "paused", "restarting", "starting")


def record_path(run_root: str, cid: str) -> str:
    """The mappings' record (ports.py's format and place)."""
    return os.path.join(run_root, "ports", cid + ".json")


def publish(engine: EngineBase, c: Container) -> list[dict]:
    """Resolve and record C's published ports for its slirp4netns; the mappings."""
    from nsbox.engine.network import ports

    wanted = ports.requested(engine, c)
    unpublish(engine, c.id)
    if not wanted:
        return []
    mappings = ports._resolve(c, wanted, _taken(engine, c.id))
    path = record_path(engine.run_root, c.id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(_json.dumps(mappings))
    os.replace(path + ".tmp", path)
    return mappings


def unpublish(engine: EngineBase, cid: str) -> None:
    """Forget CID's mappings (its slirp4netns, gone with the container, held the ports)."""
    try:
        os.unlink(record_path(engine.run_root, cid))
    except FileNotFoundError:
        pass


def _taken(engine: EngineBase, cid: str) -> set[tuple[int, str]]:
    """(port, proto) published by this user's other live containers."""
    directory = os.path.join(engine.run_root, "ports")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    taken: set[tuple[int, str]] = set()
    for name in names:
        other = name.removesuffix(".json")
        if not name.endswith(".json") or other == cid:
            continue
        row = engine.db.container(other)
        if row is None or row["state"] not in LIVE_STATES:
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                taken |= {(int(m["host_port"]), m["proto"]) for m in _json.loads(f.read())}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return taken
