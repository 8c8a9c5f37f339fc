"""Tests for nsbox.runtime.cgroups.devices_bpf: the cgroup v2 device program.

The unit tests run the generated instructions through a tiny interpreter
and compare every decision with an independent reading of the rules; the
kernel tests attach programs to a throwaway cgroup2 directory below our own
and let a forked child (never the test process) try opens and mknods in it.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsbox.errors import ConfigError, KernelError
from nsbox.runtime.cgroups import UNIFIED
from nsbox.runtime.cgroups import devices_bpf as dev
from nsbox.runtime.cgroups import resources as res

DENY_ALL = {"allow": False, "access": "rwm"}
ALLOW_ALL = {"allow": True, "access": "rwm"}


def char(major: int | None, minor: int | None, access: str, allow: bool = True) -> dict:
    return {"allow": allow, "type": "c", "major": major, "minor": minor, "access": access}


def device_flag_rules(major: int, minor: int, access: str) -> list[dict]:
    """The rules the runtime hands the BPF program for `nsbox run --device HOST:CTR:ACCESS`:
    the engine's deny-all and allow rule, then the runtime's defaults (from the real plan)."""
    plan = res.plan({"devices": [DENY_ALL, char(major, minor, access)]},
                    res.Layout({UNIFIED: "/sys/fs/cgroup/nsbox-not-used"}))
    assert plan.bpf_devices is not None and plan.writes == []
    return plan.bpf_devices


# ------------------------------------------------------------- interpreter
def run_program(program: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    """Execute the subset of eBPF program_for emits, like the kernel would."""
    mask = (1 << 64) - 1
    ctx = ((access << 16) | dev_type, major, minor)
    regs = [0] * 11
    insns = dev.instructions(program)
    pc = 0
    for _steps in range(len(insns) + 1):  # forward jumps only: each insn runs at most once
        code, dst, src, off, imm = insns[pc]
        pc += 1
        simm = imm & mask  # the kernel sign-extends imm to 64 bits
        if code == dev.LDX_W:
            assert src == 1 and off in (0, 4, 8), "only aligned u32 context loads are valid"
            regs[dst] = ctx[off // 4]
        elif code == dev.MOV64_X:
            regs[dst] = regs[src]
        elif code == dev.MOV64_K:
            regs[dst] = simm
        elif code == dev.AND64_K:
            regs[dst] &= simm
        elif code == dev.RSH64_K:
            regs[dst] >>= imm
        elif code == dev.JA:
            pc += off
        elif code == dev.JEQ_K:
            pc += off if regs[dst] == simm else 0
        elif code == dev.JSET_K:
            pc += off if regs[dst] & simm else 0
        elif code == dev.JNE32_K:
            pc += off if (regs[dst] & 0xFFFFFFFF) != (imm & 0xFFFFFFFF) else 0
        elif code == dev.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not exit")


def reference_decision(rules: list[dict], default_allow: bool, dev_type: str, major: int,
                       minor: int, access: str) -> bool:
    """OCI semantics read per access bit: the last rule matching the device and naming the bit decides."""
    for bit in access:
        decided = None
        for rule in reversed(rules):
            rtype = rule.get("type") or "a"
            if rtype not in ("a", dev_type):
                continue
            if rule.get("major") not in (None, -1, major) or rule.get("minor") not in (None, -1, minor):
                continue
            if bit in (rule.get("access") or "rwm"):
                decided = rule["allow"]
                break
        if decided is None:
            decided = default_allow
        if not decided:
            return False
    return True


def check_cfg(program: bytes) -> None:
    """The static checks the verifier's CFG pass makes: forward in-range jumps, all reachable."""
    insns = dev.instructions(program)
    reachable = {0}
    for pc, (code, _dst, _src, off, _imm) in enumerate(insns):
        if pc not in reachable:
            raise AssertionError(f"instruction {pc} is unreachable")
        if code == dev.EXIT:
            continue
        if code & 0x07 in (0x05, 0x06):  # JMP / JMP32
            assert off >= 0, "backward jump"
            assert pc + 1 + off < len(insns), "jump out of the program"
            reachable.add(pc + 1 + off)
            if code == dev.JA:
                continue
        assert pc + 1 < len(insns), "falls off the end"
        reachable.add(pc + 1)
    assert insns[-1][0] in (dev.EXIT, dev.JA)


TYPES = {"c": dev.DEV_CHAR, "b": dev.DEV_BLOCK}
ACCESS_BITS = {"r": dev.ACC_READ, "w": dev.ACC_WRITE, "m": dev.ACC_MKNOD}
REQUESTS = ["r", "w", "m", "rw", "rm", "wm", "rwm"]


def decision(program: bytes, dev_type: str, major: int, minor: int, access: str) -> bool:
    bits = sum(ACCESS_BITS[ch] for ch in access)
    result = run_program(program, TYPES[dev_type], major, minor, bits)
    assert result in (0, 1)
    return result == 1


def random_rules(rng: random.Random) -> list[dict]:
    rules = []
    for _ in range(rng.randint(0, 7)):
        rule: dict = {"allow": rng.random() < 0.5}
        if rng.random() < 0.8:
            rule["type"] = rng.choice("abc")
        rule["major"] = rng.choice([None, -1, 1, 2])
        rule["minor"] = rng.choice([None, -1, 3, 5])
        rule["access"] = rng.choice(["r", "w", "m", "rw", "rwm", "wm", "mr", ""])
        rules.append(rule)
    return rules


# ------------------------------------------------------------- unit tests
def test_instruction_stream_shape() -> None:
    rules = [DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")]
    insns = dev.instructions(dev.program_for(rules))
    # 6 prologue + (3 compares + AND + JEQ) for 1:5 r + (3 compares + JA) for 1:3 + 2 exit blocks
    assert len(insns) == 6 + 5 + 4 + 2 * 2
    assert insns[0] == (dev.LDX_W, dev.R_TYPE, 1, 0, 0)
    exits = [pc for pc, insn in enumerate(insns) if insn[0] == dev.EXIT]
    assert len(exits) == 2
    # each EXIT is preceded by R0 = constant 0 or 1
    assert sorted(insns[pc - 1][4] for pc in exits) == [0, 1]
    assert all(insns[pc - 1][:2] == (dev.MOV64_K, dev.R0) for pc in exits)
    # default deny: the fall-through exit right after the rules returns 0
    assert insns[exits[0] - 1][4] == 0
    check_cfg(dev.program_for(rules))


def test_only_the_exit_blocks_used_are_emitted() -> None:
    for rules, default in (([], False), ([DENY_ALL], False), ([ALLOW_ALL], True)):
        insns = dev.instructions(dev.program_for(rules))
        assert len(insns) == 6 + 2
        assert insns[-2] == (dev.MOV64_K, dev.R0, 0, 0, int(default))
    insns = dev.instructions(dev.program_for([DENY_ALL, char(1, 3, "r", allow=False)]))
    assert [i[4] for i in insns if i[0] == dev.MOV64_K] == [0]


def test_catch_all_hides_earlier_rules() -> None:
    rules = [char(1, 3, "rwm"), char(1, 5, "r"), ALLOW_ALL, char(1, 7, "rwm", allow=False)]
    assert dev.describe(rules) == "default allow; deny c 1:7 rwm"
    assert dev.program_for(rules) == dev.program_for([ALLOW_ALL, char(1, 7, "rwm", allow=False)])
    # default_allow only matters without a catch-all
    assert dev.program_for([DENY_ALL], default_allow=True) == dev.program_for([])
    assert dev.describe([], default_allow=True) == "default allow"


def test_describe() -> None:
    rules = [DENY_ALL, char(1, 3, "rwm"), {"allow": True, "type": "b", "major": 8, "access": "mr"}]
    assert dev.describe(rules) == "default deny; allow c 1:3 rwm; allow b 8:* rm"


@pytest.mark.parametrize("rules,request_,expected", [
    ([DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")], ("c", 1, 3, "rw"), True),
    ([DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")], ("c", 1, 5, "r"), True),
    ([DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")], ("c", 1, 5, "rw"), False),
    ([DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")], ("b", 1, 3, "r"), False),
    ([ALLOW_ALL, char(1, 7, "rwm", allow=False)], ("c", 1, 7, "r"), False),
    ([ALLOW_ALL, char(1, 7, "rwm", allow=False)], ("c", 1, 8, "rwm"), True),
    ([ALLOW_ALL, char(1, 3, "w", allow=False)], ("c", 1, 3, "rw"), False),
    ([ALLOW_ALL, char(1, 3, "w", allow=False)], ("c", 1, 3, "r"), True),
    ([DENY_ALL, char(1, 5, "r"), char(1, 5, "w")], ("c", 1, 5, "rw"), True),
    ([DENY_ALL, char(None, None, "m")], ("c", 250, 9, "m"), True),
    ([DENY_ALL, char(1, None, "rw")], ("c", 1, 99, "rw"), True),
    ([DENY_ALL, char(1, None, "rw")], ("c", 2, 99, "rw"), False),
    ([DENY_ALL, {"allow": True, "major": 7, "access": "r"}], ("b", 7, 0, "r"), True),
    ([DENY_ALL, char(0xFFFFFFFF, 0x80000000, "r")], ("c", 0xFFFFFFFF, 0x80000000, "r"), True),
    ([DENY_ALL, char(0xFFFFFFFF, 0x80000000, "r")], ("c", 0x7FFFFFFF, 0x80000000, "r"), False),
])
def test_decisions(rules: list[dict], request_: tuple, expected: bool) -> None:
    assert decision(dev.program_for(rules), *request_) is expected
    assert reference_decision(rules, False, *request_) is expected


# A --device rule grants exactly its letters.  mknod of any node stays allowed by the
# runtime's default "c *:* m" (runc's too); whether it is refused is CAP_MKNOD's call.
@pytest.mark.parametrize("access,allowed", [
    ("r", {"r", "m", "rm"}),
    ("w", {"w", "m", "wm"}),
    ("m", {"m"}),
    ("rw", set(REQUESTS)),
    ("rwm", set(REQUESTS)),
])
def test_device_flag_access_is_honoured_exactly(access: str, allowed: set[str]) -> None:
    rules = device_flag_rules(10, 229, access)
    assert [r for r in rules if r.get("major") == 10] == [char(10, 229, access)]  # no added rwm
    program = dev.program_for(rules)
    check_cfg(program)
    for request_ in REQUESTS:
        want = request_ in allowed
        assert decision(program, "c", 10, 229, request_) is want, request_
        assert reference_decision(rules, False, "c", 10, 229, request_) is want, request_
    # The neighbouring device and the block device of the same numbers get nothing but mknod.
    assert not decision(program, "c", 10, 230, "r") and decision(program, "c", 10, 230, "m")
    assert not decision(program, "b", 10, 229, "r")


def test_device_rule_without_m_refuses_mknod_without_the_default() -> None:
    """The m bit is its own: a rule of "rw" alone does not let mknod through."""
    program = dev.program_for([DENY_ALL, char(10, 229, "rw")])
    assert decision(program, "c", 10, 229, "rw") and not decision(program, "c", 10, 229, "m")
    program = dev.program_for([DENY_ALL, char(10, 229, "m")])
    assert decision(program, "c", 10, 229, "m") and not decision(program, "c", 10, 229, "r")


def test_random_rule_sets_match_the_reference() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        rules = random_rules(rng)
        default_allow = rng.random() < 0.3
        program = dev.program_for(rules, default_allow)
        check_cfg(program)
        for dev_type in "cb":
            for major in (1, 2, 3):
                for minor in (3, 5, 6):
                    for access in REQUESTS:
                        want = reference_decision(rules, default_allow, dev_type, major, minor,
                                                  access)
                        got = decision(program, dev_type, major, minor, access)
                        assert got is want, (rules, default_allow, dev_type, major, minor, access)


@pytest.mark.parametrize("bad", [
    [{"type": "c"}],
    [{"allow": "yes"}],
    [{"allow": True, "type": "p"}],
    [{"allow": True, "access": "rx"}],
    [{"allow": True, "major": "1"}],
    [{"allow": True, "minor": -2}],
    [{"allow": True, "minor": 1 << 32}],
    [{"allow": True, "major": True}],
    ["c 1:3 rwm"],
])
def test_bad_rules_are_config_errors(bad: list) -> None:
    with pytest.raises(ConfigError):
        dev.program_for(bad)


def test_missing_fields_mean_everything() -> None:
    (rule,) = dev.normalize([{"allow": True}])
    assert (rule.type, rule.major, rule.minor, rule.access) == ("a", None, None, dev.ACC_ALL)
    (rule,) = dev.normalize([{"allow": False, "type": "u", "major": -1, "minor": 4, "access": ""}])
    assert (rule.type, rule.major, rule.minor, rule.access) == ("c", None, 4, dev.ACC_ALL)


# ------------------------------------------------------------- kernel: load
def test_the_verifier_accepts_every_shape() -> None:
    rng = random.Random(99)
    programs = {dev.program_for(random_rules(rng), rng.random() < 0.3) for _ in range(150)}
    programs.add(dev.program_for([DENY_ALL] + [char(1, n, "rwm") for n in range(500)]))
    for program in programs:
        os.close(dev.load(program))


def test_verifier_rejection_carries_the_log() -> None:
    no_r0 = bytes([dev.EXIT, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(KernelError) as info:
        dev.load(no_r0)
    assert "R0 !read_ok" in str(info.value)
    assert info.value.errno in (errno.EACCES, errno.EINVAL)
    returns_2 = dev.program_for([])[:-16] + bytes([dev.MOV64_K, 0, 0, 0, 2, 0, 0, 0,
                                                   dev.EXIT, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(KernelError, match="R0"):
        dev.load(returns_2)
    with pytest.raises(ValueError):
        dev.load(b"\x95\x00")


# ------------------------------------------------------------- kernel: enforcement
def cgroup2_mountpoint() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    return None


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A fresh cgroup2 directory below our own; removed (programs and all) afterwards."""
    mountpoint = cgroup2_mountpoint()
    if mountpoint is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::"))
    path = os.path.join(mountpoint + own.rstrip("/"), f"nsbox-devtest-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        dev.detach_all(path)
        os.rmdir(path)


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, str]:
    """Device nodes made outside the test cgroup, some for devices that do not exist:

    opening those fails with ENXIO when the cgroup allows it and EPERM when not.
    """
    made = {}
    for name, kind, major, minor in (("null", stat.S_IFCHR, 1, 3), ("zero", stat.S_IFCHR, 1, 5),
                                     ("full", stat.S_IFCHR, 1, 7), ("c240_1", stat.S_IFCHR, 240, 1),
                                     ("b240_1", stat.S_IFBLK, 240, 1)):
        path = str(tmp_path / name)
        os.mknod(path, kind | 0o666, os.makedev(major, minor))
        made[name] = path
    made["mknod_dir"] = str(tmp_path / "made-in-child")
    os.mkdir(made["mknod_dir"])
    return made


def probe(cgroup_dir: str, ops: list[tuple]) -> list[str]:
    """Run OPS in a child forked into CGROUP_DIR; each result is "ok" or an errno name.

    ops: ("open", path, flags) or ("mknod", path, "c"|"b", major, minor).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: always leaves through os._exit
        status = 1
        try:
            os.close(read_end)
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            results = []
            for op in ops:
                try:
                    if op[0] == "open":
                        os.close(os.open(op[1], op[2]))
                    else:
                        kind = stat.S_IFCHR if op[2] == "c" else stat.S_IFBLK
                        os.mknod(op[1], kind | 0o600, os.makedev(op[3], op[4]))
                        os.unlink(op[1])
                    results.append("ok")
                except OSError as exc:
                    results.append(errno.errorcode.get(exc.errno, str(exc.errno)))
            os.write(write_end, " ".join(results).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            output = reader.read().decode()
        _, wait_status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:  # something went wrong before the child was reaped
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, "probe child failed"
    return output.split()


R, W, RW = os.O_RDONLY, os.O_WRONLY, os.O_RDWR


def test_whitelist_enforced(cgroup: str, nodes: dict[str, str]) -> None:
    prog_id = dev.attach(cgroup, dev.program_for([DENY_ALL, char(1, 3, "rwm"), char(1, 5, "r")]))
    assert dev.query(cgroup) == [prog_id]
    result = probe(cgroup, [("open", "/dev/null", RW), ("open", "/dev/zero", R),
                            ("open", "/dev/zero", W), ("open", "/dev/full", R),
                            ("open", nodes["null"], RW), ("open", nodes["b240_1"], R)])
    assert result == ["ok", "ok", "EPERM", "EPERM", "ok", "EPERM"]


def test_mknod_needs_m(cgroup: str, nodes: dict[str, str]) -> None:
    target = os.path.join(nodes["mknod_dir"], "null")
    dev.attach(cgroup, dev.program_for([DENY_ALL, char(1, 3, "rw")]))
    assert probe(cgroup, [("mknod", target, "c", 1, 3), ("open", "/dev/null", RW)]) == ["EPERM", "ok"]
    dev.replace(cgroup, dev.program_for([DENY_ALL, char(1, 3, "rwm")]))
    assert probe(cgroup, [("mknod", target, "c", 1, 3)]) == ["ok"]
    assert not os.path.exists(target)


@pytest.mark.parametrize("access,expected", [
    ("r", ["ENXIO", "EPERM", "EPERM", "ok"]),
    ("w", ["EPERM", "ENXIO", "EPERM", "ok"]),
    ("rw", ["ENXIO", "ENXIO", "ENXIO", "ok"]),
    ("m", ["EPERM", "EPERM", "EPERM", "ok"]),
])
def test_device_flag_rules_on_the_kernel(cgroup: str, nodes: dict[str, str], access: str,
                                         expected: list[str]) -> None:
    """What the runtime attaches for `--device ...:ACCESS` on c 240:1 (no driver: an
    allowed open fails with ENXIO, a refused one with EPERM)."""
    dev.attach(cgroup, dev.program_for(device_flag_rules(240, 1, access)))
    target = os.path.join(nodes["mknod_dir"], "c240_1")
    result = probe(cgroup, [("open", nodes["c240_1"], R), ("open", nodes["c240_1"], W),
                            ("open", nodes["c240_1"], RW), ("mknod", target, "c", 240, 1)])
    assert result == expected
    assert probe(cgroup, [("open", nodes["b240_1"], R), ("open", "/dev/null", RW)]) == [
        "EPERM", "ok"]


def test_wildcards(cgroup: str, nodes: dict[str, str]) -> None:
    dev.attach(cgroup, dev.program_for([DENY_ALL, {"allow": True, "access": "r"},
                                        {"allow": True, "type": "a", "major": None, "minor": None,
                                         "access": "m"},
                                        char(1, None, "w")]))
    mknod_target = os.path.join(nodes["mknod_dir"], "any")
    result = probe(cgroup, [("open", "/dev/full", R), ("open", "/dev/full", W),
                            ("open", nodes["c240_1"], R), ("open", nodes["c240_1"], W),
                            ("open", nodes["b240_1"], R), ("mknod", mknod_target, "b", 240, 7)])
    assert result == ["ok", "ok", "ENXIO", "EPERM", "ENXIO", "ok"]


def test_last_rule_wins(cgroup: str, nodes: dict[str, str]) -> None:
    dev.attach(cgroup, dev.program_for([ALLOW_ALL, char(1, 7, "rwm", allow=False)]))
    result = probe(cgroup, [("open", "/dev/full", R), ("open", "/dev/null", RW),
                            ("open", "/dev/zero", RW), ("open", nodes["c240_1"], R)])
    assert result == ["EPERM", "ok", "ok", "ENXIO"]
    dev.replace(cgroup, dev.program_for([char(1, 7, "rwm", allow=False), ALLOW_ALL]))
    assert probe(cgroup, [("open", "/dev/full", R)]) == ["ok"]


def test_deny_of_one_bit_blocks_read_write(cgroup: str) -> None:
    dev.attach(cgroup, dev.program_for([ALLOW_ALL, char(1, 3, "w", allow=False)]))
    result = probe(cgroup, [("open", "/dev/null", R), ("open", "/dev/null", RW),
                            ("open", "/dev/null", W)])
    assert result == ["ok", "EPERM", "EPERM"]


def test_detach_all_restores_access(cgroup: str) -> None:
    dev.attach(cgroup, dev.program_for([DENY_ALL]))
    assert probe(cgroup, [("open", "/dev/null", R)]) == ["EPERM"]
    dev.detach_all(cgroup)
    assert dev.query(cgroup) == []
    assert probe(cgroup, [("open", "/dev/null", R)]) == ["ok"]
    dev.detach_all(cgroup)  # nothing attached: a no-op


def test_replace_swaps_programs_and_multi_programs_all_apply(cgroup: str) -> None:
    first = dev.attach(cgroup, dev.program_for([ALLOW_ALL, char(1, 7, "rwm", allow=False)]))
    second = dev.attach(cgroup, dev.program_for([ALLOW_ALL, char(1, 3, "rwm", allow=False)]))
    assert sorted(dev.query(cgroup)) == sorted([first, second])
    assert probe(cgroup, [("open", "/dev/full", R), ("open", "/dev/null", R),
                          ("open", "/dev/zero", R)]) == ["EPERM", "EPERM", "ok"]
    new = dev.replace(cgroup, dev.program_for([DENY_ALL, char(1, 7, "r")]))
    assert dev.query(cgroup) == [new]
    assert new not in (first, second)
    assert probe(cgroup, [("open", "/dev/full", R), ("open", "/dev/null", R)]) == ["ok", "EPERM"]


def test_errors_name_the_cgroup(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="nope"):
        dev.query(str(tmp_path / "nope"))
    with pytest.raises(KernelError) as info:  # a plain directory is no cgroup
        dev.attach(str(tmp_path), dev.program_for([]))
    assert str(tmp_path) in str(info.value)
