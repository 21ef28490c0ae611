"""The REST client with several control-plane replicas (`--server URL1,URL2`, as `lattice run` takes
them): real sockets on loopback, a real HTTP server, a port nothing listens on."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lattice.cli.client import ApiError, Client, server_url


class _Api(BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        body = json.dumps({"path": self.path} if self.status == 200 else {"error": "refused here"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    handler = type("Handler", (_Api,), {"hits": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-api", daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_replica_that_refuses_connections_is_skipped_for_the_next(api):
    server, handler = api
    down, up = f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{server.server_port}"
    client = Client(server_url(f"{down},{up}"), token="")
    assert client.get("/api/v1/status") == {"path": "/api/v1/status"}
    assert client.base == up  # the one that answered is asked first from now on
    assert list(client.stream("/api/v1/status", {})) == [{"path": "/api/v1/status?"}]


def test_a_replica_that_answers_with_an_error_is_the_answer(api):
    server, handler = api
    handler.status = 503
    other = f"http://127.0.0.1:{_closed_port()}"
    client = Client(f"http://127.0.0.1:{server.server_port},{other}", token="")
    with pytest.raises(ApiError) as e:
        client.get("/api/v1/resources")
    assert e.value.status == 503 and "refused here" in str(e.value)  # not retried elsewhere
    assert handler.hits == ["/api/v1/resources"]


def test_when_every_replica_is_down_the_error_names_them_all():
    urls = [f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{_closed_port()}"]
    client = Client(",".join(urls), token="")
    with pytest.raises(ApiError) as e:
        client.get("/api/v1/status")
    assert f"cannot reach the control plane at {urls[0]}, {urls[1]}: " in str(e.value)
