"""The systemd cgroup driver: a container's cgroup as a transient scope unit.

With `--systemd-cgroup` (or `--cgroup-manager systemd`, or a cgroupsPath in
the form `slice:prefix:name`), the container's cgroup is a transient scope
`<prefix>-<name>.scope` in `<slice>` that systemd creates when asked over
D-Bus (`org.freedesktop.systemd1.Manager.StartTransientUnit`), as runc, crun,
Docker and Podman do; the scope is started with `Delegate=yes`, so its
cgroup's files are ours to write (limits are written through cgroupfs as
with the cgroupfs driver).  Only on pure cgroup v2 hosts.

What is refused, and why:

- systemd not running as init (no `/run/systemd/system`, as on this
  development host and in the v2 lane): a clear error, nothing created;
- a v1 or hybrid host: the driver is implemented for cgroup v2 only;
- the Python package `jeepney` missing (the D-Bus client; `pip install
  'nsbox[systemd]'`).  It is imported only here, when the driver is used.

A scope needs a process to exist: `start` forks a placeholder process of
its own (double-forked, so nothing is left to reap), asks systemd to start
the scope with it (PIDs=[placeholder]), waits until it is in the scope's
cgroup, and returns; the placeholder exits by itself as soon as another
process (stage 1, born there by clone3) is in the cgroup, or after 60 s.  So no process nsbox did not start is ever moved.  When the
container's last process exits, systemd stops the scope and removes its
cgroup.  This path cannot be exercised without systemd as PID 1 (neither
here nor in the qemu lane); `tests/test_cgroups_units.py` checks the parsing,
the slice paths and the D-Bus message nsbox would send.
"""

from __future__ import annotations

import os
import time

from nsbox.errors import ConfigError, KernelError, UnsupportedError

SYSTEMD_RUN_DIR = "/run/systemd/system"
DEFAULT_SLICE = "system.slice"
DEFAULT_PREFIX = "nsbox"


def running() -> bool:
    """Whether systemd runs as init (what sd_booted(3) checks)."""
    return os.path.isdir(SYSTEMD_RUN_DIR)


def is_systemd_path(cgroups_path: str) -> bool:
    """A `slice:prefix:name` cgroupsPath (runc's systemd form)."""
    return cgroups_path.count(":") == 2 and not cgroups_path.startswith("/")


def parse(cgroups_path: str, container_id: str) -> tuple[str, str]:
    """(slice, unit) of a systemd cgroupsPath; empty parts get runc-like defaults."""
    if cgroups_path and not is_systemd_path(cgroups_path):
        raise ConfigError(f"config.json: linux.cgroupsPath {cgroups_path!r}: the systemd cgroup "
                          "driver expects slice:prefix:name (e.g. machine.slice:nsbox:ID)")
    slice_name, prefix, name = (cgroups_path.split(":") if cgroups_path else ("", "", ""))
    slice_name = slice_name or DEFAULT_SLICE
    name = name or container_id
    if not cgroups_path:
        prefix = DEFAULT_PREFIX
    if name.endswith(".slice"):
        raise UnsupportedError(f"linux.cgroupsPath {cgroups_path!r}: nsbox puts containers in "
                               "scopes; a slice as the container's unit is not supported")
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    for part, what in ((slice_name, "slice"), (unit, "unit")):
        if "/" in part or part.startswith(".") or not part.isprintable():
            raise ConfigError(f"config.json: linux.cgroupsPath {cgroups_path!r}: bad {what} "
                              f"name {part!r}")
    expand_slice(slice_name)  # validates
    return slice_name, unit


def expand_slice(slice_name: str) -> str:
    """The cgroup path of a slice: a-b.slice -> /a.slice/a-b.slice; -.slice -> /."""
    if not slice_name.endswith(".slice"):
        raise ConfigError(f"systemd slice {slice_name!r}: a slice name ends with .slice")
    if slice_name == "-.slice":
        return "/"
    stem = slice_name[:-len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem or "/" in stem:
        raise ConfigError(f"systemd slice {slice_name!r}: not a valid slice name")
    parts = stem.split("-")
    return "/" + "/".join("-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def check_usable() -> None:
    """Refuse early, before anything exists, when the driver cannot work here."""
    if not running():
        raise UnsupportedError(
            f"systemd is not running (no {SYSTEMD_RUN_DIR}): the systemd cgroup driver "
            "(--systemd-cgroup, --cgroup-manager systemd, or a slice:prefix:name cgroupsPath) "
            "needs it; use the cgroupfs driver (an absolute or relative cgroupsPath)")
    from nsbox.runtime.cgroups.host import mode

    if mode() != "v2":
        raise UnsupportedError(f"the systemd cgroup driver is implemented for cgroup v2 hosts "
                               f"only; this host is {mode()}: use the cgroupfs driver")
    import importlib.util

    if importlib.util.find_spec("jeepney") is None:
        raise UnsupportedError("the systemd cgroup driver needs the Python package jeepney "
                               "(the D-Bus client): pip install 'nsbox[systemd]'")


def start_message(unit: str, slice_name: str, pid: int, description: str):  # noqa: ANN201
    """The StartTransientUnit call (a jeepney Message)."""
    from jeepney import DBusAddress, new_method_call

    manager = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                          interface="org.freedesktop.systemd1.Manager")
    properties = [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_name)),
        ("Delegate", ("b", True)),
        ("PIDs", ("au", [pid])),
        ("DefaultDependencies", ("b", False)),
        ("MemoryAccounting", ("b", True)),
        ("CPUAccounting", ("b", True)),
        ("IOAccounting", ("b", True)),
        ("TasksAccounting", ("b", True)),
    ]
    return new_method_call(manager, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                           (unit, "replace", properties, []))


def _placeholder(path: str) -> int:
    """A process of ours (not our child: double-forked) that waits in PATH until another joins.

    It exits once PATH's cgroup.procs lists another process, or after 60 s.
    """
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid:
                os.write(w, str(pid).encode())
            else:
                os.close(w)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(_procs(path)) < 2:
                    time.sleep(0.005)
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 32)
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if not data:
        raise KernelError("systemd cgroup driver: could not start the scope's first process")
    return int(data)


def start(path: str, slice_name: str, unit: str, description: str, timeout: float = 10.0) -> None:
    """Have systemd create the scope UNIT in SLICE, whose cgroup will be PATH."""
    from jeepney import DBusErrorResponse
    from jeepney.io.blocking import open_dbus_connection

    try:
        conn = open_dbus_connection(bus="SYSTEM")
    except (OSError, KeyError, RuntimeError) as exc:
        raise UnsupportedError(f"systemd cgroup driver: cannot reach the D-Bus system bus: "
                               f"{exc}") from None
    child = _placeholder(path)
    try:
        with conn:
            reply = conn.send_and_get_reply(start_message(unit, slice_name, child, description),
                                            timeout=timeout)
            from jeepney.wrappers import unwrap_msg

            unwrap_msg(reply)
        deadline = time.monotonic() + timeout
        while not os.path.isdir(path) or str(child) not in _procs(path):
            if time.monotonic() > deadline:
                raise KernelError(f"systemd did not start {unit} (no {path} with pid {child})")
            time.sleep(0.005)
    except DBusErrorResponse as exc:
        _kill(child)
        raise KernelError(f"systemd refused to start {unit} in {slice_name}: {exc}") from None
    except BaseException:
        _kill(child)
        raise


def _procs(path: str) -> list[str]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return f.read().split()
    except OSError:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
