"""The guard process: one per host, alive while at least one container is watched.

Started by the first watch (client.py, `python -m nsbox.engine.guard.service
STATUS_FD`), it loads the BPF object, attaches its programs and owns its
maps; nothing is pinned, so when it exits, even by SIGKILL, the kernel
drops programs, links and maps with its last file descriptors.  It serves
requests on a Unix socket (one JSON line each way):

    {"op": "watch", cgroup, id, name, image, labels, network, entrypoint,
     root, alerts, rules, source}   -> {"ok": true} once the kernel watches it
    {"op": "status"}               -> containers, drops, programs
    {"op": "subscribe", "container": ID-or-""} -> {"ok": true}, then one JSON
                                      line per event until the guard exits

A watch ends when the container's cgroup directory is gone (the runtime
removes it when the container is deleted, which also covers a restart: the
new start watches the new cgroup).  With no watch left the guard removes
its socket and exits.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from nsbox.engine.guard import client, record, tracefs
from nsbox.engine.guard.libbpf import BpfObject, LibbpfError, RingBuffer
from nsbox.engine.guard.rules import Rule, kernel_plan, load_text, process_names

log = logging.getLogger("nsbox.guard")

# guard=drift's own rule: an executable not from the image's layers was refused.
DRIFT_RULE = Rule(name="drift", events=["exec"], action="deny",
                  description="an executable that is not from the image's layers was run")
HOUSEKEEPING_S = 0.5
IDLE_EXIT_S = 10.0  # started but never given a container
SUBSCRIBER_BUFFER = 8 << 20
WATCH_VALUE = struct.Struct("<II")
KEY = struct.Struct("<IIQ")
CGENTRY = struct.Struct("<QII")  # guard_cgtab: cgroup id, then the watch (slot, flags)
REPORT = struct.pack("<I", record.V_REPORT)


@dataclass
class Watch:
    cid: str
    name: str
    image: str
    labels: dict
    network: str
    entrypoint: str
    root: str
    alerts: str
    cgroup: str
    cgid: int
    slot: int
    rules: list[Rule]
    source: str
    drift: bool = False
    flags: int = 0  # struct watch's flags (W_ALL_READS)
    keys: list[bytes] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def context(self) -> dict:
        return {"id": self.cid, "name": self.name, "image": self.image, "labels": self.labels,
                "network": self.network, "entrypoint": self.entrypoint}


def _now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


class Guard:
    def __init__(self) -> None:
        events = tracefs.ensure()
        if not os.path.isdir(os.path.join(events, "syscalls")):
            raise LibbpfError("the kernel has no system call tracepoints (tracefs "
                              "events/syscalls: CONFIG_FTRACE_SYSCALLS): the guard cannot watch")
        self.obj = BpfObject(client.OBJECT)
        # A call the kernel lacks (init_module without module support) has no
        # tracepoint: its program is not loaded, and `guard status` says so.
        self.missing: dict[str, str] = {}
        attach = []
        for name, section, handle in self.obj.programs():
            if section.startswith("tracepoint/") and not tracefs.has_event(events, section):
                self.obj.set_autoload(handle, False)
                self.missing[name] = f"no tracepoint {section.partition('/')[2]} in this kernel"
            else:
                attach.append((name, handle))
        self.obj.load()
        for name, handle in attach:
            self.obj.attach(handle, name)
        self.watched = self.obj.map("guard_watched")
        self.keys = self.obj.map("guard_keys")
        self.keybits = self.obj.map("guard_keybits")
        self.cgtab = self.obj.map("guard_cgtab")
        self.drops_map = self.obj.map("guard_drops")
        self.ncpu = self.obj.possible_cpus()
        self.ring = RingBuffer(self.obj._lib, self.obj.map("guard_events").fd, self.on_record)
        self.by_slot: dict[int, Watch] = {}
        self.subscribers: dict[socket.socket, str] = {}
        self.pending: dict[socket.socket, bytearray] = {}  # lines a subscriber has not taken
        self.parsed: dict[tuple[str, str], list[Rule]] = {}
        self.lost: dict[socket.socket, int] = {}
        self.procs: OrderedDict[int, dict] = OrderedDict()
        self.drops_seen = 0
        self.events_seen = 0
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.stopping = False

    # ------------------------------------------------------------ socket
    def listen(self) -> None:
        with_suppress_unlink(client.SOCKET)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(client.SOCKET)
        os.chmod(client.SOCKET, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, "listen")
        self.sel.register(self.ring.fileno(), selectors.EVENT_READ, "ring")

    def close_listener(self) -> None:
        if self.listener is not None:
            with_suppress_unlink(client.SOCKET)
            self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def on_accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        try:
            line = conn.makefile("rb").readline()
            message = json.loads(line) if line else {}
            answer = self.handle(conn, message)
        except Exception as exc:  # noqa: BLE001 - one bad client must not stop the guard
            log.warning("guard: request failed: %s", exc)
            answer = {"ok": False, "error": str(exc)}
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            self.subscribers.pop(conn, None)
            conn.close()
            return
        if conn not in self.subscribers:
            conn.close()
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, "subscriber")

    def handle(self, conn: socket.socket, message: dict) -> dict:
        op = message.get("op")
        if op == "watch":
            self.add_watch(message)
            return {"ok": True}
        if op == "status":
            return {"ok": True, "pid": os.getpid(), "drops": self.drops(),
                    "events": self.events_seen,
                    "containers": [{"id": w.cid, "name": w.name, "cgroup_id": w.cgid,
                                    "rules": len(w.rules), "source": w.source,
                                    "alerts": w.counts} for w in self.by_slot.values()],
                    "programs": [n for n, _s, _h in self.obj.programs()
                                 if n not in self.missing],
                    "unattached": self.missing}
        if op == "subscribe":
            self.subscribers[conn] = str(message.get("container") or "")
            return {"ok": True}
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r}"}

    # ------------------------------------------------------------ watches
    def add_watch(self, m: dict) -> None:
        key = (m["rules"], m.get("source") or "rules")
        if key not in self.parsed:
            self.parsed[key] = load_text(*key)
        rules = self.parsed[key]
        for old in [w for w in self.by_slot.values() if w.cid == m["id"]]:
            self.remove_watch(old)
        cgroup = m["cgroup"]
        cgid = os.stat(cgroup).st_ino
        slot = next(i for i in range(1, len(self.by_slot) + 2) if i not in self.by_slot)
        w = Watch(cid=m["id"], name=m.get("name", ""), image=m.get("image", ""),
                  labels=m.get("labels") or {}, network=m.get("network", ""),
                  entrypoint=m.get("entrypoint", ""), root=m.get("root", ""),
                  alerts=m.get("alerts", ""), cgroup=cgroup, cgid=cgid, slot=slot,
                  rules=[], source=m.get("source", ""), drift=bool(m.get("drift")))
        w.rules = [r for r in rules if r.applies_to(w.context())]
        plan = kernel_plan(w.rules)
        for kind, h in plan.keys:
            key = KEY.pack(slot, kind, h)
            self.keys.update(key, REPORT)
            w.keys.append(key)
        flags = record.W_ALL_READS if plan.all_reads else 0
        self.by_slot[slot] = w
        self.set_keybits()
        w.flags = flags
        # Last: from here on the kernel reports the container's processes.
        self.watched.update(struct.pack("<Q", cgid), WATCH_VALUE.pack(slot, flags))
        self.set_cgentry(record.cgroup_slot(cgid))
        log.info("guard: watching %s (%s, cgroup %d, %d rules)", w.name, w.cid[:12], cgid,
                 len(w.rules))

    def remove_watch(self, w: Watch) -> None:
        self.by_slot.pop(w.slot, None)
        self.set_cgentry(record.cgroup_slot(w.cgid))
        self.watched.delete(struct.pack("<Q", w.cgid))
        for key in w.keys:
            self.keys.delete(key)
        self.set_keybits()
        log.info("guard: %s (%s) is no longer watched", w.name, w.cid[:12])

    def set_keybits(self) -> None:
        """guard_keybits from every watch: a clear bit spares a hash lookup."""
        bits = bytearray(record.KEYBITS // 8)
        for w in self.by_slot.values():
            for key in w.keys:
                i = record.key_bit(*KEY.unpack(key))
                bits[i >> 3] |= 1 << (i & 7)
        self.keybits.update(b"\0\0\0\0", bytes(bits))

    def set_cgentry(self, index: int) -> None:
        """guard_cgtab's entry INDEX from the watches that map to it: none, the one (its
        watch in place), or several (CG_SHARED: the kernel looks in guard_watched)."""
        there = [w for w in self.by_slot.values() if record.cgroup_slot(w.cgid) == index]
        if not there:
            entry = CGENTRY.pack(0, 0, 0)
        elif len(there) == 1:
            entry = CGENTRY.pack(there[0].cgid, there[0].slot, there[0].flags)
        else:
            entry = CGENTRY.pack(record.CG_SHARED, 0, 0)
        self.cgtab.update(struct.pack("<I", index), entry)

    def housekeeping(self) -> None:
        for w in list(self.by_slot.values()):
            try:
                alive = os.stat(w.cgroup).st_ino == w.cgid
            except OSError:
                alive = False
            if not alive:
                self.ring.consume()  # its last events first
                self.remove_watch(w)
        drops = self.drops()
        if drops > self.drops_seen:
            log.warning("guard: the kernel dropped %d events (ring buffer full)",
                        drops - self.drops_seen)
            self.publish({"type": "drops", "dropped": drops - self.drops_seen, "total": drops},
                         None)
            self.drops_seen = drops

    def drops(self) -> int:
        raw = self.drops_map.lookup(struct.pack("<I", 0), 8 * self.ncpu)
        return sum(struct.unpack(f"<{self.ncpu}Q", raw)) if raw else 0

    # ------------------------------------------------------------ events
    def on_record(self, data: bytes) -> None:
        self.events_seen += 1
        ev = record.decode(data)
        w = self.by_slot.get(ev.slot)
        if w is None or w.cgid != ev.cgroup_id:
            return  # a container just unwatched
        if ev.type == "exec":
            self.procs[ev.pid] = {"exe": ev.path, "argv": ev.argv}
            self.procs.move_to_end(ev.pid)
            while len(self.procs) > 4096:
                self.procs.popitem(last=False)
        ctx = w.context()
        proc = self.process(ev)
        names = process_names(ev, proc["exe"], proc["argv"])
        fired = [r for r in w.rules if r.matches(ev, ctx, names)]
        if w.drift and ev.type == "exec" and ev.result in (-1, -13):
            fired.append(DRIFT_RULE)  # refused by the kernel (Landlock): say so
        line = {"time": _now_rfc3339(), "container": {"id": w.cid, "name": w.name,
                                                      "image": w.image},
                "process": proc, "event": ev.as_dict()}
        if fired:
            line["rules"] = [{"rule": r.name, "action": r.action} for r in fired]
        if self.subscribers:
            # CLOCK_MONOTONIC both: the kernel's stamp, and ours (detection latency).
            line["ktime_ns"], line["seen_ns"] = ev.ktime_ns, time.monotonic_ns()
        self.publish(line, w)
        for rule in fired:
            self.act(rule, ev, w, line)

    def process(self, ev: record.Event) -> dict:
        known = self.procs.get(ev.pid) or {}
        exe, argv = known.get("exe"), known.get("argv")
        if exe is None:
            # A process whose exec the guard did not see (it started before the watch, or
            # was forked without an exec): read once, then remembered like an exec.
            try:
                exe = os.readlink(f"/proc/{ev.pid}/exe")
                with open(f"/proc/{ev.pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                exe, argv = "", []
            self.procs[ev.pid] = {"exe": exe, "argv": argv}
        out = {"pid": ev.pid, "pid_in_container": ev.pid_in_container, "ppid": ev.ppid,
               "comm": ev.comm, "uid": ev.uid, "exe": exe, "argv": argv or []}
        parent = self.procs.get(ev.ppid)
        if parent:
            out["parent"] = {"pid": ev.ppid, "exe": parent["exe"], "argv": parent["argv"]}
        return out

    def act(self, rule: Rule, ev: record.Event, w: Watch, line: dict) -> None:
        done = {"log": "logged", "alert": "alerted", "kill": "killed"}.get(rule.action, "")
        if rule.action == "deny":
            # Refused by the kernel before it happened (Landlock: EACCES), or seen going through.
            done = "denied" if ev.result in (-1, -13) else "allowed: not enforced for this event"
        if rule.action == "kill" and not self.kill(ev.pid, w):
            done = "kill failed: the process was gone"
        alert = {"time": line["time"], "rule": rule.name, "description": rule.description,
                 "action": rule.action, "done": done, "container": line["container"],
                 "process": line["process"], "event": line["event"]}
        w.counts[rule.name] = w.counts.get(rule.name, 0) + 1
        if w.alerts:
            try:
                fd = os.open(w.alerts, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
                try:
                    os.write(fd, json.dumps(alert).encode() + b"\n")
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("guard: cannot write %s: %s", w.alerts, exc)
        if rule.action in ("alert", "kill", "deny") and w.root:
            self.journal(w, rule, ev, done)

    def journal(self, w: Watch, rule: Rule, ev: record.Event, done: str) -> None:
        try:
            from nsbox.engine import events as journal
        except ImportError:
            return
        attrs = {"name": w.name, "image": w.image, "rule": rule.name, "action": rule.action,
                 "done": done, "event": ev.type, "pid": str(ev.pid),
                 "pid_in_container": str(ev.pid_in_container), "comm": ev.comm}
        if ev.path:
            attrs["path"] = ev.path
        if ev.addr:
            attrs["addr"] = ev.addr
            attrs["port"] = str(ev.port)
        journal.emit(w.root, "guard", rule.name, w.cid, attrs)

    def kill(self, pid: int, w: Watch) -> bool:
        """SIGKILL PID if it still is a process of W's cgroup (not a reused pid)."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                mine = any(line.startswith("0::") and w.cgroup.endswith(line[3:].strip())
                           for line in f)
            if mine:
                os.kill(pid, signal.SIGKILL)
                return True
        except OSError:
            pass
        return False

    def publish(self, line: dict, w: Watch | None) -> None:
        """Queue LINE for the subscribers; a slow one loses lines past SUBSCRIBER_BUFFER
        (counted in a `subscriber_dropped` line) rather than stalling the guard."""
        if not self.subscribers:
            return
        data = json.dumps(line).encode() + b"\n"
        for conn, wanted in list(self.subscribers.items()):
            if wanted and w is not None and wanted not in (w.cid, w.name) \
                    and not w.cid.startswith(wanted):
                continue
            buf = self.pending.setdefault(conn, bytearray())
            if len(buf) + len(data) > SUBSCRIBER_BUFFER:
                self.lost[conn] = self.lost.get(conn, 0) + 1
                continue
            buf += data
            self.flush(conn)

    def flush(self, conn: socket.socket) -> None:
        buf = self.pending.get(conn)
        if buf is None:
            return
        lost = self.lost.pop(conn, 0)
        if lost and len(buf) < SUBSCRIBER_BUFFER // 2:
            buf += json.dumps({"type": "subscriber_dropped", "lines": lost}).encode() + b"\n"
        elif lost:
            self.lost[conn] = lost
        try:
            while buf:
                sent = conn.send(buf)
                del buf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.drop_subscriber(conn)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
        try:
            self.sel.modify(conn, want, "subscriber")
        except KeyError:
            self.sel.register(conn, want, "subscriber")

    def drop_subscriber(self, conn: socket.socket) -> None:
        self.subscribers.pop(conn, None)
        self.pending.pop(conn, None)
        self.lost.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    # ------------------------------------------------------------ main loop
    def run(self) -> None:
        started = time.monotonic()
        had_watch = False
        next_housekeeping = 0.0
        while not self.stopping:
            for key, mask in self.sel.select(HOUSEKEEPING_S):
                if key.data == "listen":
                    self.on_accept()
                elif key.data == "ring":
                    self.ring.consume()
                elif key.data == "subscriber":
                    if mask & selectors.EVENT_READ:
                        try:
                            gone = not key.fileobj.recv(4096)
                        except BlockingIOError:
                            gone = False
                        except OSError:
                            gone = True
                        if gone:
                            self.drop_subscriber(key.fileobj)
                            continue
                    if mask & selectors.EVENT_WRITE:
                        self.flush(key.fileobj)
            now = time.monotonic()
            if now >= next_housekeeping:
                self.housekeeping()
                next_housekeeping = now + HOUSEKEEPING_S
            had_watch = had_watch or bool(self.by_slot)
            if not self.by_slot and (had_watch or now - started > IDLE_EXIT_S):
                # Stop taking requests first; a watch that raced in is still served.
                self.close_listener()
                self.ring.consume()
                if not self.by_slot:
                    return

    def close(self) -> None:
        self.close_listener()
        for conn in list(self.subscribers):
            self.flush(conn)
            self.drop_subscriber(conn)
        self.ring.close()
        self.obj.close()


def with_suppress_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _serving() -> bool:
    """Whether another guard answers on the socket."""
    try:
        client.request({"op": "ping"}, timeout=2)
        return True
    except (OSError, ValueError):
        return False


def _take_lock() -> int | None:
    """The host's guard lock (held for life); None when another guard holds it and serves
    (or still holds it after 10 s): the client then talks to that one."""
    fd = os.open(client.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + 10
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # Held: by a guard that serves (two starters raced), or by one on its way out.
            if _serving() or time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    status_fd = int(argv[0]) if argv else -1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guard[%(process)d] %(message)s")

    def answer(text: str) -> None:
        nonlocal status_fd
        if status_fd >= 0:
            try:
                os.write(status_fd, text.encode() + b"\n")
            except OSError:
                pass
            os.close(status_fd)
            status_fd = -1

    os.makedirs(client.GUARD_DIR, mode=0o700, exist_ok=True)
    lock = _take_lock()
    if lock is None:
        answer("")  # another guard is running: the client connects to it
        return 0
    try:
        guard = Guard()
    except (LibbpfError, OSError) as exc:
        answer(f"err {exc}")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(guard, "stopping", True))
    signal.signal(signal.SIGINT, lambda *_: setattr(guard, "stopping", True))
    try:
        guard.listen()
        answer("ok")
        guard.run()
    finally:
        guard.close()
        os.close(lock)
    log.info("guard: no container is watched any more; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
