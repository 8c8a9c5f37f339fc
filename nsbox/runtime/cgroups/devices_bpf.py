"""The cgroup v2 device controller: OCI device rules as a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 has no devices.allow/devices.deny files.  Instead the kernel runs
every BPF program attached to a cgroup (and its ancestors) with attach type
BPF_CGROUP_DEVICE whenever a process in it opens a device node or calls
mknod on one; a return value of 0 makes the operation fail with EPERM, 1
lets it through, and all attached programs must allow.

The program is assembled here instruction by instruction, so nsbox needs
neither a compiler nor libbpf.  Its input is `struct bpf_cgroup_dev_ctx`
(three u32: access_type = access << 16 | type, major, minor), and it decides
with OCI semantics: the last matching rule wins.  The decision is made for
each requested access bit on its own: walking the rules from last to first,
a matching deny rule that covers any still undecided bit denies the request,
a matching allow rule settles the bits it covers, and the request is allowed
once no bit is left undecided.  Bits no rule settles get the default.  For a
single rule this is exactly "allowed if every requested bit is in the rule's
access set"; beyond that it also makes `allow r` followed by `allow w` grant
O_RDWR (as the v1 controller merges them) and makes `deny w` refuse O_RDWR.

Verifier constraints the generated code respects (kernel/bpf/cgroup.c and
kernel/bpf/verifier.c):

* the context is read-only, 12 bytes; loads must be aligned and 4 bytes wide
  (only access_type also allows narrower loads);
* R0 must be written on every path to EXIT and hold 0 or 1 there;
* jumps go forward only (no loops are needed) and every instruction must be
  reachable, so rules shadowed by a later catch-all are not emitted and exit
  blocks nobody jumps to are left out;
* no helper calls are made, so the license string only needs to exist: the
  kernel gates GPL-only helpers on it, nothing else for this program type.
"""

from __future__ import annotations

import errno
import os

from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import syscalls

log = get_logger(__name__)

# ---------------------------------------------------------------- kernel ABI
# bpf(2) commands.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2

# struct bpf_cgroup_dev_ctx
DEV_BLOCK = 1  # BPF_DEVCG_DEV_BLOCK
DEV_CHAR = 2  # BPF_DEVCG_DEV_CHAR
ACC_MKNOD = 1  # BPF_DEVCG_ACC_MKNOD
ACC_READ = 2  # BPF_DEVCG_ACC_READ
ACC_WRITE = 4  # BPF_DEVCG_ACC_WRITE
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE

LICENSE = b"Apache-2.0"  # nsbox's own; accepted because the program calls no GPL-only helper
PROG_NAME = b"nsbox_devices"  # shown by bpftool; at most 15 chars of [A-Za-z0-9_.]

# Instruction encoding (include/uapi/linux/bpf.h, bpf_common.h).
_LDX, _JMP, _JMP32, _ALU64 = 0x01, 0x05, 0x06, 0x07
_MEM, _W = 0x60, 0x00
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JA, _JEQ, _JSET, _JNE, _EXIT = 0x00, 0x10, 0x40, 0x50, 0x90

LDX_W = _LDX | _MEM | _W  # dst = *(u32 *)(src + off)
MOV64_X = _ALU64 | _MOV | _X
MOV64_K = _ALU64 | _MOV | _K
AND64_K = _ALU64 | _AND | _K
RSH64_K = _ALU64 | _RSH | _K
JA = _JMP | _JA
JEQ_K = _JMP | _JEQ | _K
JSET_K = _JMP | _JSET | _K
JNE32_K = _JMP32 | _JNE | _K  # 32-bit compare: major/minor are u32, imm is s32
EXIT = _JMP | _EXIT

# Registers of the generated program.
R0, R1 = 0, 1  # return value; context pointer on entry
R_TYPE, R_ACCESS, R_MAJOR, R_MINOR = 2, 3, 4, 5  # R_ACCESS: bits still undecided

INSN_SIZE = 8  # struct bpf_insn: u8 code, u8 dst:4|src:4, s16 off, s32 imm (little-endian)

_TYPES = {"a": 0, "c": DEV_CHAR, "u": DEV_CHAR, "b": DEV_BLOCK}
_ACCESS_BITS = {"r": ACC_READ, "w": ACC_WRITE, "m": ACC_MKNOD}
_ALLOW, _DENY = "allow", "deny"  # labels of the two exit blocks


# ---------------------------------------------------------------- rules
class Rule:
    """One normalized device rule; major/minor None = any, access a BPF_DEVCG_ACC_* mask."""

    __slots__ = ("allow", "type", "major", "minor", "access")

    def __init__(self, allow: bool, type: str, major: int | None, minor: int | None,
                 access: int) -> None:
        self.allow = allow
        self.type = type  # "a", "c" or "b"
        self.major = major
        self.minor = minor
        self.access = access

    def matches_every_device(self) -> bool:
        return self.type == "a" and self.major is None and self.minor is None

    def is_catch_all(self) -> bool:
        return self.matches_every_device() and self.access == ACC_ALL

    def __str__(self) -> str:
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        access = "".join(ch for ch, bit in (("r", ACC_READ), ("w", ACC_WRITE), ("m", ACC_MKNOD))
                         if self.access & bit)
        return f"{_ALLOW if self.allow else _DENY} {self.type} {major}:{minor} {access}"

    def __repr__(self) -> str:
        return f"Rule({self})"


def _number(entry: dict, key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None or value == -1:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ConfigError(f"{where}.{key}: expected a device number or -1, got {value!r}")
    return value


def normalize(rules: list[dict]) -> list[Rule]:
    """Validate OCI `linux.resources.devices` entries and turn them into Rules."""
    out = []
    for index, entry in enumerate(rules or ()):
        where = f"linux.resources.devices[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object, got {entry!r}")
        allow = entry.get("allow")
        if not isinstance(allow, bool):
            raise ConfigError(f"{where}.allow: expected true or false, got {allow!r}")
        dtype = entry.get("type") or "a"
        if dtype not in _TYPES:
            raise ConfigError(f"{where}.type: expected a, c or b, got {dtype!r}")
        access_text = entry.get("access")
        if access_text is None or access_text == "":
            access = ACC_ALL  # an absent access list means all of them, as in devices.allow
        elif isinstance(access_text, str) and access_text and set(access_text) <= set(_ACCESS_BITS):
            access = 0
            for ch in access_text:
                access |= _ACCESS_BITS[ch]
        else:
            raise ConfigError(f"{where}.access: expected letters from 'rwm', got {access_text!r}")
        out.append(Rule(allow, "c" if dtype == "u" else dtype, _number(entry, "major", where),
                        _number(entry, "minor", where), access))
    return out


def effective_rules(rules: list[dict], default_allow: bool = False) -> tuple[bool, list[Rule]]:
    """(default, rules that still matter): a catch-all rule becomes the default and hides all before it."""
    normalized = normalize(rules)
    for index in range(len(normalized) - 1, -1, -1):
        if normalized[index].is_catch_all():
            return normalized[index].allow, normalized[index + 1:]
    return default_allow, normalized


def describe(rules: list[dict], default_allow: bool = False) -> str:
    """A one-line summary of what the generated program decides, for debug logs."""
    default, effective = effective_rules(rules, default_allow)
    parts = [f"default {_ALLOW if default else _DENY}"]
    parts.extend(str(rule) for rule in effective)
    return "; ".join(parts)


# ---------------------------------------------------------------- assembler
class _Assembler:
    """Collects instructions whose jump targets may be labels, then resolves them."""

    def __init__(self) -> None:
        self.insns: list[list] = []  # [code, dst, src, off or label, imm]
        self.labels: dict[str, int] = {}
        self.used: set[str] = set()

    def emit(self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> None:
        if isinstance(off, str):
            self.used.add(off)
        self.insns.append([code, dst, src, off, imm])

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, dst, src, off, imm) in enumerate(self.insns):
            if isinstance(off, str):
                off = self.labels[off] - index - 1  # relative to the next instruction
                if not 0 <= off <= 0x7FFF:
                    raise ConfigError("device rules: too many rules for one BPF program")
            out += bytes((code, (src << 4) | dst)) + off.to_bytes(2, "little", signed=True) \
                + imm.to_bytes(4, "little", signed=True)
        return bytes(out)


def program_for(rules: list[dict], default_allow: bool = False) -> bytes:
    """The BPF_PROG_TYPE_CGROUP_DEVICE program (raw struct bpf_insn array) enforcing RULES.

    The default for requests no rule settles is deny, or allow with
    DEFAULT_ALLOW; a rule matching every device with access rwm replaces
    the default (and everything before it).
    """
    default, effective = effective_rules(rules, default_allow)
    asm = _Assembler()
    # Prologue: split the context into registers.
    asm.emit(LDX_W, R_TYPE, R1, 0)
    asm.emit(MOV64_X, R_ACCESS, R_TYPE)
    asm.emit(AND64_K, R_TYPE, imm=0xFFFF)
    asm.emit(RSH64_K, R_ACCESS, imm=16)
    asm.emit(LDX_W, R_MAJOR, R1, 4)
    asm.emit(LDX_W, R_MINOR, R1, 8)
    # Last rule first: it has the final say over the bits it covers.
    for number, rule in enumerate(reversed(effective)):
        skip = f"rule{number}"
        if rule.type != "a":
            asm.emit(JNE32_K, R_TYPE, off=skip, imm=_TYPES[rule.type])
        if rule.major is not None:
            asm.emit(JNE32_K, R_MAJOR, off=skip, imm=_s32(rule.major))
        if rule.minor is not None:
            asm.emit(JNE32_K, R_MINOR, off=skip, imm=_s32(rule.minor))
        if rule.access == ACC_ALL:
            asm.emit(JA, off=_ALLOW if rule.allow else _DENY)
        elif rule.allow:
            asm.emit(AND64_K, R_ACCESS, imm=~rule.access)
            asm.emit(JEQ_K, R_ACCESS, off=_ALLOW, imm=0)
        else:
            asm.emit(JSET_K, R_ACCESS, off=_DENY, imm=rule.access)
        asm.label(skip)
    # Fall through into the default's exit block; emit the other one only if
    # something jumps there (the verifier rejects unreachable instructions).
    first, second = (_ALLOW, _DENY) if default else (_DENY, _ALLOW)
    for name in (first, second):
        if name == first or name in asm.used:
            asm.label(name)
            asm.emit(MOV64_K, R0, imm=1 if name == _ALLOW else 0)
            asm.emit(EXIT)
    return asm.assemble()


def _s32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def instructions(program: bytes) -> list[tuple[int, int, int, int, int]]:
    """Decode a program into (code, dst, src, off, imm) tuples, for tests and debugging."""
    if len(program) % INSN_SIZE:
        raise ValueError("a BPF program is a whole number of 8-byte instructions")
    out = []
    for offset in range(0, len(program), INSN_SIZE):
        code, regs = program[offset], program[offset + 1]
        off = int.from_bytes(program[offset + 2:offset + 4], "little", signed=True)
        imm = int.from_bytes(program[offset + 4:offset + 8], "little", signed=True)
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


# ---------------------------------------------------------------- bpf(2)
# union bpf_attr, each command's part, laid out as the x86_64 kernel reads it
# (u32 and u64 fields, pointers as u64); bytes where the kernel only reads, a
# bytearray where it writes back (QUERY's count, INFO's length).
def _prog_load_attr(program: bytes, license: bytes, log_buf: bytearray | None) -> bytes:
    """PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type (72 bytes)."""
    log_level, log_size, log_address = (1, len(log_buf), syscalls.address(log_buf)) \
        if log_buf is not None else (0, 0, 0)
    return (syscalls.u32s(BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // INSN_SIZE)
            + syscalls.u64s(syscalls.address(program), syscalls.address(license))
            + syscalls.u32s(log_level, log_size) + syscalls.u64s(log_address) + syscalls.u32s(0, 0)
            + PROG_NAME.ljust(16, b"\0")[:16] + syscalls.u32s(0, BPF_CGROUP_DEVICE))


def _attach_attr(cgroup_fd: int, prog_fd: int, flags: int = 0) -> bytes:
    """PROG_ATTACH/DETACH: target_fd, attach_bpf_fd, attach_type, attach_flags, replace_bpf_fd."""
    return syscalls.u32s(cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags, 0)


_LOG_SIZE = 256 * 1024


def load(program: bytes) -> int:
    """Load PROGRAM as a cgroup device program; returns its fd (close-on-exec).

    On a verifier rejection the load is repeated with a log buffer so the
    KernelError can say why.
    """
    if not program or len(program) % INSN_SIZE:
        raise ValueError("a BPF program is a non-empty whole number of 8-byte instructions")
    program = bytes(program)
    license = LICENSE + b"\0"  # both referenced by the attributes until each call returns
    try:
        return syscalls.bpf(BPF_PROG_LOAD, _prog_load_attr(program, license, None))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EACCES):
            raise KernelError(f"loading the device BPF program: {os.strerror(exc.errno)}",
                              exc.errno) from None
        first_error = exc.errno
    log_buf = bytearray(_LOG_SIZE)
    try:  # loads if the failure was transient
        return syscalls.bpf(BPF_PROG_LOAD, _prog_load_attr(program, license, log_buf))
    except OSError as exc:
        code = exc.errno if exc.errno != errno.ENOSPC else first_error  # ENOSPC: log truncated
    verifier_log = log_buf.partition(b"\0")[0].decode(errors="replace").strip()
    raise KernelError(f"the kernel rejected the device BPF program ({os.strerror(code)}):\n"
                      f"{verifier_log or '(no verifier log)'}", code)


def _open_cgroup(cgroup_dir: str) -> int:
    try:
        return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"open cgroup {cgroup_dir}: {exc.strerror}", exc.errno) from None


def _prog_id(prog_fd: int) -> int:
    # The first fields of struct bpf_prog_info (u32 type, u32 id): the kernel
    # fills only what fits; OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info.
    info = bytearray(8)
    attr = bytearray(syscalls.u32s(prog_fd, len(info)) + syscalls.u64s(syscalls.address(info)))
    syscalls.bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return int.from_bytes(info[4:8], "little")


def attach(cgroup_dir: str, program: bytes) -> int:
    """Load PROGRAM and attach it to the cgroup2 directory CGROUP_DIR; returns its prog id.

    BPF_F_ALLOW_MULTI lets it sit beside other device programs (all must
    allow).  No fd is kept: the attachment holds the program alive until it
    is detached or the cgroup is removed.
    """
    prog_fd = load(program)
    try:
        cgroup_fd = _open_cgroup(cgroup_dir)
        try:
            try:
                syscalls.bpf(BPF_PROG_ATTACH, _attach_attr(cgroup_fd, prog_fd, BPF_F_ALLOW_MULTI))
            except OSError as exc:
                raise KernelError(f"attach device BPF program to {cgroup_dir}: "
                                  f"{os.strerror(exc.errno)}", exc.errno) from None
        finally:
            os.close(cgroup_fd)
        prog_id = _prog_id(prog_fd)
    finally:
        os.close(prog_fd)
    log.debug("attached device program %d to %s", prog_id, cgroup_dir)
    return prog_id


def query(cgroup_dir: str) -> list[int]:
    """Ids of the device programs attached directly to CGROUP_DIR (not inherited ones)."""
    cgroup_fd = _open_cgroup(cgroup_dir)
    try:
        count = 8
        while True:
            ids = bytearray(4 * count)  # u32[count]
            # PROG_QUERY: target_fd, attach_type, query_flags, attach_flags (out),
            # prog_ids, prog_cnt (in: room, out: how many); padded to 32 bytes.
            attr = bytearray(syscalls.u32s(cgroup_fd, BPF_CGROUP_DEVICE, 0, 0)
                             + syscalls.u64s(syscalls.address(ids)) + syscalls.u32s(count, 0))
            try:
                syscalls.bpf(BPF_PROG_QUERY, attr)
            except OSError as exc:
                attached = int.from_bytes(attr[24:28], "little")
                if exc.errno == errno.ENOSPC and attached > count:
                    count = attached  # more were attached than we had room for
                    continue
                raise KernelError(f"query device BPF programs of {cgroup_dir}: "
                                  f"{os.strerror(exc.errno)}", exc.errno) from None
            attached = int.from_bytes(attr[24:28], "little")
            return [int.from_bytes(ids[i:i + 4], "little") for i in range(0, 4 * attached, 4)]
    finally:
        os.close(cgroup_fd)


def detach(cgroup_dir: str, prog_ids: list[int]) -> None:
    """Detach the device programs with these ids from CGROUP_DIR; ids already gone are skipped."""
    if not prog_ids:
        return
    cgroup_fd = _open_cgroup(cgroup_dir)
    try:
        for prog_id in prog_ids:
            try:
                # GET_FD_BY_ID: prog_id, next_id, open_flags
                prog_fd = syscalls.bpf(BPF_PROG_GET_FD_BY_ID, syscalls.u32s(prog_id, 0, 0))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # released meanwhile
                raise KernelError(f"get fd of BPF program {prog_id}: {os.strerror(exc.errno)}",
                                  exc.errno) from None
            try:
                syscalls.bpf(BPF_PROG_DETACH, _attach_attr(cgroup_fd, prog_fd))
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # not (or no longer) attached here
                    raise KernelError(f"detach BPF program {prog_id} from {cgroup_dir}: "
                                      f"{os.strerror(exc.errno)}", exc.errno) from None
            finally:
                os.close(prog_fd)
    finally:
        os.close(cgroup_fd)


def detach_all(cgroup_dir: str) -> None:
    """Detach every device program attached directly to CGROUP_DIR."""
    detach(cgroup_dir, query(cgroup_dir))


def replace(cgroup_dir: str, program: bytes) -> int:
    """Swap the cgroup's device programs for PROGRAM (for `update`); returns the new prog id.

    The new program is attached before the old ones go, so there is no
    moment in which the cgroup has no device policy at all.
    """
    old_ids = query(cgroup_dir)
    new_id = attach(cgroup_dir, program)
    detach(cgroup_dir, [prog_id for prog_id in old_ids if prog_id != new_id])
    return new_id
