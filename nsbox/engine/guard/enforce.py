"""Kernel enforcement of deny rules and drift prevention, through Landlock.

BPF LSM programs would let the guard refuse any event it sees; where the
kernel does not accept them (this is checked, `nsbox info` says why), the
file rules can still be enforced by the kernel with Landlock
(nsbox/runtime/security/landlock.py), which every kernel since 5.13 has:

- a deny rule on open/read/write/exec whose paths are exact paths or
  directories (`/dir/**`) becomes a ruleset that grants the matching rights
  everywhere except there: the runtime carves the container's tree at
  start, so the paths fail with EACCES ("Permission denied");
- guard=drift grants the right to execute only to the files that are
  executable in the image's layers (found here, at create): a file written
  or copied into the container later is a new inode and cannot be run.

Known limits (docs/guard.md): a file created after the start directly in
a directory that holds a denied path gets none of the carved rights (so
with a deny on /etc/shadow, a new /etc/x cannot be written); deny rules on
other events, or with process conditions, need BPF LSM and are refused.
"""

from __future__ import annotations

import os
import stat

from nsbox.engine.guard.rules import Rule, reduce_glob
from nsbox.errors import UnsupportedError

ANNOTATION = "org.nsbox.landlock"
RIGHTS = {"open": ["read_file", "write_file", "truncate"], "read": ["read_file"],
          "write": ["write_file", "truncate"], "exec": ["execute"]}
_PROCESS_CONDITIONS = ("procs", "exes", "argv", "addrs", "not_addrs", "ports")


def landlock_abi() -> int:
    from nsbox.runtime.security.landlock import abi
    return abi()


def check(rules: list[Rule], drift: bool, why_no_lsm: str) -> list[Rule]:
    """The deny rules, each one Landlock can enforce; UnsupportedError for any other."""
    denies = [r for r in rules if r.action == "deny"]
    if not denies and not drift:
        return []
    version = landlock_abi()
    if version < 1:
        raise UnsupportedError(f"kernel enforcement is unavailable: {why_no_lsm}, and this "
                               "kernel has no Landlock")
    for rule in denies:
        where = f"deny rule {rule.name!r}"
        bad_events = [e for e in rule.events if e not in RIGHTS]
        if bad_events:
            raise UnsupportedError(f"{where}: event {bad_events[0]} cannot be refused here "
                                   f"({why_no_lsm}; Landlock enforces open, read, write and "
                                   "exec rules only): use alert or kill")
        if any(getattr(rule, c) for c in _PROCESS_CONDITIONS) or rule.unless_entrypoint \
                or rule.setuid is not None:
            raise UnsupportedError(f"{where}: only path conditions can be enforced here "
                                   f"({why_no_lsm}; Landlock decides by path alone)")
        if not rule.paths:
            raise UnsupportedError(f"{where}: needs path: (what to refuse)")
        for glob in rule.paths:
            if _deny_path(glob) is None:
                raise UnsupportedError(f"{where}: path {glob!r}: only exact paths and "
                                       "directories (DIR/**) can be refused by Landlock")
    return denies


def _deny_path(glob: str) -> tuple[str, bool] | None:
    """(path, is_directory) of a deniable glob; None when it is another pattern."""
    reduced = reduce_glob(glob)
    if reduced is None:
        return None
    from nsbox.engine.guard import record
    kind, text = reduced
    if kind == record.K_OPEN_EXACT:
        return glob, False
    if kind == record.K_OPEN_PREFIX and glob == text.decode() + "**":
        return text.decode().rstrip("/"), True
    return None


def image_executables(lower_dirs: list[str]) -> list[str]:
    """Container paths of the files with an execute bit in the image's layers."""
    found: set[str] = set()
    for layer in lower_dirs:
        for dirpath, _dirnames, filenames in os.walk(layer):
            rel = os.path.relpath(dirpath, layer)
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                    found.add("/" + os.path.normpath(os.path.join(rel, name)))
    return sorted(found)


def plan(denies: list[Rule], drift: bool, lower_dirs: list[str]) -> dict | None:
    """The Landlock plan for the runtime (the annotation's JSON); None when nothing to do."""
    if not denies and not drift:
        return None
    handled: set[str] = set()
    groups: dict[tuple[str, ...], dict] = {}
    denied_exec: set[str] = set()
    for rule in denies:
        for event in rule.events:
            rights = tuple(RIGHTS[event])
            handled.update(rights)
            group = groups.setdefault(rights, {"rights": list(rights), "paths": [],
                                               "dirs": []})
            for glob in rule.paths:
                path, is_dir = _deny_path(glob)
                group["dirs" if is_dir else "paths"].append(path)
                if event == "exec":
                    denied_exec.add(path)
    out: dict = {"handled": sorted(handled), "except": [], "grant": []}
    if drift:
        out["handled"] = sorted(handled | {"execute"})
        groups.pop(("execute",), None)  # execute is granted file by file instead
        for path in image_executables(lower_dirs):
            if path in denied_exec or any(path.startswith(d + "/") for d in denied_exec):
                continue
            out["grant"].append([path, ["execute"]])
    out["except"] = list(groups.values())
    return out
