"""The guard (nsbox/engine/guard, docs/guard.md) on the real kernel: rules, alerts, cleanup.

Each default rule is made to fire by its behaviour in a busybox container,
and a container that only runs its command stays quiet.  Kernel enforcement
(deny rules, guard=drift) needs BPF LSM programs: where the host refuses
them, create must refuse with a clear error and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import helpers
import pytest

from nsbox.engine.guard import client, record, rules, service

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")
PROBE_SOURCE = Path(__file__).resolve().parent / "guard" / "probe.c"


# ------------------------------------------------------------------ pure logic
def test_smallest_rules_file_parses():
    parsed = rules.load_text("- rule: no-shadow\n  event: open\n  path: /etc/shadow\n"
                             "  action: deny\n", "f.yaml")
    assert [(r.name, r.events, r.paths, r.action) for r in parsed] == \
        [("no-shadow", ["open"], ["/etc/shadow"], "deny")]


def test_default_rules_parse():
    names = [r.name for r in rules.load_text(rules.default_rules_text(), "default")]
    assert {"shell-in-container", "write-below-system-dirs", "read-sensitive-file",
            "package-manager", "outbound-connect-without-network", "ptrace-attach",
            "mount-attempt", "kernel-module-load", "setuid-binary-exec"} <= set(names)


@pytest.mark.parametrize("text,message", [
    ("- rule: x\n  event: nope\n", "unknown event 'nope'"),
    ("- rule: x\n  event: open\n  action: block\n", "unknown action 'block'"),
    ("- rule: x\n  event: open\n  colour: red\n", "unknown key(s) colour"),
    ("- event: open\n", "needs a name"),
    ("- rule: x\n  event: connect\n  port: 70000\n", "not a port number"),
    ("- rule: x\n  event: connect\n  addr: 1.2.3\n", "not an address"),
    ("- rule: x\n  event: open\n  path: etc/shadow\n", "must be absolute"),
    ("rule: x\n", "a YAML list of rules"),
    ("- rule: [\n", "not valid YAML"),
    ("- {rule: a, event: exec}\n- {rule: a, event: exec}\n", "must be unique"),
])
def test_bad_rules(text, message):
    from nsbox.errors import ConfigError
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        rules.load_text(text, "f.yaml")


@pytest.mark.parametrize("glob,path,hit", [
    ("/etc/**", "/etc/passwd", True), ("/etc/**", "/etc/a/b", True),
    ("/etc/**", "/etcx/a", False), ("/home/*/.ssh/**", "/home/u/.ssh/id", True),
    ("/home/*/.ssh/**", "/home/u/v/.ssh/id", False), ("**/id_rsa", "/root/.ssh/id_rsa", True),
    ("**/*.key", "/srv/tls/site.key", True), ("**/*.key", "/srv/key", False),
    ("/etc/shadow", "/etc/shadow", True), ("/etc/shadow", "/etc/shadow-", False),
])
def test_path_globs(glob, path, hit):
    assert rules.path_matches([glob], path) is hit


@pytest.mark.parametrize("glob,kind,text", [
    ("/etc/shadow", record.K_OPEN_EXACT, "/etc/shadow"),
    ("/etc/**", record.K_OPEN_PREFIX, "/etc/"),
    ("/home/*/.ssh/**", record.K_OPEN_PREFIX, "/home/"),
    ("**/id_rsa", record.K_OPEN_NAME, "id_rsa"),
    ("**/*.key", record.K_OPEN_EXT, "key"),
])
def test_globs_reduce_to_kernel_keys(glob, kind, text):
    assert rules.reduce_glob(glob) == (kind, text.encode())


def test_glob_without_literal_directory_reports_every_open():
    assert rules.reduce_glob("**/*shadow*") is None
    plan = rules.kernel_plan(rules.load_text("- {rule: a, event: read, path: '**/*sh*'}\n", "f"))
    assert plan.all_reads


def test_key_hashes_follow_the_kernel_programs_word_layout():
    # guard.bpf.c mixes 8-byte little-endian words, the last zero-padded, and a '/'
    # before each path component; the kernel test below checks the programs agree
    mix = record._mix
    assert record.name_hash(b"") == record.HASH_BASIS
    assert record.name_hash(b"a") == mix(record.HASH_BASIS, 0x61) == 0xD8932F58FCA0422C
    assert record.name_hash(b"abcdefghi") == mix(
        mix(record.HASH_BASIS, int.from_bytes(b"abcdefgh", "little")), ord("i"))
    assert record.path_hash(b"/") == mix(record.HASH_BASIS, ord("/"))
    etc = mix(mix(record.HASH_BASIS, ord("/")), int.from_bytes(b"etc", "little"))
    assert record.path_hash(b"/etc") == etc
    assert record.path_hash(b"/etc/") == mix(etc, ord("/"))  # a prefix: the state at its '/'
    assert record.key_hash(record.K_OPEN_PREFIX, b"/etc/") == mix(etc, ord("/"))
    assert record.key_hash(record.K_OPEN_NAME, b"etc") == record.name_hash(b"etc")
    assert len({record.path_hash(p) for p in (b"/ab/c", b"/a/bc", b"/abc", b"/abc/")}) == 4


# ------------------------------------------------------------------ on the kernel
def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root"
    return client.unavailable()


needs_guard = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "ok")


class Box:
    """The nsbox CLI on a private root."""

    def __init__(self, base: Path) -> None:
        self.env = {**os.environ, "NSBOX_ROOT": str(base / "lib"),
                    "NSBOX_RUNROOT": str(base / "run"), "NSBOX_DEFAULT_NETWORK": "none"}
        self.env.pop(client.ENV, None)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([NSBOX, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)}: exit {proc.returncode}: "
                                 f"{proc.stderr}")
        return proc

    def alerts(self, name: str, want: str | None = None, path: str | None = None) -> list[dict]:
        """NAME's alerts; with WANT, once one of rule WANT (on PATH) is there (the guard writes
        them a moment after the event), or after 20 s."""
        deadline = time.monotonic() + 20
        while True:
            out = self("logs", "--guard", name).stdout
            alerts = [json.loads(line) for line in out.splitlines()]
            if want is None or time.monotonic() > deadline or any(
                    a["rule"] == want and (path is None or a["event"].get("path") == path)
                    for a in alerts):
                return alerts
            time.sleep(0.1)

    def run_to_end(self, name: str, script: str, *flags: str) -> str:
        """Run SCRIPT in a guarded busybox container to its end; its output."""
        self("run", "-d", "--name", name, "--security-opt", "guard=default", *flags,
             "busybox", "sh", "-c", script)
        self("wait", name, timeout=120)
        return self("logs", name).stdout


def _guard_gone(timeout: float = 30) -> bool:
    return helpers.wait_for(lambda: client.status() is None, timeout=timeout, interval=0.2)


def _loaded_guard_objects() -> list[str]:
    """Names of guard programs and maps the kernel still holds (bpftool)."""
    out = []
    for what in ("prog", "map"):
        proc = subprocess.run(["bpftool", "-j", what, "show"], capture_output=True, text=True,
                              timeout=30)
        for item in json.loads(proc.stdout or "[]"):
            if str(item.get("name", "")).startswith("guard_"):
                out.append(f"{what} {item['name']}")
    return out


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    base = tmp_path_factory.mktemp("guard")
    b = Box(base)
    b("pull", "busybox", check=False)  # the engine's local busybox image when offline
    yield b
    ids = b("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    if ids:
        b("rm", "-f", *ids, check=False)
    assert _guard_gone(), "the guard outlived its last container"
    shutil.rmtree(base / "lib", ignore_errors=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing (apt: gcc libc6-dev)")
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run([gcc, "-static", "-O2", "-o", str(out), str(PROBE_SOURCE)], check=True,
                   timeout=120)
    return out.parent


def _fired(alerts: list[dict], rule: str) -> list[dict]:
    return [a for a in alerts if a["rule"] == rule]


@needs_guard
def test_quiet_container_has_no_alerts(box):
    assert box.run_to_end("g-quiet", "echo hello; sleep 0.2") == "hello\n"
    time.sleep(1)  # what the guard had to say has been said
    assert box.alerts("g-quiet") == []
    box("rm", "g-quiet")


@needs_guard
@pytest.mark.parametrize("rule,script", [
    ("write-below-system-dirs", "echo $$; echo x > /etc/guard-test"),
    ("read-sensitive-file",
     "mkdir -p /root/.ssh; echo k > /root/.ssh/id_rsa; sh -c 'echo $$; exec cat /root/.ssh/id_rsa'"),
    ("package-manager", "sh -c 'echo $$; exec dpkg --help >/dev/null 2>&1'"),
    ("outbound-connect-without-network", "echo $$; exec nc -w 1 192.0.2.1 80"),
    ("mount-attempt", "echo $$; exec mount -t tmpfs none /mnt"),
    ("setuid-binary-exec", "cp /bin/busybox /tmp/sb; chmod u+s /tmp/sb; "
                           "sh -c 'echo $$; exec /tmp/sb true'"),
])
def test_default_rule_fires(box, rule, script):
    name = f"g-{rule[:20]}"
    out = box.run_to_end(name, script)
    pids = {int(line) for line in out.split() if line.isdigit()}
    alerts = box.alerts(name, rule)
    fired = _fired(alerts, rule)
    assert fired, (rule, out, alerts)
    alert = fired[0]
    assert alert["container"]["name"] == name
    assert alert["process"]["pid_in_container"] in pids, (pids, alert)
    assert alert["process"]["pid"] != alert["process"]["pid_in_container"]  # the host's pid too
    assert alert["done"] == "alerted"
    # Only the rule the script is about (the shell runs its own command).
    assert {a["rule"] for a in alerts} <= {rule, "write-below-system-dirs", "identity-change"}
    # ... and in the events journal, with the file or address
    try:
        from nsbox.engine import events
    except ImportError:
        events = None
    if events is not None:
        found = [e for e in events.read(box.env["NSBOX_ROOT"], filters={"type": ["guard"]})
                 if e.Actor.Attributes.get("name") == name and e.Action == rule]
        assert found
        attrs = found[0].Actor.Attributes
        assert attrs.get("path") or attrs.get("addr"), attrs
    box("rm", "-f", name)


@needs_guard
@pytest.mark.parametrize("rule,what", [("ptrace-attach", "ptrace"), ("bpf-call", "bpf"),
                                       ("kernel-module-load", "module"),
                                       ("identity-change", "setuid")])
def test_default_rule_fires_on_system_call(box, probe, rule, what):
    if what == "module" and not os.path.exists("/proc/modules"):
        # finit_module is then sys_ni_syscall (ENOSYS, nothing can load) and has no
        # syscalls/sys_exit_finit_module tracepoint for the guard to attach to.
        pytest.skip("the kernel has no module support (no /proc/modules)")
    name = f"g-{what}"
    out = box.run_to_end(name, f"echo $$; exec /probe/probe {what}", "-v", f"{probe}:/probe:ro")
    alerts = _fired(box.alerts(name, rule), rule)
    assert alerts, out
    assert alerts[0]["process"]["pid_in_container"] == int(out.split()[0])
    assert alerts[0]["event"]["type"] == {"module": "module", "setuid": "setuid"}.get(what, what)
    box("rm", "-f", name)


@needs_guard
def test_shell_started_in_a_container_that_did_not_start_with_one(box):
    box("run", "-d", "--name", "g-shell", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    assert box("exec", "g-shell", "sh", "-c", "echo $$").stdout.strip()
    alerts = _fired(box.alerts("g-shell", "shell-in-container"), "shell-in-container")
    assert alerts and alerts[0]["event"]["type"] == "exec"
    assert alerts[0]["process"]["pid_in_container"] > 1
    assert alerts[0]["event"]["argv"][:2] == ["sh", "-c"]
    # inspect --security names the guard and counts the alert
    posture = box("inspect", "--security", "g-shell").stdout
    assert "guard" in posture and "shell-in-container 1" in posture
    box("rm", "-f", "g-shell")


@needs_guard
def test_kill_action_and_rules_file(box, tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("- rule: no-secret\n  event: read\n  path: /srv/secret\n"
                          "  action: kill\n")
    # The reader keeps the file open and sleeps: the kill comes after the fact (user space).
    box("run", "-d", "--name", "g-kill", "--security-opt", f"guard={rules_file}", "busybox",
        "sh", "-c", "mkdir -p /srv; echo s > /srv/secret; "
                    "sh -c 'exec 3</srv/secret; sleep 60'; echo end-$?")
    box("wait", "g-kill", timeout=120)
    assert box("logs", "g-kill").stdout == "end-137\n"
    alerts = box.alerts("g-kill", "no-secret")
    assert [a["rule"] for a in alerts] == ["no-secret"] and alerts[0]["done"] == "killed"
    # the file is kept with the container: changing it later changes nothing
    rules_file.write_text("garbage: [")
    box("rm", "-f", "g-kill")


def _cgtab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bpftool", "-j", "map", *args[:1], "name", "guard_cgtab", *args[1:]],
                          capture_output=True, text=True, check=True, timeout=30)


@needs_guard
def test_a_table_entry_two_watched_cgroups_share_sends_the_kernel_to_the_hash_map(box):
    """guard_cgtab holds a watched cgroup's watch in its entry; an entry two cgroups hash to
    holds CG_SHARED and the programs look in guard_watched.  Forced on a real watch (ids
    cannot be chosen): the guard's entry is the watch, and with CG_SHARED alerts still come."""
    box("run", "-d", "--name", "g-shared", "--security-opt", "guard=default", "busybox",
        "sleep", "60")
    pid = int(box("inspect", "--format", "{{.State.Pid}}", "g-shared").stdout)
    cgid = os.stat(client.cgroup_dir(pid)).st_ino
    key = [str(b) for b in record.cgroup_slot(cgid).to_bytes(4, "little")]
    found = json.loads(_cgtab("lookup", "key", *key).stdout)
    value = bytes(int(b, 16) for b in found["value"])
    got_cgid, slot, _flags = service.CGENTRY.unpack(value)
    assert got_cgid == cgid and slot >= 1, (got_cgid, cgid, slot)
    shared = service.CGENTRY.pack(record.CG_SHARED, 0, 0)
    _cgtab("update", "key", *key, "value", *[str(b) for b in shared])
    try:
        box("exec", "g-shared", "sh", "-c", "echo k > /srv.key; cat /srv.key")
        alerts = box.alerts("g-shared", "read-sensitive-file", "/srv.key")
        assert [a["event"]["path"] for a in alerts if a["rule"] == "read-sensitive-file"] == \
            ["/srv.key"], alerts
    finally:
        box("rm", "-f", "g-shared")


@needs_guard
def test_unwatched_container_costs_no_events(box):
    box("run", "-d", "--name", "g-idle", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    time.sleep(1)  # its own first events (the exec of sleep) are read
    before = client.status()["events"]
    box("run", "--rm", "busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo x > /etc/f$i; "
        "cat /etc/f$i; done")
    assert client.status()["events"] == before
    box("rm", "-f", "g-idle")


@needs_guard
def test_host_wide_default(box, tmp_path):
    conf = tmp_path / "guard.conf"
    conf.write_text("# host default\nguard=default\n")
    env = {"NSBOX_GUARD_CONF": str(conf)}
    box("run", "--name", "g-hostwide", "busybox", "sh", "-c", "echo x > /etc/hw", env=env)
    assert _fired(box.alerts("g-hostwide", "write-below-system-dirs"), "write-below-system-dirs")
    box("rm", "-f", "g-hostwide")
    # guard=off wins over the host's default, and $NSBOX_GUARD over the file
    box("run", "--name", "g-off", "--security-opt", "guard=off", "busybox", "sh", "-c",
        "echo x > /etc/hw", env=env)
    assert box.alerts("g-off") == []
    box("rm", "-f", "g-off")
    box("run", "--name", "g-envoff", "busybox", "sh", "-c", "echo x > /etc/hw",
        env={**env, "NSBOX_GUARD": "off"})
    assert box.alerts("g-envoff") == []
    box("rm", "-f", "g-envoff")


@needs_guard
def test_watch_prints_json_lines(box):
    watcher = subprocess.Popen([NSBOX, "guard", "watch", "--timeout", "60"],
                               stdout=subprocess.PIPE, text=True, env=box.env)
    try:
        box("run", "-d", "--name", "g-watch", "--security-opt", "guard=default", "busybox",
            "sh", "-c", "sleep 1; echo x > /etc/watched; sleep 1")
        box("wait", "g-watch")
        line = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = watcher.stdout.readline()
            if not text:
                break
            item = json.loads(text)
            if item.get("event", {}).get("path") == "/etc/watched":
                line = item
                break
        assert line is not None
        assert line["container"]["name"] == "g-watch" and line["event"]["write"] is True
        assert line["rules"] == [{"rule": "write-below-system-dirs", "action": "alert"}]
    finally:
        watcher.kill()
        watcher.wait()
    box("rm", "-f", "g-watch")


# ------------------------------------------------------------------ enforcement and cleanup
needs_landlock = pytest.mark.skipif(
    not _skip_reason() and __import__("nsbox.runtime.security.landlock",
                                      fromlist=["abi"]).abi() < 1,
    reason="the kernel has no Landlock (deny rules and drift cannot be enforced)")


@needs_guard
def test_read_keys_of_every_kind_match_in_the_kernel(box, tmp_path):
    """Reads are reported by the kernel only when a key matches (exact path, a directory
    prefix, the last component, its extension), hashed in 8-byte words there:
    paths of lengths around the chunks, and near misses."""
    rules_file = tmp_path / "reads.yaml"
    rules_file.write_text(
        "- {rule: r-exact, event: read, path: /srv/a/exactly16}\n"   # 16 bytes: two words
        "- {rule: r-prefix, event: read, path: /srv/pp/**}\n"        # an 8-byte prefix
        "- {rule: r-deep, event: read, path: /srv/q/deeper/dir/**}\n"
        "- {rule: r-name, event: read, path: '**/named-file'}\n"
        "- {rule: r-ext, event: read, path: '**/*.secret'}\n"
        "- {rule: r-long-ext, event: read, path: '**/*.extension-16b'}\n")
    # dots before, at and after a word's end; the last dot counts
    hits = ["/srv/a/exactly16", "/srv/pp/x", "/srv/q/deeper/dir/f", "/srv/y/named-file",
            "/srv/y/z.tar.secret", "/srv/y/abcdefg.secret", "/srv/y/abcdefgh.secret",
            "/srv/y/a.b.secret", "/srv/y/f.extension-16b"]
    misses = ["/srv/a/exactly1", "/srv/a/exactly16x", "/srv/ppx/x", "/srv/q/deeper/di",
              "/srv/y/named-file2", "/srv/y/z.secretx", "/srv/y/secret", "/srv/y/a.secret.b",
              "/srv/y/f.extension-16", "/srv/y/f.extension-16bb"]
    files = hits + misses
    script = (f"mkdir -p {' '.join(sorted({f.rsplit('/', 1)[0] for f in files}))}; "
              f"for f in {' '.join(files)}; do echo x > $f; done; "
              f"sleep 0.3; cat {' '.join(files)} >/dev/null")
    box("run", "--name", "g-keys", "--security-opt", f"guard={rules_file}", "busybox",
        "sh", "-c", script)
    alerts = box.alerts("g-keys", "r-long-ext", "/srv/y/f.extension-16b")
    seen = {(a["rule"], a["event"]["path"]) for a in alerts}
    assert seen == {("r-exact", hits[0]), ("r-prefix", hits[1]), ("r-deep", hits[2]),
                    ("r-name", hits[3]), ("r-ext", hits[4]), ("r-ext", hits[5]),
                    ("r-ext", hits[6]), ("r-ext", hits[7]), ("r-long-ext", hits[8])}, alerts
    box("rm", "-f", "g-keys")


@needs_guard
@needs_landlock
def test_deny_rule_refuses_in_the_kernel(box, tmp_path):
    """The issue's smallest rules file, as written."""
    rules_file = tmp_path / "deny.yaml"
    rules_file.write_text("- rule: no-shadow\n  event: open\n  path: /etc/shadow\n"
                          "  action: deny\n")
    shadow = tmp_path / "shadow"
    shadow.write_text("root:secret:1::::::\n")
    mount = f"{shadow}:/etc/shadow:ro"  # busybox has no /etc/shadow of its own
    proc = box("run", "--name", "g-deny", "-v", mount, "--security-opt", f"guard={rules_file}",
               "busybox", "sh", "-c", "cat /etc/shadow; echo rc=$?; head -1 /etc/passwd",
               check=False)
    assert "Permission denied" in proc.stderr and "secret" not in proc.stdout
    assert "rc=1" in proc.stdout and "root:x:0:0" in proc.stdout  # the rest still reads
    alerts = box.alerts("g-deny", "no-shadow")
    assert [(a["rule"], a["done"], a["event"]["path"]) for a in alerts] == \
        [("no-shadow", "denied", "/etc/shadow")]
    box("rm", "-f", "g-deny")
    # the host and an unwatched container still read it
    with open("/etc/shadow") as f:
        assert f.read(1)
    out = box("run", "--rm", "-v", mount, "busybox", "cat", "/etc/shadow").stdout
    assert "secret" in out


@needs_guard
@needs_landlock
def test_drift_refuses_a_copied_binary(box):
    script = "cp /bin/busybox /tmp/x && /tmp/x true; echo rc=$?; /bin/true && echo image-ok"
    proc = box("run", "--name", "g-drift", "--security-opt", "guard=drift", "busybox", "sh",
               "-c", script, check=False)
    assert "rc=126" in proc.stdout and "image-ok" in proc.stdout, proc
    assert "Permission denied" in proc.stderr
    drift = _fired(box.alerts("g-drift", "drift"), "drift")
    assert drift and drift[0]["done"] == "denied" and drift[0]["event"]["path"] == "/tmp/x"
    box("rm", "-f", "g-drift")
    # without drift the copy runs (busybox then says it has no applet "x": it ran)
    proc = box("run", "--rm", "--security-opt", "guard=default", "busybox", "sh", "-c", script)
    assert "rc=126" not in proc.stdout and "Permission denied" not in proc.stderr
    assert "applet not found" in proc.stderr


@needs_guard
@pytest.mark.parametrize("rule", [
    "- {rule: no-net, event: connect, port: 80, action: deny}",
    "- {rule: no-cat, event: open, path: /etc/passwd, proc: cat, action: deny}",
    "- {rule: no-keys, event: read, path: '**/*.key', action: deny}",
])
def test_deny_rules_the_kernel_cannot_enforce_are_refused(box, tmp_path, rule):
    rules_file = tmp_path / "deny.yaml"
    rules_file.write_text(rule + "\n")
    before = box("ps", "-a", "-q").stdout
    proc = box("run", "--rm", "--security-opt", f"guard={rules_file}", "busybox", "true",
               check=False)
    assert proc.returncode == 125
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "deny rule" in errors[0], proc.stderr
    assert box("ps", "-a", "-q").stdout == before
    # the same rule as an alert runs
    rules_file.write_text(rule.replace("deny", "alert") + "\n")
    box("run", "--rm", "--security-opt", f"guard={rules_file}", "busybox", "true")


@needs_guard
def test_bad_rules_file_is_one_line_and_leaves_nothing(box, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: x\n  event: teleport\n")
    before = box("ps", "-a", "-q").stdout
    for value in (str(bad), str(tmp_path / "missing.yaml"), ""):
        proc = box("run", "--rm", "--security-opt", f"guard={value}", "busybox", "true",
                   check=False)
        assert proc.returncode == 125, proc.stderr
        assert len([x for x in proc.stderr.splitlines() if x.startswith("Error:")]) == 1
    assert box("ps", "-a", "-q").stdout == before


@needs_guard
def test_guard_attaches_one_program_per_watched_call_and_leaves_host_mounts_alone(box):
    host_had = "tracefs" in Path("/proc/self/mountinfo").read_text()
    box("run", "-d", "--name", "g-tp", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    status = json.loads(box("guard", "status").stdout)
    programs = set(status["programs"])
    assert {"guard_exec", "guard_enter_connect", "guard_x_openat", "guard_x_bind"} <= programs
    # nothing on the raw sys_enter/sys_exit tracepoints that every system call runs
    assert not programs & {"guard_sys_enter", "guard_sys_exit"}, programs
    if not os.path.exists("/proc/modules"):
        assert "guard_x_finit_module" in status["unattached"], status
    # tracefs, when the guard had to mount it, is in the guard's mount namespace only
    assert ("tracefs" in Path("/proc/self/mountinfo").read_text()) == host_had
    if not host_had:
        assert "tracefs" in Path(f"/proc/{status['pid']}/mountinfo").read_text()
    box("rm", "-f", "g-tp")


@needs_guard
def test_nothing_stays_loaded_after_the_last_container(box):
    box("run", "-d", "--name", "g-last", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    loaded = _loaded_guard_objects()
    assert "prog guard_x_openat" in loaded and "map guard_events" in loaded, loaded
    box("rm", "-f", "g-last")
    assert _guard_gone()
    assert helpers.wait_for(lambda: not _loaded_guard_objects(), timeout=30), \
        _loaded_guard_objects()
    assert not os.path.exists("/sys/fs/bpf/nsbox")
    assert not os.path.exists(client.SOCKET)


@needs_guard
def test_nothing_stays_loaded_after_kill_9_of_the_guard(box):
    box("run", "-d", "--name", "g-k9", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    assert "WEAKER" not in box("inspect", "--security", "g-k9").stdout.split("guard")[-1]
    pid = client.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    assert helpers.wait_for(lambda: helpers.pid_is_dead(pid), timeout=30)
    assert helpers.wait_for(lambda: not _loaded_guard_objects(), timeout=30), \
        _loaded_guard_objects()
    # the container runs on, unwatched, and inspect --security says so
    posture = box("inspect", "--security", "g-k9").stdout
    assert "the guard process is gone" in posture and "weaker than the default: " in posture
    # the next watched container starts a new guard (the old socket is stale)
    box("run", "--rm", "--security-opt", "guard=default", "busybox", "true")
    box("rm", "-f", "g-k9")
    assert _guard_gone()
    assert helpers.wait_for(lambda: not _loaded_guard_objects(), timeout=30), \
        _loaded_guard_objects()


# ------------------------------------------------------------------ --security-opt landlock=
@pytest.fixture(scope="module")
def plain_box(tmp_path_factory):
    """The CLI on a private root, for tests that need no guard (only root and Landlock)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from nsbox.runtime.security.landlock import abi
    if abi() < 1:
        pytest.skip("the kernel has no Landlock")
    base = tmp_path_factory.mktemp("landlock")
    b = Box(base)
    yield b
    ids = b("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    if ids:
        b("rm", "-f", *ids, check=False)
    shutil.rmtree(base / "lib", ignore_errors=True)


def test_landlock_files(plain_box):
    proc = plain_box("run", "--rm", "--security-opt", "landlock=rx:/,rw:/tmp", "busybox", "sh",
                     "-c", "echo a > /tmp/a && cat /tmp/a; echo b > /etc/b; echo rc=$?; "
                           "head -1 /etc/passwd")
    assert proc.stdout.splitlines() == ["a", "rc=1", "root:x:0:0:root:/root:/bin/sh"]
    assert "can't create /etc/b: Permission denied" in proc.stderr
    # nothing executable granted: the container's own program is refused, exit 126
    proc = plain_box("run", "--rm", "--security-opt", "landlock=ro:/", "busybox", "true",
                     check=False)
    assert proc.returncode == 126 and "Permission denied" in proc.stderr


def test_landlock_tcp_ports(plain_box):
    from nsbox.runtime.security.landlock import abi
    if abi() < 4:
        pytest.skip("Landlock ABI < 4: no TCP rules")
    proc = plain_box("run", "--rm", "--security-opt", "landlock=rx:/,bind:8080", "busybox",
                     "sh", "-c", "timeout 1 nc -l -p 9090; echo a=$?; timeout 1 nc -l -p 8080; "
                                 "echo b=$?", check=False)
    assert "a=1" in proc.stdout and "b=143" in proc.stdout, proc
    assert "bind: Permission denied" in proc.stderr


@pytest.mark.parametrize("value,message", [
    ("zz:/", "invalid --security-opt landlock access 'zz'"),
    ("ro", "ACCESS:PATH or bind|connect:PORT"),
    ("ro:etc", "is not an absolute path"),
    ("bind:http", "is not a port"),
])
def test_landlock_bad_values(plain_box, value, message):
    before = plain_box("ps", "-a", "-q").stdout
    proc = plain_box("run", "--rm", "--security-opt", f"landlock={value}", "busybox", "true",
                     check=False)
    assert proc.returncode == 125
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert plain_box("ps", "-a", "-q").stdout == before


# ------------------------------------------------------------------ the build step
def _build_tree(tmp_path: Path) -> Path:
    repo = Path(__file__).resolve().parent.parent
    tree = tmp_path / "src"
    (tree / "nsbox" / "engine" / "guard" / "bpf").mkdir(parents=True)
    shutil.copy(repo / "setup.py", tree / "setup.py")
    for source in ("guard.bpf.c", "guard_paths.h"):
        shutil.copy(repo / "nsbox" / "engine" / "guard" / "bpf" / source,
                    tree / "nsbox" / "engine" / "guard" / "bpf" / source)
    return tree


def _build(tree: Path, **env: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "setup.py", "build_guard_bpf"], cwd=tree,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_build_compiles_the_bpf_object_with_clang(tmp_path):
    if not (shutil.which("clang") and shutil.which("bpftool")
            and os.path.exists("/sys/kernel/btf/vmlinux")):
        pytest.skip("clang, bpftool or the kernel's BTF is missing")
    tree = _build_tree(tmp_path)
    proc = _build(tree)
    assert proc.returncode == 0, proc.stderr
    obj = next(tree.glob("build/lib*/nsbox/engine/guard/bpf/guard.bpf.o"))
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert not list(tree.glob("**/vmlinux.h"))  # generated in a temporary directory


def test_build_without_clang_warns_and_ships_no_object(tmp_path):
    tree = _build_tree(tmp_path)
    proc = _build(tree, BPF_CLANG="/nonexistent/clang")
    assert proc.returncode == 0
    assert "cannot compile" in proc.stderr and "guard=" in proc.stderr
    assert not list(tree.glob("build/**/guard.bpf.o"))
    assert _build(tree, BPF_CLANG="/nonexistent/clang", NSBOX_REQUIRE_GUARD="1").returncode != 0


@needs_guard
def test_concurrent_first_starts_share_one_guard(box):
    assert _guard_gone()
    procs = [subprocess.Popen([NSBOX, "run", "--name", f"g-race{i}", "--security-opt",
                               "guard=default", "busybox", "sh", "-c", "echo x > /etc/race"],
                              env=box.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    started = time.monotonic()
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert time.monotonic() - started < 30
    for i in range(3):
        assert _fired(box.alerts(f"g-race{i}", "write-below-system-dirs"),
                      "write-below-system-dirs")
        box("rm", "-f", f"g-race{i}")
    assert _guard_gone()


@needs_guard
def test_restart_is_watched_again(box):
    box("run", "-d", "--name", "g-restart", "--security-opt", "guard=default", "busybox",
        "sleep", "30")
    box("restart", "-t", "0", "g-restart")
    box("exec", "g-restart", "sh", "-c", "echo x > /etc/after-restart")
    alerts = [a for a in box.alerts("g-restart", "write-below-system-dirs", "/etc/after-restart")
              if a["event"].get("path") == "/etc/after-restart"]
    assert [a["rule"] for a in alerts] == ["write-below-system-dirs"]
    status = client.status()
    assert [c["name"] for c in status["containers"]].count("g-restart") == 1
    box("rm", "-f", "g-restart")


def test_key_bit_spreads_keys_over_the_whole_bitmap():
    # guard.bpf.c's key_bit() takes the top 16 bits of the mixed key: same formula here
    bits = {record.key_bit(slot, kind, record.path_hash(f"/etc/f{i}".encode()))
            for slot in (1, 2) for kind in (record.K_OPEN_EXACT, record.K_OPEN_NAME)
            for i in range(500)}
    assert all(0 <= b < record.KEYBITS for b in bits)
    assert len(bits) > 1850  # 2000 keys: few share a bit (deterministic inputs)
    assert record.key_bit(1, 2, 0) != record.key_bit(2, 2, 0)


def test_cgroup_table_entries_follow_the_watches_that_hash_to_them():
    # two cgroup ids with the same guard_cgtab entry (found by search: ids are the kernel's)
    first = 1000
    second = next(c for c in range(first + 1, first + 10**6)
                  if record.cgroup_slot(c) == record.cgroup_slot(first))
    index = record.cgroup_slot(first)

    class Table:
        def __init__(self) -> None:
            self.entries: dict[bytes, bytes] = {}

        def update(self, key: bytes, value: bytes) -> None:
            self.entries[key] = value

    guard = service.Guard.__new__(service.Guard)
    guard.cgtab, guard.by_slot = Table(), {}

    def watch(cgid: int, slot: int) -> service.Watch:
        return service.Watch(cid=f"c{slot}", name="", image="", labels={}, network="",
                             entrypoint="", root="", alerts="", cgroup="", cgid=cgid,
                             slot=slot, rules=[], source="", flags=record.W_ALL_READS)

    def entry() -> tuple[int, int, int]:
        return service.CGENTRY.unpack(guard.cgtab.entries[index.to_bytes(4, "little")])

    guard.by_slot[1] = watch(first, 1)
    guard.set_cgentry(index)
    assert entry() == (first, 1, record.W_ALL_READS)  # alone: the watch in place
    guard.by_slot[2] = watch(second, 2)
    guard.set_cgentry(index)
    assert entry() == (record.CG_SHARED, 0, 0)  # shared: the kernel asks guard_watched
    del guard.by_slot[1]
    guard.set_cgentry(index)
    assert entry() == (second, 2, record.W_ALL_READS)
    del guard.by_slot[2]
    guard.set_cgentry(index)
    assert entry() == (0, 0, 0)


def test_cgroup_slot_is_in_the_table():
    # guard.bpf.c's cgroup_slot(): the top 14 bits of the mixed cgroup id
    slots = {record.cgroup_slot(cgid) for cgid in range(1000, 3000)}
    assert all(0 <= b < record.CGSLOTS for b in slots)
    assert len(slots) > 1850
