"""The console's server side (see `lattice.console`): static page, one-time login, sessions, and
the live service graph (`/api/v1/graph`, and its stream of server-sent events).

Sessions: a one-time ticket (`POST /api/v1/console/tickets`, admin credential) is exchanged at
`/ui/login` for a random session id in an HttpOnly, SameSite=Strict cookie; the REST API accepts
the cookie as it accepts the admin credential, but a request that changes something must also
come from the console's own origin. Tickets and sessions live in memory: a restarted control
plane asks for a new login.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from importlib import resources
from pathlib import Path

from aiohttp import web

from lattice.api import KINDS
from lattice.mesh.telemetry import percentile
from lattice.server import console_views as views
from lattice.server.observe import edges, stat, windows
from lattice.server.why import gather, recent

COOKIE = "lattice_session"
TICKET_SECONDS = 60
SESSION_SECONDS = 12 * 3600
PUSH_SECONDS = 2.0
STATIC = Path(str(resources.files("lattice.console") / "static"))
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class Sessions:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._tickets: dict[str, float] = {}
        self._sessions: dict[str, float] = {}

    def ticket(self) -> str:
        self._expire()
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = self._clock() + TICKET_SECONDS
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """A new session for a valid ticket, which is then spent; None otherwise."""
        self._expire()
        if self._tickets.pop(ticket, None) is None:
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = self._clock() + SESSION_SECONDS
        return session

    def valid(self, session: str | None) -> bool:
        self._expire()
        return bool(session) and session in self._sessions

    def _expire(self) -> None:
        now = self._clock()
        for table in (self._tickets, self._sessions):
            for key in [k for k, until in table.items() if until < now]:
                del table[key]


def graph(summaries, workloads, seconds: float) -> dict:
    """Nodes (every registered workload, grouped by service, with what it served and what its
    callers saw) and edges (who called whom: requests/s, success rate, p99, mutual TLS)."""
    rows = {(r["namespace"], r["workload"]): r for r in stat(summaries, seconds)}
    nodes = [
        {
            "id": w.name,
            "namespace": w.namespace,
            "service": w.service,
            "version": w.version,
            "kind": w.kind,
            "healthy": w.healthy,
            "stat": rows.get((w.namespace, w.name)),
        }
        for w in sorted({w.name: w for w in workloads}.values(), key=lambda w: (w.service, w.name))
    ]
    return {"window_seconds": seconds, "nodes": nodes, "edges": _edges(summaries, seconds)}


def _edges(summaries, seconds: float) -> list[dict]:
    """Edges as `lattice edges` finds them, with the callee's numbers for each (its sidecar saw them)."""
    numbers: dict[tuple[str, str], dict] = {}
    for w, summary in summaries:
        for row in summary["peers"]:
            if row["reporter"] != "destination" or not row["requests"]:
                continue
            n = numbers.setdefault((row["peer_workload"], w.name), {"requests": 0, "failures": 0, "latency": {}})
            n["requests"] += row["requests"]
            n["failures"] += row["failures"]
            for index, count in row["latency"].items():
                n["latency"][int(index)] = n["latency"].get(int(index), 0) + count
    out = []
    for e in edges(summaries):
        counted = numbers.get((e["source"], e["destination"]))
        if counted is None:
            continue
        out.append(
            {
                "source": e["source"],
                "destination": e["destination"],
                "mtls": e["secured"],
                "requests": counted["requests"],
                "rps": round(counted["requests"] / seconds, 2),
                "success_rate": round((counted["requests"] - counted["failures"]) / counted["requests"], 4),
                "p99_ms": percentile(counted["latency"], 0.99),
            }
        )
    return out


class Console:
    def __init__(self, registry, session, api=None) -> None:
        self.registry = registry
        self._session = session  # () -> the shared aiohttp client session (for asking the agents)
        self.api = api  # the RestApi: the mesh as pushed, proxies' status (the pages read what the CLI reads)
        self.sessions = Sessions()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.root)
        app.router.add_get("/ui/", self.page)
        app.router.add_get("/ui/login", self.login)
        app.router.add_get("/ui/static/{name}", self.static)
        app.router.add_post("/api/v1/console/tickets", self.new_ticket)
        app.router.add_get("/api/v1/graph", self.graph)
        app.router.add_get("/api/v1/graph/stream", self.graph_stream)
        app.router.add_get("/api/v1/console/services/{namespace}/{name}", self.service_page)
        app.router.add_get("/api/v1/console/workloads/{id}", self.workload_page)
        app.router.add_get("/api/v1/console/series", self.series)
        app.router.add_get("/api/v1/console/config", self.config_page)
        app.router.add_get("/api/v1/console/reach", self.reach)
        app.router.add_get("/api/v1/console/waterfall/{request_id}", self.waterfall)

    # --- who may: the REST API's middleware asks ---

    @staticmethod
    def public(path: str) -> bool:
        """The page and its assets hold no data: the data comes from the API, with the session."""
        return path in ("/ui", "/ui/", "/ui/login") or path.startswith("/ui/static/")

    def admits(self, request: web.Request) -> bool:
        """A request with a valid session cookie; one that changes something must also come from
        the console's own origin (SameSite covers browsers that honour it, this the rest)."""
        if not self.sessions.valid(request.cookies.get(COOKIE)):
            return False
        if request.method in ("GET", "HEAD"):
            return True
        origin = request.headers.get("Origin", "")
        return origin == f"{request.scheme}://{request.host}"

    # --- pages ---

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def page(self, request: web.Request) -> web.Response:
        if not self.sessions.valid(request.cookies.get(COOKIE)):
            return web.Response(
                status=401,
                text="Not logged in. Run `lattice dashboard` (or `lattice dashboard --url`) for a login link.\n",
            )
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if "/" in name or name.startswith(".") or not (STATIC / name).is_file():
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        path = STATIC / name
        return web.Response(
            body=path.read_bytes(),
            content_type=_TYPES.get(path.suffix, "application/octet-stream"),
            headers={
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
                "X-Frame-Options": "DENY",
            },
        )

    async def login(self, request: web.Request) -> web.Response:
        session = self.sessions.redeem(request.query.get("ticket", ""))
        if session is None:
            return web.Response(
                status=401, text="This login link was used already or has expired. Run `lattice dashboard` again.\n"
            )
        response = web.HTTPFound("/ui/")  # the ticket leaves the address bar (and history) at once
        response.set_cookie(
            COOKIE, session, httponly=True, samesite="Strict", path="/", max_age=SESSION_SECONDS, secure=request.secure
        )
        raise response

    async def new_ticket(self, request: web.Request) -> web.Response:
        ticket = self.sessions.ticket()
        return web.json_response(
            {"ticket": ticket, "path": f"/ui/login?ticket={ticket}", "expires_in_seconds": TICKET_SECONDS}
        )

    # --- the live graph ---

    async def _graph(self, seconds: float) -> dict:
        workloads = self.registry.workloads()
        summaries, silent = await windows(self._session(), workloads, seconds)
        return graph(summaries, workloads, seconds) | {"unreachable": silent, "time": time.time()}

    async def graph(self, request: web.Request) -> web.Response:
        return web.json_response(await self._graph(_seconds(request)))

    async def graph_stream(self, request: web.Request) -> web.StreamResponse:
        """The graph, pushed every PUSH_SECONDS as a server-sent event, until the page goes away."""
        seconds = _seconds(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            while True:
                data = json.dumps(await self._graph(seconds))
                await response.write(f"event: graph\ndata: {data}\n\n".encode())
                await asyncio.sleep(PUSH_SECONDS)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    # --- the service and workload pages ---

    def _proxies(self, workloads) -> list[dict]:
        return [views.proxy_row(self.api._proxy_status(w)) for w in workloads]

    async def service_page(self, request: web.Request) -> web.Response:
        """A service's endpoints (health, sync state, certificate expiry) and the routes and
        policies that apply to it; its numbers come from /api/v1/stat and /series."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        workloads = [
            w
            for w in self.registry.workloads()
            if w.service == name and w.namespace == namespace and w.kind != "gateway"
        ]
        if not workloads:
            raise _not_found(f"no service {name!r} in namespace {namespace!r} has a registered workload")
        snapshot = self.api.pusher.snapshot
        return web.json_response(
            {
                "service": name,
                "namespace": namespace,
                "host": snapshot.resolve_host(name, namespace),
                "proxies": self._proxies(sorted(workloads, key=lambda w: w.id)),
                "config": views.applies_to(snapshot, workloads),
            }
        )

    async def workload_page(self, request: web.Request) -> web.Response:
        """One workload: identity, certificate, sync state, its traffic in and out over the
        window, its latest failed requests (each a `why` handle), the config that selects it."""
        ref = request.match_info["id"]
        w = self.registry.get(ref) or next((x for x in self.registry.workloads() if x.name == ref), None)
        if w is None:
            raise _not_found(f"no workload {ref!r}; `lattice status` lists them")
        seconds = _seconds(request)
        (summaries, silent), (failures, _) = await asyncio.gather(
            windows(self._session(), (w,), seconds), recent(self._session(), (w,), 20)
        )
        return web.json_response(
            {
                "proxy": self._proxies([w])[0],
                "service_account": w.service_account,
                "labels": dict(w.labels),
                "window_seconds": seconds,
                "traffic": views.traffic(summaries[0][1], seconds) if summaries else None,
                "unreachable": silent,
                "failures": failures,
                "config": views.applies_to(self.api.pusher.snapshot, [w]),
            }
        )

    async def series(self, request: web.Request) -> web.Response:
        """A service's or workload's numbers over time, one point per step (`?name=&by=service`)."""
        q = request.query
        by, name, namespace = q.get("by", "service"), q.get("name", ""), q.get("namespace", "default")
        if by not in ("service", "workload") or not name:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "give name=<service or workload> and by=service|workload"}),
                content_type="application/json",
            )
        seconds, step = _seconds(request, "seconds", "120"), _seconds(request, "step", "5")
        targets = [
            w
            for w in self.registry.workloads()
            if w.namespace == namespace and (w.service if by == "service" else w.name) == name
        ]
        answers, silent = await views.series(self._session(), targets, seconds, min(step, seconds))
        return web.json_response(
            {"step_seconds": step, "points": views.chart(answers, step, name, namespace, by), "unreachable": silent}
        )

    # --- the config page ---

    async def config_page(self, request: web.Request) -> web.Response:
        """Every stored resource, its analysis warnings, and the workloads whose traffic it decides."""
        stored = await asyncio.to_thread(self.api.store.list)
        return web.json_response(views.config(self.api.pusher.snapshot, stored, KINDS))

    async def reach(self, request: web.Request) -> web.Response:
        """Which service may call which (`GET /`), as the authorization policies decide it."""
        return web.json_response(views.reach(self.api.pusher.snapshot))

    # --- a request's waterfall ---

    async def waterfall(self, request: web.Request) -> web.Response:
        """A request's hops across sidecars on one time axis, from their records and its trace."""
        request_id = request.match_info["request_id"].strip()
        if not request_id or len(request_id) > 200:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "give the request's x-request-id (as tap and why show it)"}),
                content_type="application/json",
            )
        records, silent = await gather(self._session(), self.registry.workloads(), request_id)
        trace = self.api.traces.with_attribute(
            views.REQUEST_ID_TAG, lambda value: views.same_request(value, request_id)
        )
        return web.json_response(views.waterfall(request_id, records, trace) | {"unreachable": silent})


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def _seconds(request: web.Request, name: str = "window", default: str = "10") -> float:
    try:
        seconds = float(request.query.get(name, default).rstrip("s"))
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= 300:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be 1 to 300 seconds"}), content_type="application/json"
        )
    return seconds
