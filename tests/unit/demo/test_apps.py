"""The Bookinfo demo apps, run as real processes behind a stand-in sidecar.

`ForwardProxy` plays the sidecar: it takes the absolute-form requests the apps
send to `HTTP_PROXY`, records their headers, and maps the Bookinfo host names
to the ports the apps were started on. Re-pointing `reviews` in its route
table is how these tests pick which reviews version productpage reaches.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lattice.agent.address import app_port
from lattice.demo.apps import common

REPO = Path(__file__).resolve().parents[3]
ENV_TO_DROP = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "PORT",
    "SERVICE_VERSION",
    "DEMO_APP_LOG",
    "FETCH_TIMEOUT",
)
HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "te", "upgrade"}


def free_port() -> int:
    """Below the ephemeral range, as `lattice run` picks app ports: a port bind(0) found free can be
    taken by some outgoing connection before the app binds it."""
    return app_port()


def app_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_DROP}
    env.update(overrides)
    return env


def get(port: int, path: str, headers: dict[str, str] | None = None):
    """(status, response headers, body) of a direct GET to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, headers: dict[str, str] | None = None):
    status, _, body = get(port, path, headers)
    assert status == 200, body
    return json.loads(body)


@dataclass
class App:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    def wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if get(self.port, "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"{self.name} not healthy; log:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(name: str, module: str, log_dir: Path, **env: str) -> App:
    port = free_port()
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"lattice.demo.apps.{module}"],
            env=app_env(PORT=str(port), **env),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return App(name, port, proc, log)


@dataclass
class Seen:
    host: str
    path: str
    headers: dict[str, str]


class ProxyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        target = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append(Seen(target.hostname or "", target.path, headers))
        port = self.server.routes.get(target.hostname)
        try:
            if port is None:
                raise ConnectionRefusedError(f"no route to {target.hostname}")
            status, body, content_type = self.forward(port, target.path, headers)
        except OSError as error:
            status, body, content_type = 502, str(error).encode(), "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self, port: int, path: str, headers: dict[str, str]):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
            conn.request("GET", path, headers=forwarded)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "")
        finally:
            conn.close()

    def log_message(self, format: str, *args: object) -> None:
        pass


class ForwardProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.routes: dict[str, int] = {}
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls_to(self, host: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.host == host]


@dataclass
class Mesh:
    proxy: ForwardProxy
    apps: dict[str, App] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return self.apps[name].port

    def route_reviews(self, version: str) -> None:
        self.proxy.routes["reviews"] = self.port(f"reviews-{version}")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    proxy = ForwardProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    logs = tmp_path_factory.mktemp("apps")
    mesh = Mesh(proxy)
    sidecar = {"HTTP_PROXY": proxy.url, "NO_PROXY": "*"}
    specs = [("ratings", "ratings", {}), ("details", "details", {})]
    specs += [(f"reviews-{v}", "reviews", {"SERVICE_VERSION": v, **sidecar}) for v in ("v1", "v2", "v3")]
    specs.append(("productpage", "productpage", sidecar))
    try:
        for name, module, env in specs:
            mesh.apps[name] = spawn(name, module, logs, **env)
        deadline = time.monotonic() + 8
        for app in mesh.apps.values():
            app.wait_healthy(deadline)
        yield mesh
    finally:
        for app in mesh.apps.values():  # signal all first: they exit in parallel
            app.proc.terminate()
        for app in mesh.apps.values():
            app.stop()
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture
def mesh(started: Mesh) -> Mesh:
    """The running apps, with the proxy's routes reset and its record cleared."""
    started.proxy.routes.clear()
    started.proxy.routes.update(details=started.port("details"), ratings=started.port("ratings"))
    started.route_reviews("v1")
    started.proxy.seen.clear()
    return started


@pytest.mark.parametrize(
    "app, served_by",
    [
        ("productpage", "productpage-v1"),
        ("details", "details-v1"),
        ("ratings", "ratings-v1"),
        ("reviews-v1", "reviews-v1"),
        ("reviews-v2", "reviews-v2"),
        ("reviews-v3", "reviews-v3"),
    ],
)
def test_health_answers_ok_and_names_the_server(mesh, app, served_by):
    status, response, body = get(mesh.port(app), "/health")
    assert (status, body) == (200, b"ok")
    assert response.getheader("x-served-by") == served_by


def test_unknown_path_is_404(mesh):
    assert get(mesh.port("details"), "/nope")[0] == 404
    assert get(mesh.port("details"), "/details/abc")[0] == 400


def test_details_describes_the_book(mesh):
    assert get_json(mesh.port("details"), "/details/0") == {
        "id": 0,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


def test_ratings_gives_stars_per_reviewer(mesh):
    assert get_json(mesh.port("ratings"), "/ratings/0") == {
        "id": 0,
        "ratings": {"Reviewer1": 5, "Reviewer2": 4},
    }


def test_reviews_v1_has_no_ratings_and_calls_nothing(mesh):
    reviews = get_json(mesh.port("reviews-v1"), "/reviews/0")
    assert reviews["version"] == "v1"
    assert reviews["clustername"] == "null"
    assert [r["reviewer"] for r in reviews["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in r for r in reviews["reviews"])
    assert mesh.proxy.seen == []


@pytest.mark.parametrize("version, color", [("v2", "black"), ("v3", "red")])
def test_productpage_proxies_reviews_with_colored_stars(mesh, version, color):
    mesh.route_reviews(version)
    reviews = get_json(mesh.port("productpage"), "/api/v1/products/0/reviews")
    assert reviews["version"] == version
    ratings = [r["rating"] for r in reviews["reviews"]]
    assert ratings == [{"stars": 5, "color": color}, {"stars": 4, "color": color}]


def test_productpage_proxies_reviews_v1_without_ratings(mesh):
    reviews = get_json(mesh.port("productpage"), "/api/v1/products/0/reviews")
    assert reviews["version"] == "v1"
    assert all("rating" not in r for r in reviews["reviews"])


def test_productpage_html_embeds_details_and_reviews(mesh):
    mesh.route_reviews("v3")
    status, response, body = get(mesh.port("productpage"), "/productpage")
    html = body.decode()
    assert status == 200
    assert response.getheader("Content-Type").startswith("text/html")
    assert "The Comedy of Errors" in html
    assert "William Shakespeare" in html and "PublisherA" in html
    assert "slapstick humour is refreshing" in html
    assert "reviews-v3" in html and "color: red" in html


def test_index_links_to_productpage(mesh):
    status, _, body = get(mesh.port("productpage"), "/")
    assert status == 200 and b'href="/productpage"' in body


def test_products_api_lists_the_one_book(mesh):
    products = get_json(mesh.port("productpage"), "/api/v1/products")
    assert [(p["id"], p["title"]) for p in products] == [(0, "The Comedy of Errors")]
    assert "Shakespeare" in products[0]["descriptionHtml"]


def test_product_api_proxies_details(mesh):
    details = get_json(mesh.port("productpage"), "/api/v1/products/0")
    assert details == get_json(mesh.port("details"), "/details/0")


def test_routing_headers_travel_through_reviews_to_ratings(mesh):
    mesh.route_reviews("v2")
    sent = {"end-user": "jason", "x-request-id": "req-1", "b3": "abc-def-1", "user-agent": "demo-test"}
    get(mesh.port("productpage"), "/productpage", sent)
    for host in ("details", "reviews", "ratings"):
        calls = mesh.proxy.calls_to(host)
        assert calls, f"no call to {host}"
        assert all({k: c.headers.get(k) for k in sent} == sent for c in calls), host


def test_login_cookie_becomes_end_user(mesh):
    get(mesh.port("productpage"), "/api/v1/products/0/reviews", {"Cookie": "user=jason"})
    [call] = mesh.proxy.calls_to("reviews")
    assert call.headers["end-user"] == "jason"
    assert call.headers["cookie"] == "user=jason"


def test_ratings_down_leaves_reviews_up_with_an_error(mesh):
    del mesh.proxy.routes["ratings"]
    reviews = get_json(mesh.port("reviews-v2"), "/reviews/0")
    error = {"error": "Ratings service is currently unavailable"}
    assert [r["rating"] for r in reviews["reviews"]] == [error, error]


def test_reviews_down_leaves_productpage_up_with_an_apology(mesh):
    del mesh.proxy.routes["reviews"]
    status, _, body = get(mesh.port("productpage"), "/productpage")
    assert status == 200
    assert b"product reviews are currently unavailable" in body
    assert b"PublisherA" in body
    status, _, body = get(mesh.port("productpage"), "/api/v1/products/0/reviews")
    assert status >= 500 and b"unavailable" in json.loads(body)["error"].encode()


@pytest.mark.parametrize("port", [None, "abc", "0", "70000"])
def test_missing_or_invalid_port_exits_2(port):
    env = app_env() if port is None else app_env(PORT=port)
    done = subprocess.run(
        [sys.executable, "-m", "lattice.demo.apps.details"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 2
    assert "PORT" in done.stderr


def test_sigterm_exits_0_without_request_logs(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice.demo.apps.ratings"],
        env=app_env(PORT=str(port)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        app = App("ratings", port, proc, tmp_path / "unused.log")
        app.wait_healthy(time.monotonic() + 5)
        get(port, "/ratings/0")
        proc.terminate()
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert (out, err) == (b"", b"")


def test_fetch_uses_proxy_even_when_no_proxy_excludes_everything(mesh, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", mesh.proxy.url)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "details")
    status, body = common.fetch("http://details:9080/details/7", {"end-user": "jason"})
    assert (status, json.loads(body)["id"]) == (200, 7)
    [call] = mesh.proxy.calls_to("details")
    assert call.headers["end-user"] == "jason"


def test_fetch_turns_connection_errors_into_503(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{free_port()}")
    status, body = common.fetch("http://details:9080/details/0", {})
    assert status == 503 and body


def test_fetch_gives_up_after_fetch_timeout(monkeypatch):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("FETCH_TIMEOUT", "0.2")
        started = time.monotonic()
        status, _ = common.fetch("http://details:9080/details/0", {})
    assert status == 503
    assert time.monotonic() - started < 2
