"""A WebSocket test server run under `lattice run` (aiohttp), on 127.0.0.1:$PORT.

- `GET /ws`  upgrades to a WebSocket and answers each text message with `<service>-<version>: <message>`
- `GET /`    a plain HTTP answer, `<service>-<version> HTTP/<version the app saw>`

On SIGTERM it closes every open WebSocket with 1001 (going away) before it exits, as aiohttp's
documentation advises a server to.
"""

from __future__ import annotations

import os

from aiohttp import WSCloseCode, WSMsgType, web

OPEN = web.AppKey("open", set)
SERVED_BY = f"{os.environ.get('LATTICE_SERVICE', 'ws-echo')}-{os.environ.get('SERVICE_VERSION', 'v1')}"


async def socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.app[OPEN].add(ws)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{SERVED_BY}: {message.data}")
    finally:
        request.app[OPEN].discard(ws)
    return ws


async def close_all(application: web.Application) -> None:
    for ws in list(application[OPEN]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")


async def plain(request: web.Request) -> web.Response:
    version = f"{request.version.major}.{request.version.minor}"
    return web.Response(text=f"{SERVED_BY} HTTP/{version}", headers={"x-served-by": SERVED_BY})


def app() -> web.Application:
    application = web.Application()
    application[OPEN] = set()
    application.on_shutdown.append(close_all)
    application.router.add_get("/ws", socket)
    application.router.add_get("/", plain)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
