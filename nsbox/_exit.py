"""Leave a CLI process without the interpreter's teardown.

Freeing every module and object at exit costs a command-line process about
6 ms here, a third of a whole `nsbox-runtime start`.  Nothing in that
teardown matters to a process that is about to disappear, so the launchers
end with `exit_process()`: it does the parts of a normal exit that have an
effect outside the process (non-daemon threads, atexit callbacks such as
logging's flush and weakref finalizers, the standard streams) and then
calls `_exit`.  Library callers never get here: only bin/ launchers use it.
"""

from __future__ import annotations

import os
import sys


def exit_process(code: int | None) -> None:
    """Exit with `code` as `sys.exit` would, minus the interpreter teardown."""
    threading = sys.modules.get("threading")
    if threading is not None:
        main_thread = threading.main_thread()
        if any(t is not main_thread and not t.daemon and t.is_alive()
               for t in threading.enumerate()):
            sys.exit(code)  # the normal exit joins them
    import atexit

    atexit._run_exitfuncs()
    status = 0 if code is None else code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # A reader that went away (`nsbox ps | head`) or a closed stream:
            # what the interpreter would report as exit status 120.
            if status == 0:
                status = 120
    os._exit(status)
