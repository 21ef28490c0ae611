"""The agent's port: readiness for orchestrators, and Envoy's config and stats for the mesh tools."""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from lattice.agent.envoy import EnvoyProcess

_CONFIG_DUMP_PARAMS = ("resource", "mask", "name_regex", "include_eds")


def agent_app(envoy: EnvoyProcess, app_healthy: Callable[[], bool]) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        live, healthy = await envoy.live(), app_healthy()
        body = {"envoy": "LIVE" if live else "NOT READY", "app": "healthy" if healthy else "unhealthy"}
        return web.json_response(body, status=200 if live and healthy else 503)

    async def config_dump(request: web.Request) -> web.Response:
        params = {k: v for k, v in request.query.items() if k in _CONFIG_DUMP_PARAMS}
        params.setdefault("include_eds", "true")
        return await _relay(envoy, "/config_dump", params)

    async def stats(request: web.Request) -> web.Response:
        return await _relay(envoy, "/stats", {k: v for k, v in request.query.items() if k in ("format", "filter", "usedonly")})

    async def prometheus(request: web.Request) -> web.Response:
        return await _relay(envoy, "/stats/prometheus", {})

    app = web.Application()
    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/prometheus", prometheus)
    return app


async def _relay(envoy: EnvoyProcess, path: str, params: dict) -> web.Response:
    status, body = await envoy.admin(path, params)
    if status == 0:
        return web.json_response({"error": f"envoy admin unavailable: {body.decode(errors='replace')}"}, status=503)
    content_type = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
    return web.Response(body=body, status=status, content_type=content_type)
