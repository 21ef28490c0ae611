"""The agent's port: readiness for orchestrators, and Envoy's config and stats for the mesh tools.

Readiness and metrics (`/healthz/ready`, `/stats`, `/stats/prometheus`) answer anyone who can
reach the port, as a Prometheus target must. The config dump, the live tap, the telemetry window
and request records reveal identities, paths and config: they answer only `Authorization: Bearer
<agent key>`, the key the control plane gave this agent with its certificate (server/agent_port.py).

Served by agent/web.py's small HTTP/1.1 server, with its bounds: a connection that has not sent
a complete request head within `IDLE_TIMEOUT` of opening (or of its last answer) is closed
(slowloris); a malformed or oversized request is a 400.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Callable

from lattice.agent import metrics
from lattice.agent.envoy import EnvoyProcess
from lattice.agent.live import KEEP_SECONDS
from lattice.agent.observer import Observer
from lattice.agent.web import IDLE_TIMEOUT, Request, Response, Server, json_response, text_response

_CONFIG_DUMP_PARAMS = ("resource", "mask", "name_regex", "include_eds")


PRIVATE = ("/config_dump", "/lattice/")  # path prefixes that need the agent key


__all__ = ["IDLE_TIMEOUT", "PRIVATE", "agent_app"]


def agent_app(
    envoy: EnvoyProcess,
    app_healthy: Callable[[], bool],
    observer: Observer,
    agent_key: Callable[[], str] = lambda: "",
) -> Server:
    async def ready(request: Request) -> Response:
        live, healthy = await envoy.live(), app_healthy()
        body = {"envoy": "LIVE" if live else "NOT READY", "app": "healthy" if healthy else "unhealthy"}
        return json_response(body, status=200 if live and healthy else 503)

    async def config_dump(request: Request) -> Response:
        params = {k: v for k, v in request.query.items() if k in _CONFIG_DUMP_PARAMS}
        params.setdefault("include_eds", "true")
        return await _relay(envoy, "/config_dump", params)

    async def stats(request: Request) -> Response:
        return await _relay(
            envoy, "/stats", {k: v for k, v in request.query.items() if k in ("format", "filter", "usedonly")}
        )

    async def prometheus(request: Request) -> Response:
        """One scrape target per workload: Envoy's own statistics, then Istio's metrics. Compressed
        when the scraper accepts it, as Prometheus always does: Istio's labels repeat on every
        histogram bucket (some 40 KB of text per peer), and gzip takes them to a few percent."""
        status, body = await envoy.admin("/stats/prometheus", {})
        envoy_text = metrics.envoy_text(body.decode(errors="replace")) if status == 200 else ""
        ours = await observer.render()
        response = text_response(envoy_text + ours)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response.compressed_for(request)  # by Accept-Encoding (gzip); plain text otherwise

    async def window(request: Request) -> Response:
        try:
            seconds = min(float(request.query.get("seconds", "60")), KEEP_SECONDS)
        except ValueError:
            return json_response({"error": "seconds must be a number"}, status=400)
        await observer.refresh()  # up to this moment, not the last second's read
        return json_response(observer.window.summary(seconds))

    async def series(request: Request) -> Response:
        """The window in steps, for the console's charts (`?seconds=120&step=10`)."""
        try:
            seconds = min(float(request.query.get("seconds", "120")), KEEP_SECONDS)
            step = float(request.query.get("step", "10"))
        except ValueError:
            return json_response({"error": "seconds and step must be numbers"}, status=400)
        if not 1 <= step <= seconds:
            return json_response({"error": "step must be 1 second or more, and at most seconds"}, status=400)
        await observer.refresh()
        return json_response({"steps": observer.window.series(seconds, step)})

    async def tap(request: Request) -> None:
        """Requests as they arrive, one JSON object per line, until the client goes away."""
        queue = await observer.start_tap()  # Envoy streams every request before the client hears "tapping"
        try:
            response = await request.stream("application/x-ndjson")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 5.0)
                except TimeoutError:
                    await response.write(b"\n")  # keep-alive: notices a client that went away
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await observer.stop_tap(queue)

    async def requests(request: Request) -> Response:
        """This sidecar's records of one request (`?id=<x-request-id>`), or its latest failures."""
        with observer.lock:
            if request.query.get("id"):
                found = observer.records.find(request.query["id"])
            else:
                limit = request.query.get("limit", "50")
                if not limit.isdigit():
                    return json_response({"error": "limit must be a whole number"}, status=400)
                found = observer.records.recent_failures(min(int(limit), 500))
        return json_response({"records": found})

    def private(request: Request) -> Response | None:
        if request.path.startswith(PRIVATE) and not _authorized(request, agent_key()):
            return json_response(
                {"error": "this endpoint needs the agent's key: ask the control plane (lattice proxy-config, tap)"},
                status=401,
            )
        return None

    routes = {
        "/healthz/ready": ready,
        "/config_dump": config_dump,
        "/stats": stats,
        "/stats/prometheus": prometheus,
        "/lattice/v1/window": window,
        "/lattice/v1/tap": tap,
        "/lattice/v1/series": series,
        "/lattice/v1/requests": requests,
    }
    return Server(routes, guard=private)


def _authorized(request: Request, key: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return bool(key) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), key.encode())


async def _relay(envoy: EnvoyProcess, path: str, params: dict) -> Response:
    status, body = await envoy.admin(path, params)
    if status == 0:
        return json_response({"error": f"envoy admin unavailable: {body.decode(errors='replace')}"}, status=503)
    content_type = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
    return Response(body, status, {"Content-Type": content_type})
