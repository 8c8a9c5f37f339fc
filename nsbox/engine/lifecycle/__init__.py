"""A container's life in the engine, one module per stage; nsbox.engine.containers.Engine is the face.

Each module imports only the ones listed above it (and nsbox.engine's
procs.py and monitor_protocol.py, below them all):

    record.py           Container (a row of container_containers), its JSON columns, ids, names
    host.py             the runtime binary, live monitors, <run_root>/exits and stdin FIFOs
    state.py            EngineBase: the stores, get() and list() with the reconciled state
    query.py            inspect, logs, top, port, security posture, cgroups
    control.py          stop, kill, pause, unpause, update, rename
    remove.py           remove, prune
    finish.py           an exit: the record, the restart policy, --rm; wait()
    create.py           create
    monitor_helpers.py  what a monitor runs in its helper children (start, finish)
    start.py            start: the monitor fork or spawn, and the hand-over
    attached.py         start_attached, AttachedRun: an attached `run` finishing its container
    foreground.py       run -it, with no monitor
    interact.py         exec, attach, cp

The stage functions take the engine (an EngineBase) as their first argument.
"""
