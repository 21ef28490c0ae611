"""Slow and silent clients on the control plane's ports (slowloris): each connection gets a bounded
time to say something, and a request a bounded time to arrive.

- REST API and agent API (aiohttp): a connection that has not delivered a complete request head
  within `IDLE_TIMEOUT` of opening (or of its previous answer) is closed; that covers both a
  silent socket and one trickling its headers a byte at a time, since aiohttp's keep-alive timer
  runs from the connection's start and is not reset by partial data. A request body must arrive
  within `BODY_TIMEOUT` (408 otherwise); a handler marked `@streams_body` reads (and bounds) its
  own body instead, in size as well as in time. Handlers that stream answers (tap, the console's event
  stream) are not idle, and are not cut.
- xDS (gRPC): the TLS handshake and HTTP/2 preface must complete within `HANDSHAKE_TIMEOUT`;
  answers from the control plane are bounded in size (server/main.py).
- The process's open-file limit is raised to its hard limit at start, so idle sockets in the
  seconds before they are cut do not exhaust descriptors and starve real clients.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from aiohttp import web

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 20.0  # seconds to a complete request head; longer than aiohttp clients keep idle connections (15 s)
BODY_TIMEOUT = 20.0  # seconds for a request body to arrive once its head has
HANDSHAKE_TIMEOUT_MS = 10_000
GRPC_OPTIONS = [("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS)]


def runner_options() -> dict:
    """Keyword arguments for web.AppRunner."""
    return {"keepalive_timeout": IDLE_TIMEOUT}


def streams_body(handler):
    """Mark a handler that reads its request body itself, within `BODY_TIMEOUT` and a size limit
    of its own (larger than the app's client_max_size): `bounded_body` leaves that body alone."""
    handler.streams_body = True
    return handler


@web.middleware
async def bounded_body(request: web.Request, handler):
    """Read a request's body (bounded in size by the app's client_max_size) within BODY_TIMEOUT;
    handlers then read it from memory."""
    if getattr(request.match_info.handler, "streams_body", False):
        return await handler(request)
    if request.body_exists and request.can_read_body:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {BODY_TIMEOUT:g} s\n") from None
    return await handler(request)


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        except (ValueError, OSError) as e:  # a container may forbid it; the default limit still works
            log.debug("open-file limit left at %s: %s", soft, e)
