"""`run --rm busybox true` on the default bridge against `--network none`, interleaved.

hyperfine runs each command's runs back to back, so on a machine whose load
changes by the second two commands are measured under different loads.  This
runs the commands in turn, round after round, so every command sees the same
load, and prints the median and minimum of each:

    .venv/bin/python bench/engine_bench_bridge.py [ROUNDS]

BENCH_OLD_TREE=DIR adds the same two commands run with PYTHONPATH=DIR: DIR is
an export of an older nsbox package (`git archive REV nsbox | tar -x -C DIR`,
plus its compiled nsbox/engine/nsbox-monitor-loop), for a before/after.

Like bench/engine_bench.py the whole run happens in a mount and network
namespace of its own (`unshare --mount --net`): the bridge, veths and the
nft table never exist in the host's network namespace.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
NSBOX = str(REPO / ".venv" / "bin" / "nsbox")
IMAGE = "localhost/busybox:bench"
NS_ENV = "NSBOX_BENCH_BRIDGE_IN_NS"


def main() -> int:
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if os.environ.get(NS_ENV) != "1":
        os.execvpe("unshare", ["unshare", "--mount", "--net", "--propagation", "private",
                               sys.executable, *sys.argv], dict(os.environ, **{NS_ENV: "1"}))
    import clients  # tests/clients.py: the busybox rootfs both benches use
    import hostclean  # tests/hostclean.py: unmounting the work tree

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="nsbox-bb-", dir="/tmp"))
    base = [NSBOX, "--root", str(work / "root"), "--runroot", str(work / "run")]
    env = {k: v for k, v in os.environ.items() if k != "NSBOX_DEFAULT_NETWORK"}
    try:
        layer = clients.tar_rootfs(clients.build_busybox_rootfs(work / "rootfs"),
                                   work / "rootfs.tar")
        subprocess.run([*base, "import", "-c", 'CMD ["sh"]', str(layer), IMAGE], check=True,
                       capture_output=True)
        variants = {f"{label} {net}": (extra, [*base, "run", "--rm", "--network", net, IMAGE,
                                              "true"])
                    for label, extra in [("now", {}),
                                         *([("old", {"PYTHONPATH": os.environ["BENCH_OLD_TREE"]})]
                                           if os.environ.get("BENCH_OLD_TREE") else [])]
                    for net in ("bridge", "none")}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for extra, argv in variants.values():  # warm-up, and the default network made
            subprocess.run(argv, env={**env, **extra}, check=True, capture_output=True)
        for _ in range(rounds):
            for name, (extra, argv) in variants.items():
                start = time.perf_counter()
                subprocess.run(argv, env={**env, **extra}, check=True, capture_output=True)
                times[name].append((time.perf_counter() - start) * 1000)
        print(f"{rounds} rounds, interleaved; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs at the end")
        for name, ts in times.items():
            print(f"{name:12s} median {statistics.median(ts):7.1f} ms   min {min(ts):7.1f} ms")
        for label in ("now", "old"):
            if f"{label} bridge" in times:
                cost = statistics.median(times[f"{label} bridge"]) - \
                    statistics.median(times[f"{label} none"])
                print(f"{label}: the bridge adds {cost:.1f} ms at the median")
    finally:
        ids = subprocess.run([*base, "ps", "-aq", "--no-trunc"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run([*base, "rm", "-f", *ids], capture_output=True)
        hostclean.unmount_all_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
