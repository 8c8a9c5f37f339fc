"""What the dashboard shows, gathered from the engine (no web framework here).

Every function is synchronous and reads: the app runs them in worker
threads.  The numbers come from the modules the CLI uses: the container
records and inspect (lifecycle/query.py), the namespaces view
(observe/namespaces.py, `nsbox ns`), the security posture
(`inspect --security`), the event journal (engine/events.py) and the stats
sampler (observe/stats.py, `nsbox stats`); nothing is computed twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from nsbox.errors import NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.containers import Engine

log = logging.getLogger(__name__)

ACTIVE_STATES = ("running", "paused", "restarting")
def human_bytes(value: float | int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def isolation(view: dict) -> list[tuple[str, str]]:
    """A container's namespaces grouped by status: [("private", "mnt uts ..."),
    ("host", "user time"), ("shared with a", "pid net")]."""
    from nsbox.engine.observe import namespaces as nsmod
    groups: dict[str, list[str]] = {}
    for row in view["Namespaces"]:
        groups.setdefault(nsmod.status_text(row), []).append(row["type"])
    return [(status, " ".join(types)) for status, types in groups.items()]


def overview(engine: Engine) -> list[dict]:
    """Every container, newest first: the first page's rows."""
    from nsbox.engine.health import state as health_state
    from nsbox.engine.observe import namespaces as nsmod
    views = nsmod.all_views(engine)  # one /proc scan and one list for the whole page
    rows = []
    for c in engine.list(all=True):
        health, groups = "", []
        if c.state in ACTIVE_STATES:
            health = health_state.status(c.bundle)  # <bundle>/health.json, as `ps` reads it
            if c.id in views:
                groups = isolation(views[c.id])
        rows.append({"id": c.id, "short_id": c.id[:12], "name": c.name, "image": c.image,
                     "status": c.state, "pid": c.pid if c.state in ACTIVE_STATES else 0,
                     "health": health, "exit_code": c.exit_code, "isolation": groups,
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created))})
    return rows


def cgroup_view(engine: Engine, ref: str) -> dict | None:
    """`nsbox cgroup C` (observe/cgroupview.py): paths, limits with their flags and
    usage against them, the counters of limits that bit; None if it cannot be read."""
    from nsbox.engine.observe import cgroupview
    try:
        view = cgroupview.view(engine, ref)
    except (NsboxError, OSError) as exc:
        log.debug("cgroup view of %s: %s", ref, exc)
        return None
    return {"mode": view.mode, "paths": sorted(view.paths.items()),
            "limits": [lim.as_dict() for lim in view.limits],
            "events": [ev.as_dict() for ev in view.events]}


def posture(engine: Engine, ref: str) -> dict | None:
    """`nsbox inspect --security`'s report: items with item, value, weaker, why."""
    try:
        report = engine.security_posture(ref)
    except NsboxError as exc:
        log.debug("security posture of %s: %s", ref, exc)
        return None
    for entry in report["items"]:
        value = entry["value"]
        if isinstance(value, list):
            value = " ".join(str(v).removeprefix("CAP_") for v in value) or "none"
        entry["text"] = str(value)
    return report


def namespaces(engine: Engine, ref: str) -> list[dict]:
    """The 8 namespaces beside the host's (`nsbox ns C`), [] when it is not running."""
    from nsbox.engine.observe import namespaces as nsmod
    try:
        view = nsmod.container_view(engine, ref)
    except NsboxError:
        return []
    for row in view["Namespaces"]:
        row["text"] = nsmod.status_text(row)
    return view["Namespaces"]


def events_module():  # noqa: ANN201 - nsbox.engine.events, or None before it exists
    try:
        from nsbox.engine import events
    except ImportError:
        return None
    return events if hasattr(events, "read") and hasattr(events, "follow") else None


def event_dict(event) -> dict:  # noqa: ANN001 - events.Event
    """An event for the page and the stream: time, type, action, actor id and name."""
    attrs = dict(event.Actor.Attributes or {})
    return {"time": time.strftime("%H:%M:%S", time.localtime(event.time)),
            "timeNano": event.timeNano, "type": event.Type, "action": event.Action,
            "id": event.Actor.ID, "name": attrs.get("name", ""),
            "attributes": attrs}


def recent_events(engine: Engine, container_id: str | None = None, limit: int = 50,
                  window: float = 24 * 3600) -> list[dict]:
    """The last LIMIT events of the last WINDOW seconds (of CONTAINER_ID only when given)."""
    events = events_module()
    if events is None:
        return []
    filters = {"container": [container_id]} if container_id else None
    try:
        found = deque((event_dict(e) for e in events.read(
            engine.root, since=time.time() - window, filters=filters)), maxlen=limit)
    except (NsboxError, OSError, ValueError) as exc:
        log.warning("dashboard: cannot read the event journal: %s", exc)
        return []
    return list(reversed(found))


class History:
    """The last MINUTES of samples per container: time, CPU %, memory bytes, PIDs."""

    def __init__(self, minutes: float = 5, interval: float = 2.0) -> None:
        self.interval = interval
        self.size = max(2, int(minutes * 60 / interval))
        self.series: dict[str, deque] = {}
        self.latest: dict[str, dict] = {}
        self.latest_time = 0.0  # when `latest` was sampled (rounded as the series' times)

    def add(self, samples: dict[str, dict], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.latest_time = stamp = round(now, 3)
        for cid, sample in samples.items():
            self.series.setdefault(cid, deque(maxlen=self.size)).append(
                (stamp, sample.get("cpu"), sample.get("mem"), sample.get("pids")))
            self.latest[cid] = sample
        for gone in set(self.series) - set(samples):
            del self.series[gone]  # stopped or removed: its graph starts over
            self.latest.pop(gone, None)

    def columns(self, cid: str) -> list[list]:
        """uPlot's data shape: [times, cpu, mem, pids]."""
        rows = list(self.series.get(cid, ()))
        return [[r[i] for r in rows] for i in range(4)]


class Sampler:
    """Usage of every running container, CPU % over the time since the last call.

    The numbers are `nsbox stats`' (observe/stats.py): one Sample per
    container per call, the previous one kept for the CPU delta.
    """

    def __init__(self) -> None:
        self.prev: dict = {}

    def __call__(self, engine: Engine) -> dict[str, dict]:
        from nsbox.engine.observe import stats
        targets = stats.targets(engine)
        out, prev = {}, {}
        for target, cur in zip(targets, stats.sample_all(targets), strict=True):
            if cur is None:
                continue
            row = stats.compute(target, self.prev.get(target.id), cur)
            prev[target.id] = cur
            out[target.id] = {
                "name": target.name, "status": target.state,
                "cpu": round(row.cpu_percent, 2), "mem": row.mem_usage,
                "mem_limit": row.mem_limit, "mem_percent": round(row.mem_percent, 2),
                "pids": row.pids, "pids_limit": cur.pids_limit,
                "net_rx": row.net_rx, "net_tx": row.net_tx,
                "blk_read": row.blk_read, "blk_write": row.blk_write}
        self.prev = prev
        return out
