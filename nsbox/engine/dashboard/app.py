"""`nsbox dashboard`: a Starlette app on uvicorn, for the user who started it.

Access: the URL printed at start carries a random token (?token=...).  The
first request with it gets the token back as an HttpOnly, SameSite=Strict
cookie and is redirected to the same page without it, so the token does not
stay in the address bar or the history; every request without the cookie or
the query token is refused with 403.  Actions (stop, restart) are POSTs that
must also carry a form field derived from the token (`csrf`), and a POST whose
Origin is not this server is refused: another site cannot make the browser
act, even before the SameSite cookie rule.

Pages are rendered by the server (Jinja2, autoescaped): the first page lists
every container; /c/NAME shows one container's namespaces beside the host's,
its cgroups and limits, usage graphs, security posture, health and events.
/stream is server-sent events: `sample` (every interval: the containers'
usage and state) and `engine` (each new journal event); dashboard.js draws
the graphs with the vendored uPlot and updates the page from the stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nsbox.engine.dashboard import views
from nsbox.errors import ContainerNotFound, NsboxError

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(HERE, "static")
TEMPLATES = os.path.join(HERE, "templates")
# Cookies are per host, not per port: each dashboard names its own, so that two
# of them (root's and a user's) do not overwrite each other's in one browser.
COOKIE = "nsbox_dashboard"


def cookie_name(port: int) -> str:
    return f"{COOKIE}_{port}" if port else COOKIE


def csrf_token(token: str) -> str:
    """The actions' form token: derived, so the cookie's value never appears in a page."""
    return hmac.new(token.encode(), b"nsbox-dashboard-actions", hashlib.sha256).hexdigest()


class TokenGate:
    """ASGI middleware: the token (cookie, or ?token= once) or 403."""

    def __init__(self, app, token: str, cookie: str = COOKIE) -> None:  # noqa: ANN001
        self.app = app  # the ASGI app behind the gate
        self.token = token
        self.cookie = cookie

    def _ok(self, value: str | None) -> bool:
        return bool(value) and secrets.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await PlainTextResponse("Forbidden", status_code=403)(scope, receive, send)
            return
        request = Request(scope)
        if self._ok(request.cookies.get(self.cookie)):
            await self.app(scope, receive, send)
            return
        if self._ok(request.query_params.get("token")) and request.method == "GET":
            # Trade the URL's token for the cookie, and drop it from the address.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict",
                                path="/")
            await response(scope, receive, send)
            return
        await PlainTextResponse("Forbidden: open the URL nsbox dashboard printed\n",
                                status_code=403)(scope, receive, send)


class Hub:
    """Fan-out of samples and journal events to the open streams."""

    def __init__(self, keep: int = 200) -> None:
        self.seq = 0
        self.items: deque = deque(maxlen=keep)
        self.changed = asyncio.Event()

    def publish(self, kind: str, data: dict) -> None:
        self.seq += 1
        self.items.append((self.seq, kind, data))
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def after(self, seq: int) -> list[tuple[int, str, dict]]:
        return [item for item in self.items if item[0] > seq]


class Dashboard:
    """The app's state: the engine, the samples, the stream hub."""

    def __init__(self, engine, token: str, interval: float = 2.0,  # noqa: ANN001 - Engine
                 minutes: float = 5, cookie: str = COOKIE) -> None:
        import jinja2
        self.engine = engine
        self.token = token
        self.csrf = csrf_token(token)
        self.cookie = cookie
        self.interval = interval
        self.history = views.History(minutes, interval)
        self.sampler = views.Sampler()
        self.hub = Hub()
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                            autoescape=True)
        self.templates.filters["bytes"] = views.human_bytes
        self._tasks: list[asyncio.Task] = []
        self._stop = threading.Event()

    # ------------------------------------------------------------ background
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._sampling()))
        if views.events_module() is not None:
            threading.Thread(target=self._follow_journal, args=(loop,), daemon=True,
                             name="nsbox-dashboard-events").start()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()

    async def _sampling(self) -> None:
        while True:
            try:
                samples = await run_in_threadpool(self.sampler, self.engine)
                now = time.time()
                self.history.add(samples, now)
                self.hub.publish("sample", {"time": now, "containers": samples})
            except Exception:  # noqa: BLE001 - one failed sample must not end the graphs
                log.exception("dashboard: sampling failed")
            await asyncio.sleep(self.interval)

    def _follow_journal(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: the journal's follow() blocks until an event; hand each to the loop."""
        events = views.events_module()
        try:
            for event in events.follow(self.engine.root):
                if self._stop.is_set():
                    return
                try:
                    loop.call_soon_threadsafe(self.hub.publish, "engine",
                                              views.event_dict(event))
                except RuntimeError:  # the loop closed: the server is shutting down
                    return
        except Exception:  # noqa: BLE001 - the page still works without live events
            log.exception("dashboard: following the event journal failed")

    # ----------------------------------------------------------------- pages
    def render(self, template: str, status: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(template).render(csrf=self.csrf, **context)
        return HTMLResponse(html, status_code=status,
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; "
                                     "img-src 'self' data:; style-src 'self' 'unsafe-inline'",
                                     "X-Frame-Options": "DENY"})

    async def index(self, request: Request) -> Response:
        seq = self.hub.seq  # before the journal is read: the stream replays what follows
        rows = await run_in_threadpool(views.overview, self.engine)
        for row in rows:
            row["usage"] = self.history.latest.get(row["id"])
        events = await run_in_threadpool(views.recent_events, self.engine, None, 30)
        return self.render("index.html", containers=rows, events=events,
                           interval=self.interval, seq=seq)

    def _detail(self, ref: str) -> dict:
        engine = self.engine
        inspect = engine.inspect(ref)
        cid = inspect["Id"]
        return {"c": inspect, "id": cid, "name": inspect["Name"].lstrip("/"),
                "health": (inspect["State"].get("Health") or {}),
                "namespaces": views.namespaces(engine, cid),
                "cgroup": views.cgroup_view(engine, cid),
                "posture": views.posture(engine, cid),
                "events": views.recent_events(engine, cid, 30)}

    async def container(self, request: Request) -> Response:
        seq = self.hub.seq
        try:
            detail = await run_in_threadpool(self._detail, request.path_params["ref"])
        except ContainerNotFound as exc:
            return self.render("error.html", status=404, message=str(exc))
        cid = detail["id"]
        return self.render("container.html", **detail, usage=self.history.latest.get(cid),
                           series=json.dumps(self.history.columns(cid)),
                           interval=self.interval, seq=seq)

    async def logs(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        try:
            tail = max(1, min(int(request.query_params.get("tail", "200")), 5000))
        except ValueError:
            tail = 200

        def read() -> str:
            lines = []
            for stamp, stream, data in self.engine.logs(ref, tail=tail):
                text = data.decode(errors="replace")
                lines.append(f"{stamp} {stream} {text}" if text.endswith("\n")
                             else f"{stamp} {stream} {text}\n")
            return "".join(lines)
        try:
            text = await run_in_threadpool(read)
        except ContainerNotFound as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})

    async def action(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            return PlainTextResponse("Forbidden: cross-origin action\n", status_code=403)
        # The forms are urlencoded and small: the standard library parses them
        # (Starlette's form parser would need python-multipart for nothing).
        body = await request.body()
        form = parse_qs(body[:4096].decode(errors="replace"))
        if not secrets.compare_digest((form.get("csrf") or [""])[0].encode(),
                                      self.csrf.encode()):
            return PlainTextResponse("Forbidden: missing or wrong action token\n",
                                     status_code=403)
        ref, verb = request.path_params["ref"], request.path_params["verb"]
        call = {"stop": self.engine.stop, "restart": self.engine.restart}.get(verb)
        if call is None:  # what nsbox allows from here: stop, restart (and GET logs)
            return PlainTextResponse(f"no such action: {verb}\n", status_code=404)
        try:
            await run_in_threadpool(call, ref)
        except ContainerNotFound as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        except NsboxError as exc:
            return self.render("error.html", status=409, message=f"{verb}: {exc}")
        return RedirectResponse(f"/c/{ref}", status_code=303)

    async def api_containers(self, request: Request) -> Response:
        rows = await run_in_threadpool(views.overview, self.engine)
        return JSONResponse({"containers": rows, "usage": self.history.latest})

    async def api_container(self, request: Request) -> Response:
        try:
            detail = await run_in_threadpool(self._detail, request.path_params["ref"])
        except ContainerNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        detail.pop("c")
        detail["series"] = self.history.columns(detail["id"])
        return JSONResponse(detail)

    async def stream(self, request: Request) -> Response:
        hub = self.hub

        # Where the client left off: the page's render (?since=) or, when the
        # browser reconnects, the last id it got (Last-Event-ID).  Journal events
        # after it are replayed, so none falls between the page and its stream.
        since = request.headers.get("last-event-id") or request.query_params.get("since")
        try:
            start = int(since) if since is not None else hub.seq
        except ValueError:
            start = hub.seq
        if not 0 <= start <= hub.seq:
            start = hub.seq

        async def events():
            seq = hub.seq
            yield "retry: 2000\n\n"
            for number, kind, data in hub.after(start):
                if kind == "engine":
                    yield f"id: {number}\nevent: engine\ndata: {json.dumps(data)}\n\n"
            if self.history.latest:  # the current state at once, not after one interval
                # With the time it was sampled: a page whose graph already has that
                # point (from the history it was rendered with) does not add it twice.
                data = {"time": self.history.latest_time, "containers": self.history.latest}
                yield f"id: {seq}\nevent: sample\ndata: {json.dumps(data)}\n\n"
            while True:
                waiter = hub.changed
                try:
                    await asyncio.wait_for(waiter.wait(), 15)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                for number, kind, data in hub.after(seq):
                    seq = number
                    yield f"id: {number}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------- app
    def app(self):  # noqa: ANN201 - the ASGI app (TokenGate around Starlette)
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(app):  # noqa: ANN001, ANN202
            await self.start()
            yield
            await self.stop()

        routes = [
            Route("/", self.index),
            Route("/c/{ref}", self.container),
            Route("/c/{ref}/logs", self.logs),
            Route("/c/{ref}/{verb:str}", self.action, methods=["POST"]),
            Route("/api/containers", self.api_containers),
            Route("/api/c/{ref}", self.api_container),
            Route("/stream", self.stream),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        app = Starlette(routes=routes, lifespan=lifespan)
        return TokenGate(app, self.token, self.cookie)


def bind(address: str, port: int):  # noqa: ANN201 - socket.socket
    """A listening socket on ADDRESS:PORT (0: a free port the kernel picks)."""
    import socket
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def serve(engine, address: str = "127.0.0.1", port: int = 0,  # noqa: ANN001 - Engine
          interval: float = 2.0, announce=print) -> None:  # noqa: ANN001
    """Run the dashboard until interrupted; ANNOUNCE gets the URL with its token."""
    import uvicorn

    token = secrets.token_urlsafe(32)
    sock = bind(address, port)
    host, bound = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    dashboard = Dashboard(engine, token, interval=interval, cookie=cookie_name(bound))
    config = uvicorn.Config(dashboard.app(), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    announce(f"http://{shown}:{bound}/?token={token}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
