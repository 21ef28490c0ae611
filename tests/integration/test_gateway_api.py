"""Gateway API mesh routes (HTTPRoute attached to a Service) with real sidecars, seen from a client.

Services: `web` (the parent and default backend), `web-canary`, `mirror` (a mirror target), and
`client`, whose sidecar every request goes through, run tests/apps/backend.py; `echo` and
`echo-v2` run the gRPC echo app (tests/apps/grpc_echo.py).
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from harness import BACKEND, Workload, reset_config, running, served_by, wait_for

pytestmark = pytest.mark.slow
WEB = "http://web:9080"
GRPC_ECHO = [sys.executable, str(Path(__file__).parents[1] / "apps" / "grpc_echo.py")]


def _route(rules: str, name: str = "web-routes") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 9080}}]
  rules:
{rules}"""


@pytest.fixture(scope="module")
def mesh(shared_plane):
    workloads = [
        Workload(shared_plane, s, v, command=BACKEND)
        for s, v in (("web", "v1"), ("web-canary", "v2"), ("mirror", "v1"), ("client", "v1"))
    ]
    workloads += [
        Workload(shared_plane, s, v, command=GRPC_ECHO, extra=("--protocol", "GRPC"))
        for s, v in (("echo", "v1"), ("echo-v2", "v2"))
    ]
    with running(shared_plane, workloads) as ready:
        yield {w.service: w for w in ready}


@pytest.fixture
def client(shared_plane, mesh):
    reset_config(shared_plane)
    return mesh["client"]


def _apply(plane, text: str) -> None:
    plane.apply(text)
    wait_for(plane.all_synced, 10, what="every proxy to hold the route")


def _raw(client: Workload, path: str, host: str = "web:9080") -> http.client.HTTPResponse:
    """One request through the client's sidecar without following redirects."""
    conn = http.client.HTTPConnection(client.address, 15001, timeout=5)
    conn.request("GET", f"http://{host}{path}", headers={"Host": host, **client.proxy_headers})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _split(client: Workload, n: int, connections: int = 10) -> Counter:
    """Who answered each of n requests, sent over several kept-alive connections to the client's
    sidecar at once (each request waits on the app's small writes; in parallel that costs little)."""

    def run(count: int) -> Counter:
        conn, seen = http.client.HTTPConnection(client.address, 15001, timeout=5), Counter()
        for _ in range(count):
            conn.request("GET", f"{WEB}/", headers={"Host": "web:9080", **client.proxy_headers})
            response = conn.getresponse()
            response.read()
            seen[response.getheader("x-served-by") if response.status == 200 else f"status {response.status}"] += 1
        conn.close()
        return seen

    with ThreadPoolExecutor(connections) as pool:
        return sum(pool.map(run, [n // connections] * connections), Counter())


def _seen(client: Workload, path: str, headers: dict | None = None) -> dict:
    status, _, body = client.call(WEB + path, headers)
    assert status == 200, body
    return json.loads(body)


def test_path_and_header_matches_pick_the_backend(shared_plane, client):
    _apply(
        shared_plane,
        _route("""  - matches: [{path: {type: PathPrefix, value: /canary}}, {headers: [{name: x-user, value: jason}]}]
    backendRefs: [{name: web-canary, port: 9080}]
  - backendRefs: [{name: web, port: 9080}]"""),
    )
    wait_for(lambda: served_by(client, WEB + "/canary/a", 3) == {"web-canary-v2": 3}, 5, what="the route to apply")
    assert served_by(client, WEB + "/canary", 5) == {"web-canary-v2": 5}
    # PathPrefix matches whole path segments: /canaryx is not under /canary.
    assert served_by(client, WEB + "/canaryx", 5) == {"web-v1": 5}
    assert served_by(client, WEB + "/", 5, {"x-user": "jason"}) == {"web-canary-v2": 5}
    assert served_by(client, WEB + "/", 5, {"x-user": "alice"}) == {"web-v1": 5}


def test_the_longer_prefix_of_a_newer_route_wins_over_an_older_catch_all(shared_plane, client):
    _apply(shared_plane, _route("  - backendRefs: [{name: web, port: 9080}]", name="catch-all"))
    _apply(
        shared_plane,
        _route("  - matches: [{path: {value: /beta}}]\n    backendRefs: [{name: web-canary, port: 9080}]", name="beta"),
    )
    wait_for(lambda: served_by(client, WEB + "/beta/x", 3) == {"web-canary-v2": 3}, 5, what="the merged rules to apply")
    assert served_by(client, WEB + "/other", 5) == {"web-v1": 5}


def test_weighted_backends_split_80_20(shared_plane, client):
    _apply(
        shared_plane,
        _route("  - backendRefs: [{name: web, port: 9080, weight: 80}, {name: web-canary, port: 9080, weight: 20}]"),
    )
    wait_for(lambda: "web-canary-v2" in served_by(client, WEB + "/", 20), 5, what="the split to apply")
    counts = _split(client, 1000)
    assert set(counts) == {"web-v1", "web-canary-v2"}, counts
    # 1,000 draws at p=0.8: sd is 1.3 points; 4 points either way is three sd.
    assert 0.76 <= counts["web-v1"] / 1000 <= 0.84, counts


def test_header_modifiers_reach_the_backend_and_the_client(shared_plane, client):
    _apply(
        shared_plane,
        _route("""  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: gamma}], add: [{name: x-tag,
    value: added}], remove: [x-drop]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-answered-by, value: lattice}], remove:
    [x-instance]}}
    backendRefs: [{name: web, port: 9080}]"""),
    )
    wait_for(lambda: client.call(WEB + "/")[1].get("x-answered-by") == "lattice", 5, what="the filters to apply")
    status, headers, body = client.call(WEB + "/", {"x-drop": "secret", "x-tag": "mine"})
    seen = json.loads(body)["headers"]
    assert status == 200 and seen["x-route"] == "gamma" and "x-drop" not in seen
    assert seen["x-tag"] == "mine,added"  # appended after the client's value
    assert headers["x-answered-by"] == "lattice" and "x-instance" not in headers


def test_request_redirect_answers_the_client_with_the_location(shared_plane, client):
    _apply(
        shared_plane,
        _route("""  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com, path: {type: ReplaceFullPath,
    replaceFullPath: /new}, statusCode: 301}}]
  - backendRefs: [{name: web, port: 9080}]"""),
    )
    wait_for(lambda: _raw(client, "/old").status == 301, 5, what="the redirect to apply")
    response = _raw(client, "/old")
    assert response.getheader("location").startswith("http://example.com") and response.getheader("location").endswith(
        "/new"
    )
    assert _raw(client, "/older").status == 200


def test_url_rewrite_replaces_the_matched_prefix_and_the_host(shared_plane, client):
    _apply(
        shared_plane,
        _route("""  - matches: [{path: {value: /api/v1}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch,
    replacePrefixMatch: /}}}]
    backendRefs: [{name: web, port: 9080}]
  - backendRefs: [{name: web, port: 9080}]"""),
    )
    wait_for(lambda: _seen(client, "/api/v1/items")["path"] == "/items", 5, what="the rewrite to apply")
    seen = _seen(client, "/api/v1/items/7?q=1")
    assert seen["path"] == "/items/7" and seen["query"] == {"q": "1"} and seen["headers"]["host"] == "rewritten.example"
    assert _seen(client, "/api/v1")["path"] == "/"
    assert _seen(client, "/api/v10")["path"] == "/api/v10"


def test_request_mirror_copies_reach_the_mirror_while_the_client_sees_the_primary(shared_plane, client):
    _apply(
        shared_plane,
        _route("""  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 9080}}}]
    backendRefs: [{name: web, port: 9080}]"""),
    )
    count = lambda: json.loads(client.call("http://mirror:9080/__count")[2])["count"]  # noqa: E731
    wait_for(lambda: (client.call(WEB + "/warm"), count() > 0)[1], 5, what="the mirror to apply")
    client.call("http://mirror:9080/__reset")
    assert served_by(client, WEB + "/m", 20) == {"web-v1": 20}
    wait_for(lambda: count() == 20, 5, what="20 copies at the mirror")


def test_request_timeout_answers_504_against_a_slow_backend(shared_plane, client):
    _apply(shared_plane, _route("  - timeouts: {request: 1s}\n    backendRefs: [{name: web, port: 9080}]"))
    wait_for(lambda: client.call(WEB + "/?delay=1.5")[0] == 504, 10, what="the timeout to apply")
    started = time.monotonic()
    status, _, _ = client.call(WEB + "/?delay=3")
    elapsed = time.monotonic() - started
    assert status == 504 and 0.9 <= elapsed < 2.0, (status, elapsed)
    assert client.call(WEB + "/?delay=0.2")[0] == 200


def test_older_virtual_service_wins_the_host_and_status_names_the_ignored_route(shared_plane, client):
    shared_plane.apply("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-pinned}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web-canary}}]}]
""")
    # Creation times decide; the store keeps them to the microsecond, so the route applied next is younger.
    _apply(shared_plane, _route("  - backendRefs: [{name: web, port: 9080}]"))
    wait_for(lambda: served_by(client, WEB + "/", 3) == {"web-canary-v2": 3}, 5, what="the VirtualService to route web")
    status = shared_plane.cli("status").stdout
    assert (
        "conflict: HTTPRoute default/web-routes: host web.default.svc.cluster.local is already claimed by "
        "VirtualService default/web-pinned" in status
    )
    # The route applies once the VirtualService is gone, and reads back as it was written.
    shared_plane.cli("delete", "virtualservice", "web-pinned")
    wait_for(lambda: served_by(client, WEB + "/", 3) == {"web-v1": 3}, 5, what="the HTTPRoute to take over")
    stored = shared_plane.cli("get", "httproutes", "web-routes", "-o", "yaml").stdout
    assert shared_plane.cli("apply", "-f", "-", input=stored).stdout.strip().endswith("unchanged")


def _echo(client: Workload, method: str, metadata: tuple = ()) -> str:
    """Who served one gRPC call to `echo`, made through the client's sidecar (h2c to its proxy port)."""
    options = [("grpc.default_authority", "echo:9080"), ("grpc.enable_http_proxy", 0)]
    credential = (*metadata, *client.proxy_headers.items())  # the sidecar asks its app for it
    with grpc.insecure_channel(f"{client.address}:15001", options=options) as channel:
        if method == "ServerStream":
            replies = list(
                channel.unary_stream("/lattice.test.Echo/ServerStream")(b"hi", timeout=5, metadata=credential)
            )
            return json.loads(replies[0])["served_by"]
        return json.loads(channel.unary_unary(f"/lattice.test.Echo/{method}")(b"hi", timeout=5, metadata=credential))[
            "served_by"
        ]


def test_grpc_route_sends_a_method_to_the_chosen_version(shared_plane, client):
    _apply(
        shared_plane,
        """apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-methods}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9080}]
  rules:
  - matches: [{method: {service: lattice.test.Echo, method: Unary}}, {headers: [{name: x-user, value: jason}]}]
    backendRefs: [{name: echo-v2, port: 9080}]
  - backendRefs: [{name: echo, port: 9080}]
""",
    )
    wait_for(lambda: _echo(client, "Unary") == "echo-v2-v2", 5, what="the GRPCRoute to apply")
    assert {_echo(client, "Unary") for _ in range(5)} == {"echo-v2-v2"}
    assert {_echo(client, "ServerStream") for _ in range(5)} == {"echo-v1"}
    assert _echo(client, "ServerStream", (("x-user", "jason"),)) == "echo-v2-v2"
