"""Usage:  nsbox info [OPTIONS]

Display system-wide information: cgroup mode, namespaces, runtime, monitor, storage.
"""

from __future__ import annotations

import sys

from nsbox.errors import NsboxError

FLAGS = {"format": "str"}
ALIASES = {"f": "format"}
HELP = {
    "format": ("string", "Format output using a Go template, or json"),
}

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def cgroup_mode() -> str:
    """"v2" (unified), "hybrid" (v1 controllers + cgroup2) or "v1"."""
    import os

    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "hybrid"
    return "v1"


def monitor_report() -> dict:
    """Which loop a detached container's monitor waits in: the C loop shipped with the package
    (built from monitor_loop.c at install time) or the Python fallback, and why."""
    import os

    from nsbox.engine import monitor

    if os.environ.get("NSBOX_MONITOR_PYTHON"):
        return {"Loop": "python", "Path": "", "Reason": "NSBOX_MONITOR_PYTHON is set"}
    path = monitor.loop_binary()
    if path:
        return {"Loop": "c", "Path": path, "Reason": ""}
    expected = os.path.join(os.path.dirname(os.path.abspath(monitor.__file__)), monitor.LOOP_BINARY)
    return {"Loop": "python", "Path": "",
            "Reason": f"no compiled loop shipped: {expected} is missing or not executable"}


def monitor_line(report: dict) -> str:
    if report["Loop"] == "c":
        return f"Monitor: C loop ({report['Path']})"
    return f"Monitor: Python ({report['Reason']})"


def cgroup_driver() -> str:
    """`cgroupfs` or `systemd` (--cgroup-manager), with the default parent of containers."""
    from nsbox.engine.bundle import cgroup_manager, cgroups_path
    try:
        manager = cgroup_manager()
        where = cgroups_path("ID", "nsbox-runtime")
    except NsboxError as exc:
        return f"invalid ({exc})"
    if not where.startswith("/") and ":" not in where:
        where = f"<the caller's own cgroup>/{where}"  # v1/hybrid without a parent
    return f"{manager} (containers at {where})"


def gather(ctx) -> dict:  # noqa: ANN001
    import os
    import platform
    import shutil

    from nsbox import __version__

    info = {
        "ServerVersion": __version__,
        "Driver": "overlay",
        "DockerRootDir": ctx.root,
        "RunRoot": ctx.runroot,
        "DefaultRuntime": ctx.runtime or "nsbox-runtime",
        "RuntimePath": ctx.runtime or shutil.which("nsbox-runtime") or "nsbox-runtime",
        "Monitor": monitor_report(),
        "CgroupVersion": "2" if cgroup_mode() == "v2" else "1",
        "CgroupMode": cgroup_mode(),
        "CgroupDriver": cgroup_driver(),
        "Namespaces": [ns for ns in NAMESPACES if os.path.exists(f"/proc/self/ns/{ns}")],
        "KernelVersion": platform.release(),
        "OperatingSystem": platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
        if hasattr(platform, "freedesktop_os_release") else "Linux",
        "Architecture": platform.machine(),
        "NCPU": os.cpu_count(),
        "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    try:
        engine = ctx.engine()
        containers = engine.list(all=True)
        info.update({"Containers": len(containers),
                     "ContainersRunning": sum(c.state == "running" for c in containers),
                     "ContainersPaused": sum(c.state == "paused" for c in containers),
                     "ContainersStopped": sum(c.state not in ("running", "paused")
                                              for c in containers)})
    except ImportError:
        pass
    info["Images"] = len(ctx.images().list())
    from nsbox.engine.posture import host_report
    info["Security"] = host_report()
    from nsbox.engine import rootless
    info["Rootless"] = rootless.report()
    from nsbox.engine.guard.client import host_support
    info["Guard"] = host_support()
    return info


def guard_line(guard: dict) -> str:
    """What --security-opt guard= can do on this host (docs/guard.md)."""
    detect = "detection available" if guard["Available"] else \
        f"unavailable ({guard['Reason']})"
    landlock = (f"deny rules on file paths and drift through Landlock (ABI "
                f"{guard['LandlockABI']})" if guard["LandlockABI"] else "no Landlock")
    return (f"Guard: {detect}; kernel enforcement: {landlock}; BPF LSM: "
            f"{'yes' if guard['BpfLsm'] else 'no, ' + guard['BpfLsmReason']}")


def security_lines(sec: dict) -> list[str]:
    seccomp = sec["Seccomp"]
    userns = sec["UserNamespaces"]
    profile = sec["DefaultProfile"]
    caps = " ".join(c.removeprefix("CAP_") for c in profile["Capabilities"])
    return [
        "Security:",
        f" Seccomp: {'yes' if seccomp['Enabled'] else 'no'}"
        + (f" (libseccomp {seccomp['Libseccomp']})" if seccomp["Libseccomp"] else ""),
        f" LSMs: {', '.join(sec['LSMs']) or 'none'}"
        f" (SELinux {'enabled' if sec['SELinux'] else 'not enabled'},"
        f" AppArmor {'enabled' if sec['AppArmor'] else 'not enabled'})",
        f" User namespaces: {'yes' if userns['MaxUserNamespaces'] else 'no'}"
        f" (max {userns['MaxUserNamespaces']})",
        f" Subordinate uid ranges: {', '.join(userns['SubUIDs']) or 'none'}",
        f" Subordinate gid ranges: {', '.join(userns['SubGIDs']) or 'none'}",
        f" Default profile: {len(profile['Capabilities'])} capabilities ({caps}),"
        f" {profile['Seccomp']}, no_new_privs, pids limit {profile['PidsLimit']},"
        f" /dev/shm {profile['ShmSize']}, {len(profile['MaskedPaths'])} masked paths",
    ]


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli._format import human_size, print_formatted

    info = gather(ctx)
    if args["format"]:
        print_formatted(args["format"], [info])
        return 0
    lines = [f"Server Version: {info['ServerVersion']}", f"Storage Driver: {info['Driver']}",
             f"Root Dir: {info['DockerRootDir']}", f"Run Root: {info['RunRoot']}",
             f"Cgroup Version: {info['CgroupVersion']} ({info['CgroupMode']})",
             f"Cgroup Driver: {info['CgroupDriver']}",
             f"Namespaces: {' '.join(info['Namespaces'])}",
             f"Default Runtime: {info['DefaultRuntime']} ({info['RuntimePath']})",
             monitor_line(info["Monitor"]),
             f"Kernel Version: {info['KernelVersion']}",
             f"Operating System: {info['OperatingSystem']}",
             f"Architecture: {info['Architecture']}", f"CPUs: {info['NCPU']}",
             f"Total Memory: {human_size(info['MemTotal'])}", f"Images: {info['Images']}"]
    if "Containers" in info:
        lines.insert(0, f"Containers: {info['Containers']} (running {info['ContainersRunning']}, "
                     f"paused {info['ContainersPaused']}, stopped {info['ContainersStopped']})")
    from nsbox.engine.rootless import report_line
    lines.append(report_line(info["Rootless"]))
    lines += security_lines(info["Security"])
    lines.append(guard_line(info["Guard"]))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
