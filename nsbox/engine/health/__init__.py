"""Container healthchecks (docs/observability.md, "healthchecks").

config.py  the --health-* flags, Go durations, the image's Healthcheck merged with them
state.py   the status and last results of a container (<bundle>/health.json, atomic)
probe.py   one check: the runtime's `exec` with a timeout that kills the whole tree
recover.py the runner's lock, and a runner started again by the next command if it died
           (below the lifecycle modules: lifecycle/state.py calls it)
runner.py  the per-container runner the monitor forks (only for a container with a
           check), and `healthcheck run`

Nothing here is imported for a container without a healthcheck.
"""
