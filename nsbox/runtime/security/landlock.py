"""Landlock rulesets for the container's process (annotation org.nsbox.landlock).

Landlock (Linux >= 5.13) lets an unprivileged process restrict its own file
access: a ruleset names the rights it handles and grants them below chosen
files and directories; after landlock_restrict_self every handled right not
granted fails with EACCES, for the process and everything it starts.  It
works on hosts without AppArmor or SELinux, and needs no daemon.

The engine (nsbox/engine/guard) writes the plan into the OCI annotation
as JSON; the runtime builds the ruleset before the identity change (so it
can open every path of the plan) and enforces it right after no_new_privs,
before the seccomp filter, in `create` and in `exec` alike:

    {"handled": ["execute", "read_file", ...],
     "grant": [["/bin/busybox", ["execute"]], ...],
     "except": [{"rights": ["read_file"], "paths": ["/etc/shadow"], "dirs": ["/srv"]}]}

`grant` gives rights below single paths; each `except` group gives its
rights everywhere but at its paths and below its dirs (grant_all_but).

Paths are the container's; a path that does not exist is skipped (what is
not granted stays refused).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os

from nsbox.errors import SecurityError
from nsbox.runtime import syscalls as sc

ANNOTATION = "org.nsbox.landlock"
# Each annotation whose key starts with ANNOTATION is one ruleset (the guard's, and
# --security-opt landlock='s ".opt"); they stack: every one must allow.

SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2
NET_RIGHTS = {"bind_tcp": 1 << 0, "connect_tcp": 1 << 1}  # ABI 4

RIGHTS = {"execute": 1 << 0, "write_file": 1 << 1, "read_file": 1 << 2, "read_dir": 1 << 3,
          "remove_dir": 1 << 4, "remove_file": 1 << 5, "make_char": 1 << 6,
          "make_dir": 1 << 7, "make_reg": 1 << 8, "make_sock": 1 << 9, "make_fifo": 1 << 10,
          "make_block": 1 << 11, "make_sym": 1 << 12, "refer": 1 << 13, "truncate": 1 << 14}
# The rights a rule on a file (not a directory) may carry.
FILE_RIGHTS = RIGHTS["execute"] | RIGHTS["write_file"] | RIGHTS["read_file"] | RIGHTS["truncate"]
# Which ABI brought a right (truncate: ABI 3, refer: ABI 2).
MIN_ABI = {"refer": 2, "truncate": 3}


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    try:
        return sc.syscall(SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0


def mask(names: list[str], version: int) -> int:
    out = 0
    for name in names:
        if name not in RIGHTS:
            raise SecurityError(f"landlock: unknown access right {name!r}")
        if MIN_ABI.get(name, 1) <= version:
            out |= RIGHTS[name]
    return out


class Ruleset:
    """A ruleset fd being filled; enforce() applies it to this process."""

    def __init__(self, plan: dict) -> None:
        self.version = abi()
        if self.version < 1:
            raise SecurityError("landlock: this kernel has no Landlock (or it is disabled): "
                                "the container's Landlock rules cannot be enforced")
        self.handled = mask(plan.get("handled", []), self.version)
        net = 0
        for name in plan.get("handled_net", []):
            net |= NET_RIGHTS[name]
        if net and self.version < 4:
            raise SecurityError(f"landlock: TCP rules need Landlock ABI 4 (this kernel has "
                                f"{self.version})")
        attr = (ctypes.c_uint64 * 2)(self.handled, net)
        try:
            self.fd = sc.syscall(SYS_landlock_create_ruleset, ctypes.addressof(attr),
                                 16 if net else 8, 0)
        except OSError as exc:
            raise SecurityError(f"landlock: cannot create a ruleset: {exc.strerror}") from None
        try:
            for path, rights in plan.get("grant", []):
                self.grant(path, mask(rights, self.version))
            for port, rights in plan.get("ports", []):
                allowed = 0
                for name in rights:
                    allowed |= NET_RIGHTS[name]
                attr_port = _NetPort(allowed, port)
                try:
                    sc.syscall(SYS_landlock_add_rule, self.fd, LANDLOCK_RULE_NET_PORT,
                               ctypes.addressof(attr_port), 0)
                except OSError as exc:
                    raise SecurityError(f"landlock: rule for port {port}: {exc.strerror}") \
                        from None
            for group in plan.get("except", []):
                self.grant_all_but(mask(group["rights"], self.version), group.get("paths", []),
                                   group.get("dirs", []))
        except BaseException:
            os.close(self.fd)
            raise

    def grant(self, path: str, rights: int) -> None:
        rights &= self.handled
        if not rights:
            return
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SecurityError(f"landlock: cannot open {path}: {exc.strerror}") from None
        try:
            if not os.path.isdir(f"/proc/self/fd/{fd}"):
                rights &= FILE_RIGHTS
            if not rights:
                return
            attr = _PathBeneath(rights, fd)
            try:
                sc.syscall(SYS_landlock_add_rule, self.fd, LANDLOCK_RULE_PATH_BENEATH,
                           ctypes.addressof(attr), 0)
            except OSError as exc:
                raise SecurityError(f"landlock: rule for {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def grant_all_but(self, rights: int, paths: list[str], dirs: list[str]) -> None:
        """RIGHTS on the whole tree except PATHS (files) and DIRS (with what is below them).

        Landlock only grants, and a grant on a directory covers all below
        it, so the tree is carved: a directory holding nothing denied is
        granted whole; one holding a denied path is entered, and each of its
        entries but the denied one granted.  Symbolic links are skipped (their
        targets are reached by their own paths), and the denied paths are
        resolved first, so a link cannot make a way around them.
        """
        exact = {os.path.realpath(p) for p in paths}
        below = {os.path.realpath(d) for d in dirs}
        denied = exact | below

        def carve(directory: str) -> None:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                return  # unreadable: nothing granted there
            for name in names:
                path = os.path.join(directory, name)
                if path in denied or any(path.startswith(d + "/") for d in below):
                    continue
                if os.path.islink(path):
                    continue
                if any(d.startswith(path + "/") for d in denied):
                    if os.path.isdir(path):
                        carve(path)
                    continue
                self.grant(path, rights)

        carve("/")

    def enforce(self) -> None:
        """Restrict this process (no_new_privs is set first: Landlock requires it)."""
        try:
            sc.set_no_new_privs()
            sc.syscall(SYS_landlock_restrict_self, self.fd, 0)
        except OSError as exc:
            what = "Landlock is disabled" if exc.errno == errno.EOPNOTSUPP else exc.strerror
            raise SecurityError(f"landlock: cannot restrict the process: {what}") from None
        finally:
            os.close(self.fd)


class Rulesets:
    """Several rulesets enforced one after the other (Landlock stacks them)."""

    def __init__(self, rulesets: list[Ruleset]) -> None:
        self.rulesets = rulesets

    def enforce(self) -> None:
        for ruleset in self.rulesets:
            ruleset.enforce()


def prepare(annotations: dict[str, str]) -> Rulesets | None:
    """The rulesets of the annotations, built now (as root, before the identity change)."""
    out: list[Ruleset] = []
    try:
        for key in sorted(k for k in annotations if k.startswith(ANNOTATION)):
            try:
                plan = json.loads(annotations[key])
            except ValueError:
                raise SecurityError(f"annotation {key}: not valid JSON") from None
            out.append(Ruleset(plan))
    except BaseException:
        for ruleset in out:
            os.close(ruleset.fd)
        raise
    return Rulesets(out) if out else None
