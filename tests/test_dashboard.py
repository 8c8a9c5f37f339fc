"""`nsbox dashboard` end to end: the real server, a real engine, and Debian's chromium.

The browser is /usr/bin/chromium (apt; scripts/apt-packages.txt) driven by
Playwright's Python package over its DevTools protocol; Playwright never
downloads a browser here.  Without chromium or Playwright the browser tests
skip (fail in CI, which installs both).  The token checks need no browser:
they speak HTTP directly, so they see the status codes and cookies a browser
would hide.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import skip_or_fail
from test_engine_cli import Nsbox, one_line_error

CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a headless test: no sandbox (root), and nothing that
# reaches out to the network or updates itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]
MIB = 1024 * 1024


class Dashboard:
    """A running `nsbox dashboard`: its URL (with the token), base and token."""

    def __init__(self, nsbox: Nsbox, log: Path, *flags: str) -> None:
        self.log = log
        self.proc = subprocess.Popen([*nsbox.prefix, "dashboard", "--interval", "0.5", *flags],
                                     stdout=subprocess.PIPE, stderr=log.open("wb"), text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise AssertionError(f"no URL from nsbox dashboard: {log.read_text()}")
        self.url = line
        parts = urlsplit(line)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port
        self.token = dict(p.split("=", 1) for p in parts.query.split("&"))["token"]
        self.cookie = f"nsbox_dashboard_{self.port}"  # per port: dashboards side by side

    def request(self, method: str, path: str, cookie: str | None = None,
                body: str | None = None, headers: dict | None = None
                ) -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = f"{self.cookie}={cookie}"
        if body is not None:
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace") if method != "HEAD" else ""
        out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
        conn.close()
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def dashboard(nsbox, tmp_path):
    board = Dashboard(nsbox, tmp_path / "dashboard.log")
    yield board
    board.stop()


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary --user-data-dir.
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_url_is_local_with_a_random_token(dashboard):
    assert dashboard.host == "127.0.0.1"
    assert len(dashboard.token) >= 40  # secrets.token_urlsafe(32)
    assert urlsplit(dashboard.url).path == "/"


def test_requests_without_the_token_are_refused(nsbox, dashboard):
    nsbox("run", "-d", "--name", "web", "--stop-timeout", "1", "busybox", "sh", "-c",
          "echo hello-from-web; sleep 600")
    for method, path in [("GET", "/"), ("GET", "/c/web"), ("GET", "/c/web/logs"),
                         ("GET", "/static/dashboard.js"), ("GET", "/stream"),
                         ("GET", "/api/containers"), ("POST", "/c/web/stop"),
                         ("GET", "/?token=wrong"), ("GET", "/?token=")]:
        status, _, _ = dashboard.request(method, path)
        assert status == 403, (method, path)
    assert dashboard.request("GET", "/", cookie="wrong")[0] == 403
    # The token in the URL is traded for a cookie, and dropped from the address.
    status, headers, _ = dashboard.request("GET", f"/?token={dashboard.token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert f"{dashboard.cookie}={dashboard.token}" in cookie
    assert "HttpOnly" in cookie and re.search("SameSite=strict", cookie, re.I)
    status, _, page = dashboard.request("GET", "/", cookie=dashboard.token)
    assert status == 200 and "web" in page
    # Actions need the form's token too, and no foreign Origin.
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"',
                     dashboard.request("GET", "/c/web", cookie=dashboard.token)[2]).group(1)
    assert csrf != dashboard.token
    assert dashboard.request("POST", "/c/web/stop", cookie=dashboard.token, body="")[0] == 403
    assert dashboard.request("POST", "/c/web/stop", cookie=dashboard.token, body="csrf=00")[0] \
        == 403
    status, _, _ = dashboard.request("POST", "/c/web/stop", cookie=dashboard.token,
                                     body=f"csrf={csrf}",
                                     headers={"Origin": "http://evil.example"})
    assert status == 403
    assert dashboard.request("POST", "/c/web/kill", cookie=dashboard.token,
                             body=f"csrf={csrf}")[0] == 404  # not an action it offers
    assert nsbox("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "running"
    # Logs are a plain GET of the container's output.
    status, _, text = dashboard.request("GET", "/c/web/logs", cookie=dashboard.token)
    assert status == 200 and "stdout hello-from-web" in text
    # With both tokens, restart works: a new process, still running.
    pid = nsbox("inspect", "-f", "{{.State.Pid}}", "web").stdout.strip()
    status, headers, _ = dashboard.request("POST", "/c/web/restart", cookie=dashboard.token,
                                           body=f"csrf={csrf}",
                                           headers={"Origin": dashboard.base})
    assert status == 303 and headers["location"] == "/c/web"
    assert nsbox("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "running"
    assert nsbox("inspect", "-f", "{{.State.Pid}}", "web").stdout.strip() != pid
    # Another dashboard's cookie (another port) does not open this one.
    other = f"nsbox_dashboard_{dashboard.port + 1}={dashboard.token}"
    assert dashboard.request("GET", "/", headers={"Cookie": other})[0] == 403


def test_page_reads_without_javascript(nsbox, dashboard, browser):
    nsbox("run", "-d", "--name", "web", "--health-cmd", "true", "--health-interval", "1s",
          "--pids-limit", "77", "busybox", "sleep", "600")
    pid = int(nsbox("inspect", "-f", "{{.State.Pid}}", "web").stdout)
    deadline = time.monotonic() + 60
    while nsbox("inspect", "-f", "{{.State.Health.Status}}", "web").stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "the healthcheck never passed"
        time.sleep(0.2)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(dashboard.url)
    assert page.url == dashboard.base + "/"  # the token left the address bar
    row = page.locator("table#containers tr", has_text="web").inner_text()
    assert "running" in row and "healthy" in row
    assert "private: mnt uts ipc pid net cgroup" in row and "host: user time" in row
    with page.expect_navigation():
        page.click("table#containers a:text-is('web')")
    assert "healthy" in page.locator("section#health").inner_text()
    limits = page.locator("section#cgroup table.limits").inner_text()
    assert "--pids-limit" in limits and "77" in limits
    posture = page.locator("section#security").inner_text()
    assert "seccomp" in posture and "item(s) weaker than the default" in posture
    rows = page.locator("section#namespaces tbody tr")
    assert rows.count() == 8
    for i in range(8):
        kind, inode, host, status = (c.strip() for c in
                                     rows.nth(i).inner_text().split("\t"))
        assert int(inode) == os.stat(f"/proc/{pid}/ns/{kind}").st_ino
        assert status in ("private", "host")
    assert page.locator("#live").inner_text() == "static"  # no script ran
    context.close()


def test_browser_live_graph_stream_and_actions(nsbox, dashboard, browser, tmp_path):
    # Waits for /tmp/go, then puts 48 MiB into /dev/shm (tmpfs: charged to its memory cgroup).
    nsbox("run", "-d", "--name", "web", "--memory", "256m", "--health-cmd", "test -d /proc/1",
          "--health-interval", "2s", "busybox", "sh", "-c",
          "while [ ! -e /tmp/go ]; do sleep 0.2; done; "
          "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; sleep 600")
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(dashboard.url)
    assert "web" in page.locator("table#containers").inner_text()
    with page.expect_navigation():
        page.click("table#containers a:text-is('web')")
    assert page.locator("section#namespaces tbody tr").count() == 8
    assert "private" in page.locator("section#namespaces").inner_text()
    # Live: samples arrive over the stream and extend the memory graph.
    page.wait_for_function("() => window.nsboxDashboard.samples >= 2", timeout=30_000)
    page.wait_for_function("() => document.getElementById('live').textContent === 'live'")
    before = page.evaluate("() => Math.max(...window.nsboxDashboard.charts.mem.data[1])")
    points = page.evaluate("() => window.nsboxDashboard.charts.mem.data[0].length")
    nsbox("exec", "web", "touch", "/tmp/go")
    page.wait_for_function(
        f"() => {{ const d = window.nsboxDashboard.charts.mem.data[1];"
        f" return d[d.length - 1] > {before + 40 * MIB}; }}", timeout=60_000)
    assert page.evaluate("() => window.nsboxDashboard.charts.mem.data[0].length") > points
    mem_cell = page.locator("section#usage td[data-field=mem]").inner_text()
    assert mem_cell.endswith("MiB") and float(mem_cell.split()[0]) > 40
    deadline = time.monotonic() + 60
    while nsbox("inspect", "-f", "{{.State.Health.Status}}", "web").stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "the healthcheck never passed"
        time.sleep(0.2)
    # A page loaded later starts with the server's history of the graphs.
    shown = page.evaluate("() => window.nsboxDashboard.charts.mem.data[0].length")
    page.reload()
    page.wait_for_function("() => document.getElementById('live').textContent === 'live'")
    assert page.evaluate("() => window.nsboxDashboard.charts.mem.data[0].length") >= shown
    assert "healthy" in page.locator("section#health").inner_text()
    screenshot = Path(os.environ.get("NSBOX_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    page.wait_for_timeout(1500)  # a few more points on the graphs for the picture
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The actions are forms: stop posts, the server stops it and shows the page again.
    with page.expect_navigation():
        page.click("form[action='/c/web/stop'] button")
    assert page.url == dashboard.base + "/c/web"
    assert nsbox("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "exited"
    assert "exited" in page.locator(".summary").inner_text()
    assert page.locator("section#namespaces").inner_text().count("not running") == 1


def test_engine_events_reach_an_open_page(nsbox, dashboard, browser, tmp_path):
    try:
        from nsbox.engine import events
    except ImportError:
        pytest.skip("the event journal (nsbox/engine/events.py) is not in this tree")
    nsbox("run", "-d", "--name", "web", "busybox", "sleep", "600")
    page = browser.new_page()
    page.goto(dashboard.url)
    page.wait_for_function("() => document.getElementById('live').textContent === 'live'",
                           timeout=30_000)
    # An event straight from the journal reaches the open page through the stream.
    cid = nsbox("inspect", "-f", "{{.Id}}", "web").stdout.strip()
    events.emit(str(tmp_path / "lib"), "container", "pause", cid, {"name": "web"})
    page.wait_for_function("() => window.nsboxDashboard.events >= 1", timeout=30_000)
    assert "pause" in page.locator("#events li").first.inner_text()
    # A container started now: its events, and the list renders again with it.
    nsbox("run", "-d", "--name", "late", "busybox", "sleep", "600")
    page.wait_for_selector("table#containers tr:has-text('late')", timeout=30_000)
    assert "start" in page.locator("#events").inner_text()


def test_bad_flags_and_a_taken_port(nsbox, dashboard):
    for argv in (["--port", "70000"], ["--port", "x"], ["--address", "localhost.invalid"],
                 ["--interval", "0"], ["extra"]):
        proc = nsbox("dashboard", *argv, check=False, timeout=30)
        assert proc.returncode == 125, argv
        one_line_error(proc)
    proc = nsbox("dashboard", "--port", str(dashboard.port), check=False, timeout=30)
    assert proc.returncode == 125 and "cannot listen" in one_line_error(proc)
    assert proc.stdout == ""


def test_interrupt_stops_the_server(nsbox, tmp_path):
    board = Dashboard(nsbox, tmp_path / "log")
    assert board.request("GET", "/")[0] == 403
    assert board.stop() == 130  # Ctrl-C: as every nsbox command interrupted (128 + SIGINT)
    with pytest.raises(OSError):
        board.request("GET", "/")


@pytest.mark.slow
def test_wheel_ships_templates_static_files_and_the_licence(tmp_path):
    from test_packaging import VENV_PYTHON, copy_source

    src = copy_source(tmp_path / "src")
    proc = subprocess.run([VENV_PYTHON, "-m", "pip", "wheel", "--no-deps",
                           "--disable-pip-version-check", "-w", tmp_path / "dist", src],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("nsbox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    base = "nsbox/engine/dashboard/"
    here = Path(__file__).resolve().parent.parent / base
    expected = {base + str(p.relative_to(here)) for p in here.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected - names == set()
    assert base + "static/vendor/uplot/LICENSE" in names


def test_json_api_and_stream_format(nsbox, dashboard):
    nsbox("run", "-d", "--name", "web", "busybox", "sleep", "600")
    status, _, body = dashboard.request("GET", "/api/c/web", cookie=dashboard.token)
    assert status == 200
    detail = json.loads(body)
    assert [n["type"] for n in detail["namespaces"]] == ["mnt", "uts", "ipc", "pid", "net",
                                                         "user", "cgroup", "time"]
    conn = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
    conn.request("GET", "/stream", headers={"Cookie": f"{dashboard.cookie}={dashboard.token}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    deadline, kind, data = time.monotonic() + 30, None, None
    while data is None and time.monotonic() < deadline:
        line = resp.readline().rstrip(b"\n")
        if line.startswith(b"event: "):
            kind = line[7:]
        elif line.startswith(b"data: ") and kind == b"sample":
            data = json.loads(line[6:])
    conn.close()
    assert detail["id"] in data["containers"]


def test_stream_replays_journal_events_after_the_page(nsbox, dashboard):
    """Events between a page's render and its stream's start are not lost: ?since=."""
    nsbox("run", "-d", "--name", "web", "busybox", "sleep", "600")
    cid = nsbox("inspect", "-f", "{{.Id}}", "web").stdout.strip()
    deadline, actions = time.monotonic() + 30, []
    while "start" not in actions and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
        conn.request("GET", "/stream?since=0",
                     headers={"Cookie": f"{dashboard.cookie}={dashboard.token}"})
        resp, kind, actions = conn.getresponse(), None, []
        while True:  # the replay comes first; the first sample ends it
            line = resp.readline().rstrip(b"\n")
            if line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"data: ") and kind == b"engine":
                event = json.loads(line[6:])
                if event["id"] == cid:
                    actions.append(event["action"])
            elif line.startswith(b"data: ") and kind == b"sample":
                break
        conn.close()
        time.sleep(0.2)
    assert actions[:2] == ["create", "start"], actions


def test_without_the_dashboard_extra_it_says_what_to_install(tmp_path):
    """Starlette and uvicorn hidden from the interpreter: one line, exit 125, nothing served."""
    from test_packaging import VENV_PYTHON

    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "from nsbox.engine.cli import main\n"
            f"sys.exit(main(['--root', {str(tmp_path / 'lib')!r}, '--runroot', "
            f"{str(tmp_path / 'run')!r}, 'dashboard']))\n")
    proc = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125 and proc.stdout == ""
    assert "pip install 'nsbox[dashboard]'" in one_line_error(proc)


def test_history_keeps_the_time_of_its_latest_sample():
    # The stream's first event repeats the latest sample with that time, so a page
    # rendered with the history does not draw the point twice (dashboard.js).
    from nsbox.engine.dashboard.views import History

    history = History(minutes=1, interval=2)
    history.add({"a": {"cpu": 1.0, "mem": 10, "pids": 1}}, now=100.0004)
    history.add({"a": {"cpu": 2.0, "mem": 20, "pids": 2}}, now=102.0006)
    assert history.latest_time == 102.001 == history.columns("a")[0][-1]
    assert history.latest == {"a": {"cpu": 2.0, "mem": 20, "pids": 2}}
