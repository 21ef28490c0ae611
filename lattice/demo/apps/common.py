"""What every demo service shares: the server, the replies, the outbound call.

The services listen on 127.0.0.1 only: in the mesh their sidecar is the one
reachable from outside, so the app itself must not be.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

# The headers Istio's Bookinfo forwards. A request's identity in the mesh
# (trace, user) lives only in these, so an app that drops them breaks both
# distributed tracing and header-based routing one hop later.
PROPAGATED_HEADERS = (
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "user-agent",
    "cookie",
)

DEFAULT_FETCH_TIMEOUT = 3.0
UNAVAILABLE = 503


@dataclass(frozen=True)
class Reply:
    """One response, built by a route and written by `AppHandler`."""

    status: int
    body: bytes
    content_type: str


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), "application/json")


def html_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), "text/html; charset=utf-8")


def text_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


def not_found() -> Reply:
    return json_reply({"error": "not found"}, 404)


def service_version() -> str:
    return os.environ.get("SERVICE_VERSION") or "v1"


def numeric_id(path: str, prefix: str) -> int | None:
    """The product id in `<prefix>/<id>`, or None if the path is not that shape."""
    match = re.fullmatch(re.escape(prefix) + r"/(\d+)", path)
    return int(match.group(1)) if match else None


# Request headers as a handler has them (an HTTPMessage) or as a test gives them (a dict).
Headers = Mapping[str, str] | Message


def propagated_headers(incoming: Headers) -> dict[str, str]:
    """The subset of `incoming` that must travel on with outbound calls."""
    found = {name: incoming.get(name) for name in PROPAGATED_HEADERS}
    return {name: value for name, value in found.items() if value}


class AppHandler(BaseHTTPRequestHandler):
    """Request handler base: subclasses set `service` and implement `route`."""

    service = "app"
    # HTTP/1.1 keeps connections from the sidecar alive; every reply carries
    # Content-Length, which keep-alive requires.
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the peer's
    # delayed ACK (40 ms on Linux) on every keep-alive response.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return "lattice-demo"

    def route(self, path: str) -> Reply | None:
        """The reply for a GET of `path`, or None for 404."""
        return None

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        reply = text_reply("ok") if path == "/health" else self.route(path)
        self.send_reply(reply or not_found())

    def send_reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("x-served-by", f"{self.service}-{service_version()}")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        # A line per request drowns the demo's own output; opt in to debug.
        if os.environ.get("DEMO_APP_LOG") == "1":
            super().log_message(format, *args)


class AppServer(ThreadingHTTPServer):
    # Daemon threads: a keep-alive connection must not hold up exit.
    daemon_threads = True
    allow_reuse_address = True


def fetch_timeout() -> float:
    try:
        return float(os.environ.get("FETCH_TIMEOUT", DEFAULT_FETCH_TIMEOUT))
    except ValueError:
        return DEFAULT_FETCH_TIMEOUT


def proxy_hostport() -> str | None:
    """`host:port` of the HTTP proxy (the sidecar) from the environment."""
    proxy = _proxy_url()
    return urlsplit(proxy).netloc.rpartition("@")[2] or None if proxy else None


def proxy_authorization() -> str | None:
    """`Proxy-Authorization` for the sidecar, from the credential in its URL (`lattice run` puts
    one there unless the app is captured), as urllib's own ProxyHandler would send it."""
    proxy = _proxy_url()
    parts = urlsplit(proxy) if proxy else None
    if parts is None or parts.username is None:
        return None
    credential = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(credential.encode()).decode()


def _proxy_url() -> str | None:
    proxy = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy
    return proxy or None


# No ProxyHandler from the environment: urllib would consult NO_PROXY and
# send `reviews`-style hosts direct, bypassing the sidecar. The proxy is set
# per request instead (`Request.set_proxy`), which skips that check.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """GET `url` via the sidecar; failures become a 503-ish status, never raise.

    Callers degrade (Bookinfo shows "unavailable") rather than fail, so a
    down dependency is an ordinary status here, not an exception.
    """
    request = urllib.request.Request(url, headers=dict(headers))
    proxy = proxy_hostport()
    if proxy:
        credential = proxy_authorization()
        if credential:
            request.add_unredirected_header("Proxy-Authorization", credential)
        request.set_proxy(proxy, "http")
    try:
        with _OPENER.open(request, timeout=fetch_timeout()) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, http.client.HTTPException, ValueError) as error:
        return UNAVAILABLE, f"{type(error).__name__}: {error}".encode()


def listen_port() -> int | None:
    try:
        port = int(os.environ.get("PORT", ""))
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def _stop_on_signals(server: AppServer) -> None:
    # shutdown() waits for serve_forever() to return, which runs on this very
    # (main) thread — calling it from the handler directly would deadlock.
    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run(handler: type[AppHandler]) -> int:
    """Serve `handler` on 127.0.0.1:$PORT until SIGTERM; the process exit code."""
    port = listen_port()
    if port is None:
        print(
            f"{handler.service}: PORT must be set to a port number 1-65535 (got {os.environ.get('PORT')!r})",
            file=sys.stderr,
        )
        return 2
    with AppServer(("127.0.0.1", port), handler) as server:
        _stop_on_signals(server)
        if os.environ.get("DEMO_APP_LOG") == "1":
            print(f"{handler.service} {service_version()} on 127.0.0.1:{port}", file=sys.stderr)
        # A short poll keeps SIGTERM-to-exit well under Kubernetes-style grace.
        server.serve_forever(poll_interval=0.1)
    return 0
