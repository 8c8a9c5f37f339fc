"""What the engine and a container's monitor (monitor.py) agree on, below both.

The starter (lifecycle/start.py) forks or spawns the monitor; the monitor
runs the engine's helpers (lifecycle/monitor_helpers.py) in short-lived
children.  Neither side imports the other's module for these: the monitor
must stay small, and the engine must not depend on the monitor's daemon
code.  The messages themselves are listed in docs/engine.md ("The monitor
hand-over").  Imported by the idle monitor: keep it to constants.
"""

# A helper's exit status that means "restart the container" (monitor_finish).
RESTART = 3


def monitor_name(cid: str) -> str:
    """The process name (15 characters at most) of CID's monitor while it runs Python.

    A forked monitor shows its starter's command line, not CID: this name in
    /proc/PID/comm is how the engine tells it from a recycled pid.
    """
    return "nsbmon-" + cid[:8]
