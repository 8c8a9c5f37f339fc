"""Fixtures shared by all nsbox tests.

Typical runtime test::

    def test_hostname(bundle, run_runtime, container_id):
        write_config(bundle, lambda s: s["process"].update(args=["hostname"]))
        out = run_runtime("run", "--bundle", str(bundle), container_id)
        assert out.stdout == "nsbox\\n"

Every container left in a test's private --root is force-deleted after the
test, and a mount leaked below the test's tmp_path fails it.

The host is snapshotted before the first test and after the last (see
tests/host_state.py); anything new left outside the temp dirs (a network link,
mount, test-named cgroup, nft table, changed sysctl, /run/netns, /var/lib/cni)
fails the session.  NSBOX_HOST_CHECK=0 turns that off, =warn only reports.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cgroupv2
import helpers
import host_state
import pytest

MARKERS = {
    "slow": "tests that take more than a few seconds",
    "clients": "tests that drive podman / containerd",
}

# Runtime argv prefixes (each with its --root) handed out during one test,
# read back by the cleanup fixture.
RUNTIME_PREFIXES_KEY = pytest.StashKey[list[list[str]]]()
# The host before the first test, and the session-end report.
HOST_BEFORE_KEY = pytest.StashKey[host_state.Snapshot]()
HOST_REPORT_KEY = pytest.StashKey[str]()
HOST_CHECK_ENV = "NSBOX_HOST_CHECK"
# Things a test has just stopped (a lazily unmounted tree, an exiting process's
# cgroup) may take a moment to go: the session-end check retries this long.
HOST_CHECK_GRACE = 5.0

# The engine's default network for root is the `bridge` network, which makes
# links, addresses and firewall rules in the caller's network namespace: the
# tests must never do that to the real host's.  Every engine the session
# starts (CLI subprocesses inherit this) defaults to `none`; the network tests
# run the engine inside a namespace of their own (tests/nethost.py), which
# drops this variable.
os.environ["NSBOX_DEFAULT_NETWORK"] = "none"


# ------------------------------------------------------------- the host, before and after
def _host_check_mode() -> str:
    mode = os.environ.get(HOST_CHECK_ENV, "1").lower()
    return "off" if mode in ("0", "off", "no", "false") else "warn" if mode == "warn" else "fail"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Not in xdist workers (the controller checks) and not for --collect-only.
    if _host_check_mode() == "off" or hasattr(session.config, "workerinput"):
        return
    session.config.stash[HOST_BEFORE_KEY] = host_state.take()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(HOST_BEFORE_KEY, None)
    if before is None or session.config.option.collectonly:
        return
    deadline = time.monotonic() + HOST_CHECK_GRACE
    while (problems := host_state.new_items(before, host_state.take())) \
            and time.monotonic() < deadline:
        time.sleep(0.25)
    if not problems:
        return
    report = ("the tests left these on the host (new since the session started; "
              f"{HOST_CHECK_ENV}=0 turns this check off):\n" + host_state.describe(problems))
    session.config.stash[HOST_REPORT_KEY] = report
    if _host_check_mode() == "fail" and session.exitstatus in (pytest.ExitCode.OK,
                                                               pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(HOST_REPORT_KEY, None)
    if report:
        fatal = _host_check_mode() == "fail"
        terminalreporter.section("host state check: " + ("FAILED" if fatal else "warning"),
                                 sep="=", red=fatal, yellow=not fatal, bold=True)
        terminalreporter.line(report)


def pytest_unconfigure(config: pytest.Config) -> None:
    # multiprocessing joins its non-daemonic children at interpreter exit, without
    # a timeout: a test that failed with one still running would hang the run
    # after its summary (a CI run once sat there until it was killed).
    import multiprocessing

    for child in multiprocessing.active_children():
        logging.getLogger(__name__).warning("killing leftover test process %s", child.pid)
        child.kill()
        child.join(5)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A cgroupv2-marked test needs a pure cgroup v2 host: here it is skipped, and
    # `make test-v2` (run by tests/test_v2lane.py) runs it in a qemu guest.
    if item.get_closest_marker("cgroupv2") and not cgroupv2.is_cgroup2_mount():
        pytest.skip("needs a cgroup v2 host; `make test-v2` runs it in a qemu guest")


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares these too; registering only the missing ones keeps
    # the suite strict-marker clean if it is ever run with another ini file.
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {text}")


# ------------------------------------------------------------------- bundles
@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs built once per session; copy it, never modify it."""
    if not Path(helpers.BUSYBOX).is_file():
        helpers.skip_or_fail(f"{helpers.BUSYBOX} missing: apt-get install busybox-static")
    return helpers.build_busybox_rootfs(tmp_path_factory.mktemp("busybox-cache") / "rootfs")


@pytest.fixture
def bundle_factory(tmp_path: Path, busybox_rootfs: Path) -> Callable[..., Path]:
    """`bundle_factory(args=[...], name="b2", **overrides)` makes more bundles."""
    made: list[str] = []

    def factory(args: list[str] | None = None, name: str | None = None,
                **overrides: Any) -> Path:
        name = name or f"bundle{len(made) + 1}"
        made.append(name)
        return helpers.make_bundle(tmp_path / name, args or ["/bin/true"],
                                   rootfs_template=busybox_rootfs, **overrides)

    return factory


@pytest.fixture
def bundle(bundle_factory: Callable[..., Path]) -> Path:
    """A fresh bundle (own rootfs copy) running /bin/true; edit with write_config."""
    return bundle_factory(name="bundle")


# ------------------------------------------------------------------- runtime
@pytest.fixture
def runtime_root(tmp_path: Path) -> Path:
    """The private --root for this test's runtime state."""
    return tmp_path / "state"


@pytest.fixture
def register_runtime(request: pytest.FixtureRequest) -> Callable[[list[str]], list[str]]:
    """Have the cleanup force-delete containers of another runtime argv prefix too
    (e.g. `register_runtime(helpers.runtime_argv(root, runc))`)."""

    def register(prefix: list[str]) -> list[str]:
        request.node.stash.setdefault(RUNTIME_PREFIXES_KEY, []).append(list(prefix))
        return prefix

    return register


@pytest.fixture
def runtime(runtime_root: Path, register_runtime: Callable[[list[str]], list[str]]
            ) -> list[str]:
    """Argv prefix for the runtime under test: [nsbox-runtime, --root, <tmp>/state]."""
    try:
        prefix = helpers.runtime_argv(runtime_root)
    except FileNotFoundError as exc:
        helpers.skip_or_fail(str(exc))
        raise  # unreachable: skip_or_fail raises
    return register_runtime(prefix)


@pytest.fixture
def run_runtime(runtime: list[str]) -> Callable[..., subprocess.CompletedProcess]:
    """`run_runtime(*args, check=True, input=None, timeout=30)` -> CompletedProcess."""

    def run(*args: str, check: bool = True, input: str | bytes | None = None,
            timeout: float = 30, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return helpers.run_cli(runtime, *args, check=check, input=input,
                               timeout=timeout, env=env)

    return run


@pytest.fixture
def container_id() -> str:
    """A unique container id."""
    return helpers.new_container_id()


@pytest.fixture
def runc() -> str:
    """Path of runc; skips (fails in CI) when missing."""
    return helpers.require_binary("runc")


@pytest.fixture
def crun() -> str:
    """Path of crun; skips (fails in CI) when missing."""
    return helpers.require_binary("crun")


# ------------------------------------------------------------------- network tests
@pytest.fixture
def net_host(tmp_path: Path) -> Iterator[Any]:
    """A nethost.NetHost: the engine runs in a network namespace of its own with an
    upstream namespace behind it (tests/nethost.py); the test fails if the engine
    leaves links or processes there once its containers are removed."""
    import nethost

    host = nethost.NetHost(tmp_path / "nethost").start()
    try:
        yield host
    finally:
        problems = host.close()
    if problems:
        pytest.fail("nethost cleanup: " + "; ".join(problems), pytrace=False)


# ------------------------------------------------------------------- cleanup
@pytest.fixture(autouse=True)
def _cleanup_containers_and_mounts(request: pytest.FixtureRequest) -> Iterator[None]:
    # tmp_path is only looked at when the test asked for it, so tests that never
    # touch the filesystem do not get an empty temp dir each.
    tmp_path: Path | None = None
    if "tmp_path" in request.fixturenames:
        tmp_path = request.getfixturevalue("tmp_path")
    yield
    problems = []
    for prefix in request.node.stash.get(RUNTIME_PREFIXES_KEY, []):
        left = helpers.force_delete_all(prefix)
        if left:
            problems.append(f"containers still present after `{' '.join(prefix)} delete"
                            f" --force`: {left}")
    if tmp_path is not None:
        leaked = helpers.unmount_all_under(tmp_path)
        if leaked:
            problems.append(f"mounts leaked below {tmp_path} (now unmounted): {leaked}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ------------------------------------------------------------ cgroup tests (v1 and v2)
@pytest.fixture
def cg_path(container_id: str, runtime: list[str]) -> Iterator[str]:
    """An absolute cgroupsPath below our own cgroup; every trace removed afterwards."""
    with helpers.cgroup_under_own(f"nsbox-{container_id}") as path:
        try:
            yield path
        finally:
            # Before the directories go: the container must be gone first.
            helpers.force_delete_all(runtime)


@pytest.fixture
def start(bundle_factory, run_runtime, container_id, cg_path):
    """start(args, resources, **spec_changes) -> the container's init pid (detached)."""

    def start_container(args: list[str], resources: dict, cid: str = container_id,
                        mutate: Callable[[dict], None] | None = None, check: bool = True):
        def edit(spec: dict) -> None:
            spec["linux"]["cgroupsPath"] = cg_path
            spec["linux"]["resources"] = resources
            if mutate:
                mutate(spec)

        bundle = bundle_factory(args=args, mutate=edit)
        result = run_runtime("run", "--detach", "--bundle", str(bundle), cid, check=check)
        if not check:
            return result
        return json.loads(run_runtime("state", cid).stdout)["pid"]

    return start_container


@pytest.fixture
def nsbox(tmp_path: Path):
    """The engine CLI with a private --root/--runroot in tmp_path (test_engine_cli.Nsbox);
    its containers are removed afterwards. Modules that need another setup define
    their own `nsbox` fixture, which takes precedence."""
    from test_engine_cli import Nsbox

    box = Nsbox(tmp_path)
    yield box
    ids = box.ids() if (tmp_path / "lib").exists() else []
    if ids:
        box("rm", "-f", *ids, check=False)
