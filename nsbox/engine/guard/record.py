"""The kernel's event records (struct event of bpf/guard.bpf.c), decoded.

Every constant here mirrors a #define of guard.bpf.c; the record layout is
checked against the compiled object's size when the guard loads it.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field

# struct event
LAYOUT = struct.Struct("<QQIiIIIIIIIIQ16s16sHHI256s256s")
PATH_MAX_B = 256

EV_EXEC, EV_OPEN, EV_CONNECT, EV_BIND, EV_LISTEN = 1, 2, 3, 4, 5
EV_PTRACE, EV_MOUNT, EV_MODULE, EV_BPF, EV_SETUID, EV_CAPSET = 6, 7, 8, 9, 10, 11
TYPE_NAMES = {EV_EXEC: "exec", EV_OPEN: "open", EV_CONNECT: "connect", EV_BIND: "bind",
              EV_LISTEN: "listen", EV_PTRACE: "ptrace", EV_MOUNT: "mount",
              EV_MODULE: "module", EV_BPF: "bpf", EV_SETUID: "setuid", EV_CAPSET: "capset"}

# struct gkey kinds and values
K_OPEN_EXACT, K_OPEN_PREFIX, K_OPEN_NAME, K_OPEN_EXT = 2, 3, 4, 5
V_REPORT = 1
# struct watch flags
W_ALL_READS = 2
# guard_keybits: one bit per (slot, kind, hash) key, tested before the hash map
KEYBITS = 1 << 16
_MIX = 0x9E3779B97F4A7C15


def key_bit(slot: int, kind: int, h: int) -> int:
    """The guard_keybits bit of a key (guard.bpf.c's key_bit())."""
    return (((h ^ (slot << 8) ^ kind) * _MIX) & 0xFFFFFFFFFFFFFFFF) >> 48


# guard_cgtab: the watched cgroups, direct-mapped, looked up before guard_watched
CGSLOTS = 1 << 14
CG_SHARED = 0xFFFFFFFFFFFFFFFF  # an entry two watched cgroups share: see guard_watched


def cgroup_slot(cgid: int) -> int:
    """The guard_cgtab entry of a cgroup id (guard.bpf.c's cgroup_slot())."""
    return ((cgid * _MIX) & 0xFFFFFFFFFFFFFFFF) >> 50

FMODE_WRITE = 0x2
AF_INET, AF_INET6 = 2, 10
PTRACE_REQUESTS = {0: "traceme", 16: "attach", 0x4206: "seize"}
SYSCALL_NAMES = {59: "execve", 322: "execveat", 2: "open", 85: "creat", 257: "openat", 437: "openat2", 42: "connect",
                 49: "bind", 50: "listen", 101: "ptrace", 105: "setuid", 113: "setreuid",
                 117: "setresuid", 122: "setfsuid", 126: "capset", 165: "mount",
                 175: "init_module", 313: "finit_module", 321: "bpf", 429: "move_mount",
                 430: "fsopen"}
BPF_COMMANDS = {0: "map_create", 5: "prog_load", 8: "prog_attach", 28: "link_create",
                6: "obj_pin", 7: "obj_get", 18: "btf_load"}
S_ISUID, S_ISGID = 0o4000, 0o2000

HASH_BASIS, MIX_K, _U64 = 0xCBF29CE484222325, 0xFF51AFD7ED558CCD, 0xFFFFFFFFFFFFFFFF


def _mix(h: int, v: int) -> int:
    h = ((h ^ v) * MIX_K) & _U64
    return h ^ (h >> 32)


def _mix_words(h: int, data: bytes) -> int:
    """DATA's 8-byte little-endian words (the last zero-padded) mixed into H."""
    for i in range(0, len(data), 8):
        h = _mix(h, int.from_bytes(data[i:i + 8], "little"))
    return h


def name_hash(name: bytes) -> int:
    """guard.bpf.c's hash of a name (or an extension): its words."""
    return _mix_words(HASH_BASIS, name)


def path_hash(path: bytes) -> int:
    """guard.bpf.c's hash of an absolute path: for each component a '/', then its words.
    A directory prefix ("/etc/") hashes as the program's state at its last '/'."""
    h = HASH_BASIS
    for part in path.split(b"/")[1:]:
        h = _mix_words(_mix(h, ord("/")), part)
    return h


def key_hash(kind: int, text: bytes) -> int:
    """The hash a guard_keys key of KIND holds for TEXT (a path, a prefix, a name, an extension)."""
    return path_hash(text) if kind in (K_OPEN_EXACT, K_OPEN_PREFIX) else name_hash(text)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@dataclass
class Event:
    """One kernel event, its fields named as in the alerts' JSON."""

    type: str
    cgroup_id: int
    ktime_ns: int
    pid: int          # on the host
    tid: int
    ppid: int         # on the host
    pid_in_container: int
    uid: int
    slot: int
    comm: str
    result: int       # the system call's return value; 0 for exec and connect
    syscall: str = ""
    path: str = ""
    argv: list[str] = field(default_factory=list)
    write: bool = False
    addr: str = ""
    port: int = 0
    family: str = ""
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"type": self.type, "pid": self.pid, "pid_in_container": self.pid_in_container,
               "ppid": self.ppid, "tid": self.tid, "uid": self.uid, "comm": self.comm,
               "result": self.result}
        if self.syscall:
            out["syscall"] = self.syscall
        if self.path:
            out["path"] = self.path
        if self.type == "exec":
            out["argv"] = self.argv
        if self.type == "open":
            out["write"] = self.write
        if self.family:
            out.update(family=self.family, addr=self.addr, port=self.port)
        out.update(self.details)
        return out


def decode(data: bytes) -> Event:
    (cgid, ts, type_, ret, pid, tid, ppid, nspid, uid, slot, a, b, c, comm, addr, off1, len2,
     nr, str1, str2) = LAYOUT.unpack_from(data)
    name = TYPE_NAMES.get(type_, str(type_))
    ev = Event(type=name, cgroup_id=cgid, ktime_ns=ts, pid=pid, tid=tid, ppid=ppid,
               pid_in_container=nspid, uid=uid, slot=slot, comm=_cstr(comm), result=ret,
               syscall=SYSCALL_NAMES.get(nr, "") if nr else "")
    if type_ in (EV_EXEC, EV_OPEN):
        ev.path = _cstr(str1[min(off1, PATH_MAX_B):])
        if ret < 0:
            ev.details["error"] = error_name(ret)  # refused: the path as the program gave it
        elif ev.path and not ev.path.startswith("/"):
            ev.details["path_truncated"] = True
    if type_ == EV_EXEC and ret < 0:
        pass
    elif type_ == EV_EXEC:
        ev.argv = [a.decode(errors="replace") for a in str2[:len2].split(b"\0") if a]
        if c > len2:
            ev.details["argv_truncated"] = True
        ev.details["setuid"] = bool(a & S_ISUID)
        ev.details["setgid"] = bool(a & S_ISGID)
        ev.details["euid"] = b
    elif type_ == EV_OPEN:
        ev.write = bool(a & FMODE_WRITE)
        ev.details["flags"] = b
    elif type_ in (EV_CONNECT, EV_BIND, EV_LISTEN):
        if a == AF_INET:
            ev.family, ev.addr = "inet", str(ipaddress.IPv4Address(addr[:4]))
        elif a == AF_INET6:
            ev.family, ev.addr = "inet6", str(ipaddress.IPv6Address(addr))
        ev.port = b
    elif type_ == EV_PTRACE:
        ev.details.update(request=PTRACE_REQUESTS.get(a, str(a)), target_pid=b)
    elif type_ == EV_MOUNT:
        ev.path = _cstr(str1)
        ev.details.update(fstype=_cstr(str2[:64]), source=_cstr(str2[64:192]))
        if nr == 165:
            ev.details["flags"] = c
    elif type_ == EV_MODULE:
        ev.details["how"] = {1: "finit_module", 2: "init_module"}.get(a, str(a))
    elif type_ == EV_BPF:
        ev.details["command"] = BPF_COMMANDS.get(a, str(a))
    elif type_ == EV_SETUID:
        ev.details["ids"] = [x if x != 0xFFFFFFFF else -1 for x in (a, b, c & 0xFFFFFFFF)]
    elif type_ == EV_CAPSET:
        ev.details["effective"] = f"{c:#x}"
    return ev


def error_name(result: int) -> str:
    """'EPERM' for -1; '' for a success."""
    if result >= 0:
        return ""
    import errno
    return errno.errorcode.get(-result, str(result))


def strerror(result: int) -> str:
    return os.strerror(-result) if result < 0 else ""
