"""A test backend run under `lattice run`: answers every request with what it saw, and misbehaves on demand.

Behaviour per request (query parameters) or per process (environment):
- `?status=N` / BACKEND_STATUS=N      answer N instead of 200 (also `/status/N`, as httpbin)
- `?fail=P` / BACKEND_FAIL_RATE=P     answer 503 with probability P (0..1)
- `?delay=S` / BACKEND_DELAY=S        sleep S seconds before answering
- every other 2nd request 503 when BACKEND_FAIL_EVERY_OTHER=1 (deterministic "fails half")
- `GET /__count` → {"count": requests seen so far, excluding these}; `POST /__reset` zeroes it.
- `GET /__env` → {"env": the app's environment}.
- `?call=URL`                           GET URL first (through the sidecar, HTTP_PROXY), forwarding
                                        the trace headers it got (W3C, B3, x-request-id) as an
                                        instrumented app does; the answer is under "called", and a
                                        failed call (no answer, or 5xx) makes this answer 502.

Every answer carries `x-served-by: <service>-<version>` and `x-instance: <pid>`, and a JSON body
with method, path, query, headers and the instance, so a test sees exactly what arrived.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SERVICE = os.environ.get("BACKEND_SERVICE") or os.environ.get("LATTICE_SERVICE", "backend")
VERSION = os.environ.get("SERVICE_VERSION", "v1")
_lock = threading.Lock()
_count = 0
# What an app copies from the request it serves to the requests it makes, so the hops join one trace.
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the second waits for the sidecar's
    # delayed ACK (~40 ms) on every kept-alive request.
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        global _count
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/__count":
            return self._send(200, {"count": _count})
        if url.path == "/__env":  # what the app inherited (tests check no credential leaks into it)
            return self._send(200, {"env": dict(os.environ)})
        if url.path == "/__reset":
            with _lock:
                _count = 0
            return self._send(200, {"count": 0})
        with _lock:
            _count += 1
            seen = _count
        delay = float(query.get("delay") or os.environ.get("BACKEND_DELAY") or 0)
        if delay:
            time.sleep(delay)
        httpbin = url.path.split("/")  # httpbin's /status/N, as Istio's tasks call it
        path_status = httpbin[2] if len(httpbin) == 3 and httpbin[1] == "status" and httpbin[2].isdigit() else None
        status = int(query.get("status") or path_status or os.environ.get("BACKEND_STATUS") or 200)
        fail = float(query.get("fail") or os.environ.get("BACKEND_FAIL_RATE") or 0)
        if fail and random.random() < fail:
            status = 503
        if os.environ.get("BACKEND_FAIL_EVERY_OTHER") == "1" and seen % 2 == 0:
            status = 503
        called = self._call(query["call"]) if "call" in query else None
        if called is not None and not 0 < called["status"] < 500 and "status" not in query:
            status = 502
        self._send(
            status,
            {
                "method": self.command,
                "path": url.path,
                "query": query,
                # A header sent more than once reads as its values joined by ',' (RFC 9110 5.3), as
                # the Gateway API conformance echo server reports it.
                "headers": {k.lower(): ",".join(self.headers.get_all(k)) for k in self.headers.keys()},
                "body": body.decode(errors="replace"),
                "served_by": f"{SERVICE}-{VERSION}",
                "instance": os.getpid(),
                "count": seen,
                **({"called": called} if called is not None else {}),
            },
        )

    def _call(self, url: str) -> dict:
        """GET the next hop with this request's trace headers; its status (0: no answer) and body."""
        headers = {name: self.headers[name] for name in TRACE_HEADERS if self.headers.get(name)}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except OSError as e:
            return {"url": url, "status": 0, "error": str(e)}
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw.decode(errors="replace")
        return {"url": url, "status": status, "body": answer}

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-served-by", f"{SERVICE}-{VERSION}")
        self.send_header("x-instance", str(os.getpid()))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
