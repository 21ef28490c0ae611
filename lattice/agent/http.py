"""The agent's port: readiness for orchestrators, and Envoy's config and stats for the mesh tools.

Readiness and metrics (`/healthz/ready`, `/stats`, `/stats/prometheus`) answer anyone who can
reach the port, as a Prometheus target must. The config dump, the live tap, the telemetry window
and request records reveal identities, paths and config: they answer only `Authorization: Bearer
<agent key>`, the key the control plane gave this agent with its certificate (server/agent_port.py).

A connection that has not sent a complete request head within `IDLE_TIMEOUT` of opening (or of its
last answer) is closed (slowloris): `runner_options()` for its web.AppRunner.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Callable

from aiohttp import web

from lattice.agent import metrics
from lattice.agent.envoy import EnvoyProcess
from lattice.agent.live import KEEP_SECONDS
from lattice.agent.observer import Observer

_CONFIG_DUMP_PARAMS = ("resource", "mask", "name_regex", "include_eds")


PRIVATE = ("/config_dump", "/lattice/")  # path prefixes that need the agent key


IDLE_TIMEOUT = 20.0  # seconds, as the control plane's ports (server/limits.py)


def runner_options() -> dict:
    return {"keepalive_timeout": IDLE_TIMEOUT}


def agent_app(
    envoy: EnvoyProcess,
    app_healthy: Callable[[], bool],
    observer: Observer,
    agent_key: Callable[[], str] = lambda: "",
) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        live, healthy = await envoy.live(), app_healthy()
        body = {"envoy": "LIVE" if live else "NOT READY", "app": "healthy" if healthy else "unhealthy"}
        return web.json_response(body, status=200 if live and healthy else 503)

    async def config_dump(request: web.Request) -> web.Response:
        params = {k: v for k, v in request.query.items() if k in _CONFIG_DUMP_PARAMS}
        params.setdefault("include_eds", "true")
        return await _relay(envoy, "/config_dump", params)

    async def stats(request: web.Request) -> web.Response:
        return await _relay(
            envoy, "/stats", {k: v for k, v in request.query.items() if k in ("format", "filter", "usedonly")}
        )

    async def prometheus(request: web.Request) -> web.Response:
        """One scrape target per workload: Envoy's own statistics, then Istio's metrics. Compressed
        when the scraper accepts it, as Prometheus always does: Istio's labels repeat on every
        histogram bucket (some 40 KB of text per peer), and gzip takes them to a few percent."""
        status, body = await envoy.admin("/stats/prometheus", {})
        envoy_text = metrics.envoy_text(body.decode(errors="replace")) if status == 200 else ""
        ours = await observer.render()
        response = web.Response(
            text=envoy_text + ours,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )
        response.enable_compression()  # by Accept-Encoding (gzip, deflate); plain text otherwise
        return response

    async def window(request: web.Request) -> web.Response:
        try:
            seconds = min(float(request.query.get("seconds", "60")), KEEP_SECONDS)
        except ValueError:
            return web.json_response({"error": "seconds must be a number"}, status=400)
        await observer.refresh()  # up to this moment, not the last second's read
        return web.json_response(observer.window.summary(seconds))

    async def series(request: web.Request) -> web.Response:
        """The window in steps, for the console's charts (`?seconds=120&step=10`)."""
        try:
            seconds = min(float(request.query.get("seconds", "120")), KEEP_SECONDS)
            step = float(request.query.get("step", "10"))
        except ValueError:
            return web.json_response({"error": "seconds and step must be numbers"}, status=400)
        if not 1 <= step <= seconds:
            return web.json_response({"error": "step must be 1 second or more, and at most seconds"}, status=400)
        await observer.refresh()
        return web.json_response({"steps": observer.window.series(seconds, step)})

    async def tap(request: web.Request) -> web.StreamResponse:
        """Requests as they arrive, one JSON object per line, until the client goes away."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        queue = await observer.start_tap()  # Envoy streams every request before the client hears "tapping"
        try:
            await response.prepare(request)
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
        return response

    async def requests(request: web.Request) -> web.Response:
        """This sidecar's records of one request (`?id=<x-request-id>`), or its latest failures."""
        with observer.lock:
            if request.query.get("id"):
                found = observer.records.find(request.query["id"])
            else:
                limit = request.query.get("limit", "50")
                if not limit.isdigit():
                    return web.json_response({"error": "limit must be a whole number"}, status=400)
                found = observer.records.recent_failures(min(int(limit), 500))
        return web.json_response({"records": found})

    @web.middleware
    async def private(request: web.Request, handler):
        if request.path.startswith(PRIVATE) and not _authorized(request, agent_key()):
            return web.json_response(
                {"error": "this endpoint needs the agent's key: ask the control plane (lattice proxy-config, tap)"},
                status=401,
            )
        return await handler(request)

    app = web.Application(middlewares=[private])
    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/prometheus", prometheus)
    app.router.add_get("/lattice/v1/window", window)
    app.router.add_get("/lattice/v1/tap", tap)
    app.router.add_get("/lattice/v1/series", series)
    app.router.add_get("/lattice/v1/requests", requests)
    return app


def _authorized(request: web.Request, key: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return bool(key) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), key.encode())


async def _relay(envoy: EnvoyProcess, path: str, params: dict) -> web.Response:
    status, body = await envoy.admin(path, params)
    if status == 0:
        return web.json_response({"error": f"envoy admin unavailable: {body.decode(errors='replace')}"}, status=503)
    content_type = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
    return web.Response(body=body, status=status, content_type=content_type)
