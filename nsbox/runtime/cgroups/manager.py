"""One interface over cgroup v1, v2 and hybrid hosts: the container's cgroup as an object.

A Manager holds the container's directory in each hierarchy (what
`cgroups.resolve` returns and state.json keeps) and decides per controller
which hierarchy enforces it: a v1 hierarchy when the host mounts one for
that controller, else cgroup2.  So the same calls work on a pure v1 host, on
a pure v2 host, and on a hybrid host such as Debian 12 here (v1 controllers
plus a cgroup2 mount holding only hugetlb).

    mgr = Manager.for_container(spec.linux.cgroups_path, container_id)
    plan = mgr.validate(spec.linux.resources)   # before anything exists
    mgr.create(); mgr.add(pid); mgr.apply_plan(plan)
    ...
    mgr = Manager.from_paths(state.cgroup_paths, state.cgroup_created)
    mgr.freeze(); mgr.stats(); mgr.destroy()
"""

from __future__ import annotations

import os

from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.errors import ConfigError, UnsupportedError
from nsbox.runtime import cgroups
from nsbox.runtime.cgroups import UNIFIED
from nsbox.runtime.cgroups import resources as res

log = get_logger(__name__)


class Manager:
    """The cgroups of one container."""

    def __init__(self, paths: dict[str, str], created: list[str] | None = None) -> None:
        self.paths = dict(paths)
        # Directories this runtime made (None: unknown, treat the leaves as ours).
        self.created = list(created) if created is not None else None
        self._layout: res.Layout | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def for_container(cls, cgroups_path: str, container_id: str, systemd: bool = False) -> Manager:
        """Resolve an OCI cgroupsPath (absolute, relative to our own cgroup, empty, or systemd)."""
        return cls(cgroups.resolve(cgroups_path, container_id, systemd=systemd))

    @classmethod
    def from_paths(cls, paths: dict[str, str], created: list[str] | None = None) -> Manager:
        """Rebuild from state.json's cgroup_paths (and cgroup_created)."""
        return cls(paths, created)

    @property
    def mode(self) -> str:
        """'v1', 'v2' or 'hybrid', judged from the hierarchies this container has."""
        keys = set(self.paths)
        if keys == {UNIFIED}:
            return "v2"
        return "hybrid" if UNIFIED in keys else "v1"

    def layout(self) -> res.Layout:
        if self._layout is None:
            self._layout = res.Layout(self.paths)
        return self._layout

    def _dir(self, controller: str) -> str | None:
        key = self.layout().where(controller)
        return self.paths[key] if key is not None else None

    # ------------------------------------------------------------ lifecycle
    def validate(self, resources: dict | None, updating: bool = False) -> res.Plan:
        """Check RESOURCES against this host before anything is created; returns the plan."""
        return res.plan(resources, self.layout(), updating=updating)

    def create(self) -> list[str]:
        """Make the directories (and on pure v2 pass the controllers down); returns those made."""
        made = cgroups.create(self.paths)
        self.created = (self.created or []) + made
        self._layout = None  # what cgroup2 offers may have changed
        return made

    def add(self, pid: int) -> None:
        cgroups.add_process(self.paths, pid)

    def apply(self, resources: dict | None, updating: bool = False) -> None:
        """Enforce an OCI linux.resources section (validated here too)."""
        self.apply_plan(self.validate(resources, updating=updating), updating=updating)

    def apply_plan(self, plan: res.Plan, updating: bool = False) -> None:
        if plan.v2_controllers:
            from nsbox.runtime.cgroups import v2

            v2.enable_controllers(self.paths[UNIFIED], plan.v2_controllers)
        if updating and plan.check_before_update and plan.memory_limit and plan.memory_limit > 0:
            usage = self.memory_usage()
            if usage is not None and plan.memory_limit < usage:
                raise ConfigError(f"linux.resources.memory.limit: {plan.memory_limit} is below the "
                                  f"current usage {usage} (checkBeforeUpdate is set)")
        res.apply_writes(plan.writes, self.paths)
        if plan.bpf_devices is not None:
            from nsbox.runtime.cgroups import v2

            v2.apply_devices(self.paths[UNIFIED], plan.bpf_devices, replace=updating)

    def pids(self) -> list[int]:
        return cgroups.pids(self.paths)

    def destroy(self) -> None:
        """Kill what is left, then remove the directories we made, children first."""
        cgroups.destroy(self.paths, self.created)

    # ------------------------------------------------------------ freezer
    def _freezer(self) -> tuple[str, str]:
        if "freezer" in self.paths:
            return "v1", self.paths["freezer"]
        if UNIFIED in self.paths:
            return "v2", self.paths[UNIFIED]
        raise UnsupportedError("pause/resume need the freezer: this container has no freezer "
                               "cgroup and no cgroup2 directory")

    def freeze(self) -> None:
        kind, path = self._freezer()
        if kind == "v1":
            from nsbox.runtime.cgroups import v1

            v1.set_frozen(path, True)
        else:
            from nsbox.runtime.cgroups import v2

            v2.set_frozen(path, True)

    def thaw(self) -> None:
        kind, path = self._freezer()
        if kind == "v1":
            from nsbox.runtime.cgroups import v1

            v1.set_frozen(path, False)
        else:
            from nsbox.runtime.cgroups import v2

            v2.set_frozen(path, False)

    def is_frozen(self) -> bool:
        return cgroups.is_frozen(self.paths)

    def signal_all(self, sig: int) -> None:
        """Send SIG to every process in the cgroup, with the cgroup frozen so nothing forks away."""
        frozen_before = self.is_frozen()
        froze = False
        if not frozen_before:
            try:
                self.freeze()
                froze = True
            except Exception as exc:  # noqa: BLE001 - no freezer: signal without it
                log.debug("signal_all without freezing: %s", exc)
        try:
            for pid in self.pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            # A frozen v1 task only dies once thawed; a paused container stays
            # paused for any other signal, as with runc.
            if froze or (frozen_before and sig == 9):
                with suppress(Exception):
                    self.thaw()

    # ------------------------------------------------------------ stats
    def memory_usage(self) -> int | None:
        from nsbox.runtime.cgroups import _files

        key = self.layout().where("memory")
        if key is None:
            return None
        name = "memory.current" if key == UNIFIED else "memory.usage_in_bytes"
        return _files.read_int(os.path.join(self.paths[key], name))

    def stats(self) -> dict:
        """Usage counters in the shape of runc's `events --stats` data."""
        from nsbox.runtime.cgroups import v1, v2

        layout = self.layout()
        out: dict = {"cpu": {}, "memory": {}, "pids": {}, "blkio": {}, "hugetlb": {}}
        cpu_key, acct_key = layout.where("cpu"), layout.where("cpuacct")
        if cpu_key == UNIFIED:
            out["cpu"] = v2.cpu_stats(self.paths[UNIFIED])
        elif cpu_key is not None or acct_key is not None:
            out["cpu"] = v1.cpu_stats(self.paths.get(cpu_key) if cpu_key else None,
                                      self.paths.get(acct_key) if acct_key else None)
        elif UNIFIED in self.paths:
            out["cpu"] = v2.cpu_stats(self.paths[UNIFIED])  # cpu.stat is always there in v2
        key = layout.where("memory")
        if key is not None:
            out["memory"] = (v2.memory_stats if key == UNIFIED else v1.memory_stats)(self.paths[key])
        key = layout.where("pids")
        if key is not None:
            out["pids"] = (v2.pids_stats if key == UNIFIED else v1.pids_stats)(self.paths[key])
        else:
            out["pids"] = {"current": len(self.pids()), "limit": 0}
        key = layout.v1_key("blkio") or (UNIFIED if "io" in self._v2_enabled() else None)
        if key is not None:
            out["blkio"] = (v2.io_stats if key == UNIFIED else v1.blkio_stats)(self.paths[key])
        key = layout.where("hugetlb")
        if key is not None:
            sizes = sorted(res.supported_page_sizes())
            out["hugetlb"] = (v2.hugetlb_stats if key == UNIFIED else v1.hugetlb_stats)(
                self.paths[key], sizes)
        key = layout.where("cpuset")
        if key is not None:
            out["cpuset"] = (v2.cpuset_stats if key == UNIFIED else v1.cpuset_stats)(self.paths[key])
        return out

    def _v2_enabled(self) -> set[str]:
        from nsbox.runtime.cgroups import _files

        path = self.paths.get(UNIFIED)
        if not path:
            return set()
        return set((_files.read(os.path.join(path, "cgroup.controllers")) or "").split())

    # ------------------------------------------------------------ OOM
    def oom_watcher(self):
        """An object with fileno(), poll_mask, drain() -> new OOM events, gone(), close()."""
        key = self.layout().where("memory")
        if key is None:
            raise UnsupportedError("OOM events need the memory cgroup controller")
        if key == UNIFIED:
            from nsbox.runtime.cgroups import v2

            return v2.OomWatcher(self.paths[key])
        from nsbox.runtime.cgroups import v1

        return v1.OomWatcher(self.paths[key])

    def oom_kills(self) -> int | None:
        """How many processes the OOM killer took from this cgroup so far."""
        key = self.layout().where("memory")
        if key is None:
            return None
        if key == UNIFIED:
            from nsbox.runtime.cgroups import _files

            return _files.read_keyed(os.path.join(self.paths[key], "memory.events")).get("oom_kill")
        from nsbox.runtime.cgroups import v1

        return v1.oom_kill_count(self.paths[key])

