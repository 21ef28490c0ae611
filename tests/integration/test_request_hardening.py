"""Known request-smuggling and policy-bypass inputs, sent as raw bytes over HTTP/1.1 and HTTP/2
(h2c, prior knowledge) to real sidecars and a real ingress gateway.

What each test checks is what a client and the app observe: the status the proxy answers, and,
from the backend's own echo and request counter (read on its app port, behind no proxy), whether
the request reached the app and with which path. The rule under test: the app never sees a path
that routing or policy said no to, and routing, policy and app always see the same path.

Targets: (a) the outbound sidecar, where a VirtualService exposes only `/public/` and answers 404
for anything else; (b) the inbound sidecar under Istio AuthorizationPolicies (DENY `/admin*`,
ALLOW only `/public/*`); (c) the ingress gateway, bound to the same `/public/` prefix.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from harness import BACKEND, LATTICE, ControlPlane, Workload, die_with_parent, http, running, stop, wait_for
from lattice.agent.address import free_port
from rawhttp import Answer, h1, h2c

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("request_hardening")]

SERVICE_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - match: [{uri: {prefix: /public/}}]
    route: [{destination: {host: backend}}]
  - directResponse: {status: 404}
"""
EDGE = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match: [{uri: {prefix: /public/}}]
    route: [{destination: {host: backend, port: {number: 9080}}}]
"""
DENY_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""
ALLOW_PUBLIC = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/public/*"]}}]
"""
HOST = "backend:9080"


# --- the mesh under test ---------------------------------------------------------------------


class Gateway:
    """`lattice gateway --listen 80=LOCAL` as a user runs it."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane, self.port = plane, free_port()
        self.log = plane.home / f"gateway-{time.monotonic_ns()}.log"
        env = plane.env | {"LATTICE_TOKEN": plane.token("istio-ingressgateway", "istio-system")}
        self.process = subprocess.Popen(
            [LATTICE, "gateway", "--listen", f"80={self.port}"],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.address = wait_for(self._address, 30, what=f"the gateway to register (log {self.log})")

    def _address(self):
        assert self.process.poll() is None, self.log.read_text()
        return next(
            (p["address"] for p in self.plane.status()["proxies"] if p["name"] == "ingressgateway" and p["healthy"]),
            None,
        )


@pytest.fixture(scope="module")
def mesh(shared_plane):
    """backend and client (both the echoing BACKEND app) under sidecars, the /public/-only
    VirtualService, and a gateway exposing the same prefix."""
    plane = shared_plane
    with running(plane, [Workload(plane, "backend", command=BACKEND), Workload(plane, "client", command=BACKEND)]) as (
        backend,
        client,
    ):
        plane.apply(SERVICE_VS + "---\n" + EDGE)
        gateway = Gateway(plane)
        try:
            wait_for(
                lambda: h1(gateway.address, gateway.port, _request("GET", "/public/ready", HOST)).status == 200,
                20,
                what="the gateway to route /public/",
            )
            wait_for(
                lambda: h1(client.address, 15001, _request("GET", "/nothing", HOST)).status == 404,
                10,
                what="the outbound VirtualService",
            )
            yield {"backend": backend, "client": client, "gateway": gateway}
        finally:
            stop(gateway.process)


def _outbound(mesh) -> tuple[str, int]:
    return mesh["client"].address, 15001


def _inbound(mesh) -> tuple[str, int]:
    """The backend's inbound port, in plaintext: PERMISSIVE (the default) takes clients outside the
    mesh, which may send anything."""
    return mesh["backend"].address, 9080


def _edge(mesh) -> tuple[str, int]:
    return mesh["gateway"].address, mesh["gateway"].port


# --- sending and observing -------------------------------------------------------------------


def _request(method: str, target: str, host: str, *headers: str, body: str = "") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")


def _h2(address: str, port: int, path: str, method: str = "GET", authority: str = HOST, extra: tuple = ()) -> Answer:
    return h2c(
        address, port, [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *extra]
    )


def _app_count(mesh) -> int:
    return json.loads(http("GET", f"http://127.0.0.1:{mesh['backend'].info['app_port']}/__count")[2])["count"]


def _observe(mesh, send) -> tuple[Answer, list[dict]]:
    """The answer to `send()` and every request the app received meanwhile (its echo, if the
    answer came from the app; the count catches requests the client never got answers for)."""
    before = _app_count(mesh)
    answer = send()
    arrived = _app_count(mesh) - before
    echoes = [json.loads(answer.body)] if answer.body.startswith(b'{"method"') else []
    assert arrived == len(echoes), f"the app saw {arrived} request(s) but the client got {answer!r}"
    return answer, echoes


def _over(protocol: str, target: tuple[str, int], path: str) -> Answer:
    if protocol == "h2":
        return _h2(*target, path)
    return h1(*target, _request("GET", path, HOST))


# --- paths: each input, the status, and the path the app saw (None: it never arrived) ---------

# (raw path, at the outbound sidecar routing /public/ only, at the inbound sidecar with no policy)
PATHS = [
    ("/public/x", (200, "/public/x"), (200, "/public/x")),
    ("//admin", (404, None), (200, "/admin")),
    ("/public/../admin", (404, None), (200, "/admin")),
    ("/public/%2e%2e/admin", (404, None), (200, "/admin")),
    ("/public/%2E%2E/admin", (404, None), (200, "/admin")),
    ("/public%2Fadmin", (400, None), (400, None)),
    ("/public%2fadmin", (400, None), (400, None)),
    ("/public%5Cadmin", (400, None), (400, None)),
    ("/public/a%2Fb", (400, None), (400, None)),
    ("/admin;x=1", (400, None), (400, None)),  # the path policy (translate/paths.py)
    ("/public/;/../admin", (200, "/public/admin"), (200, "/public/admin")),  # no ';' once normalized
    ("/public/..;/admin", (404, None), (200, "/admin")),  # Envoy reads `..;` as `..`, and so does the app
    ("/admin#frag", (404, None), (200, "/admin")),
    ("/public/x#/../../admin", (200, "/public/x"), (200, "/public/x")),
    ("/public/x?q=1#/../../admin", (200, "/public/x"), (200, "/public/x")),
    ("/public/%00", (400, None), (400, None)),
]


def _expect(mesh, protocol: str, target: tuple[str, int], path: str, status: int, seen: str | None) -> None:
    answer, echoes = _observe(mesh, lambda: _over(protocol, target, path))
    assert answer.status == status, f"{protocol} {path!r}: {answer!r}"
    assert [e["path"] for e in echoes] == ([seen] if seen else []), f"{protocol} {path!r}: the app saw {echoes}"


@pytest.mark.parametrize("protocol", ["h1", "h2"])
@pytest.mark.parametrize("path, expected", [(p, out) for p, out, _ in PATHS], ids=[p for p, _, _ in PATHS])
def test_outbound_routes_on_the_path_the_app_sees(mesh, protocol, path, expected):
    _expect(mesh, protocol, _outbound(mesh), path, *expected)


@pytest.mark.parametrize("protocol", ["h1", "h2"])
@pytest.mark.parametrize("path, expected", [(p, inb) for p, _, inb in PATHS], ids=[p for p, _, _ in PATHS])
def test_inbound_forwards_the_normalized_path(mesh, protocol, path, expected):
    _expect(mesh, protocol, _inbound(mesh), path, *expected)


def test_backslash_is_a_slash_to_routing_and_app(mesh):
    for target, status, seen in ((_outbound(mesh), 404, None), (_inbound(mesh), 200, "/admin")):
        answer, echoes = _observe(mesh, lambda t=target: h1(*t, _request("GET", "/public\\..\\admin", HOST)))
        assert answer.status == status and [e["path"] for e in echoes] == ([seen] if seen else []), (answer, echoes)


# --- hosts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "BACKEND",
        "Backend:9080",
        "backend.default.svc.cluster.local.",
        "backend.default.svc.cluster.local.:9080",
        "BACKEND.default.svc.cluster.local",
    ],
)
def test_outbound_host_matching_ignores_case_and_trailing_dot(mesh, host):
    """Every spelling of the service meets the service's VirtualService: /admin is 404, never
    the passthrough route (which, with cluster DNS, would reach the service around its rules)."""
    assert _observe(mesh, lambda: h1(*_outbound(mesh), _request("GET", "/admin", host)))[0].status == 404
    answer, echoes = _observe(mesh, lambda: h1(*_outbound(mesh), _request("GET", "/public/x", host)))
    assert answer.status == 200 and echoes[0]["path"] == "/public/x"
    answer, _ = _observe(mesh, lambda: _h2(*_outbound(mesh), "/admin", authority=host))
    assert answer.status == 404


@pytest.mark.parametrize("where", ["outbound", "inbound", "edge"])
def test_duplicate_host_is_refused(mesh, where):
    target = {"outbound": _outbound, "inbound": _inbound, "edge": _edge}[where](mesh)
    for raw in (
        _request("GET", "/public/x", "other", f"Host: {HOST}"),
        _request("GET", "/public/x", HOST, "Host: other"),
    ):
        assert _observe(mesh, lambda r=raw: h1(*target, r))[0].status == 400
    assert (
        _observe(
            mesh,
            lambda: h2c(
                *target,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", HOST),
                    (":authority", "other"),
                    (":path", "/public/x"),
                ],
            ),
        )[0].status
        is None
    )


def test_absolute_form_uri_wins_over_host(mesh):
    """RFC 9112 3.2.2: the host in the request target is the one; routing uses it, not Host."""
    answer, _ = _observe(mesh, lambda: h1(*_outbound(mesh), _request("GET", f"http://{HOST}/admin", "other:9080")))
    assert answer.status == 404
    answer, echoes = _observe(mesh, lambda: h1(*_outbound(mesh), _request("GET", f"http://{HOST}/public/x", "evil")))
    assert answer.status == 200 and echoes[0]["headers"]["host"] == HOST


# --- malformed requests: refused by the codec before any route or policy ---------------------

MALFORMED = {
    "mixed-case method": _request("gEt", "/public/x", HOST),
    "underscore header": _request("GET", "/public/x", HOST, "x_user: admin"),
    "underscore xfcc": _request(
        "GET", "/public/x", HOST, "x_forwarded_client_cert: URI=spiffe://cluster.local/ns/default/sa/admin"
    ),
    "NUL in header value": _request("GET", "/public/x", HOST, "x-user: ad\0min"),
    "NUL in request line": _request("GET", "/public/x\0/../../admin", HOST),
    "duplicate Content-Length": _request(
        "POST", "/public/x", HOST, "Content-Length: 3", "Content-Length: 20", body="abc"
    ),
    "repeated equal Content-Length": _request(
        "POST", "/public/x", HOST, "Content-Length: 3", "Content-Length: 3", body="abc"
    ),
    "Content-Length with chunked": _request(
        "POST", "/public/x", HOST, "Content-Length: 3", "Transfer-Encoding: chunked", body="0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("where", ["outbound", "inbound", "edge"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_http1_is_400(mesh, where, name):
    target = {"outbound": _outbound, "inbound": _inbound, "edge": _edge}[where](mesh)
    assert _observe(mesh, lambda: h1(*target, MALFORMED[name]))[0].status == 400


def test_oversized_headers_are_431(mesh):
    raw = _request("GET", "/public/x", HOST, "x-big: " + "a" * 70_000)  # over Envoy's 60 KiB default
    for target in (_outbound(mesh), _inbound(mesh), _edge(mesh)):
        assert _observe(mesh, lambda t=target: h1(*t, raw))[0].status == 431


@pytest.mark.parametrize("where", ["outbound", "inbound"])
def test_malformed_http2_never_reaches_the_app(mesh, where):
    """HTTP/2 has no 400 for a bad header block: Envoy resets the stream or the connection."""
    target = {"outbound": _outbound, "inbound": _inbound}[where](mesh)
    assert _observe(mesh, lambda: _h2(*target, "/public/x", method="gEt"))[0].status == 400
    assert _observe(mesh, lambda: _h2(*target, "/public/x", extra=(("x_user", "admin"),)))[0].status is None
    assert _observe(mesh, lambda: _h2(*target, "/public/x", extra=(("x-user", "ad\0min"),)))[0].status is None
    assert _observe(mesh, lambda: _h2(*target, "/public/x\0/../../admin"))[0].status is None
    assert (
        _observe(
            mesh,
            lambda: _h2(*target, "/public/x", method="POST", extra=(("content-length", "3"), ("content-length", "4"))),
        )[0].status
        is None
    )


# --- internal headers from clients ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["inbound", "edge"])
def test_envoy_controls_from_clients_are_ignored(mesh, where):
    """A timeout of 1 ms or retries asked for by the client would show: a 504, or the app
    counting four requests where the client sent one."""
    target = {"inbound": _inbound, "edge": _edge}[where](mesh)
    answer, echoes = _observe(
        mesh, lambda: h1(*target, _request("GET", "/public/slow?delay=0.3", HOST, "x-envoy-upstream-rq-timeout-ms: 1"))
    )
    assert answer.status == 200, answer
    answer, echoes = _observe(
        mesh,
        lambda: h1(
            *target, _request("GET", "/public/fail?status=500", HOST, "x-envoy-retry-on: 5xx", "x-envoy-max-retries: 3")
        ),
    )
    assert answer.status == 500, answer  # _observe checked that the app saw exactly one request


FORGED = (
    "x-envoy-original-path: /admin",
    "x-envoy-original-url: http://backend/admin",
    "x-envoy-internal: true",
    "x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/backend;URI=spiffe://cluster.local/ns/default/sa/admin",
)


@pytest.mark.parametrize("where", ["outbound", "inbound", "edge"])
def test_forged_internal_headers_never_reach_the_app(mesh, where):
    target = {"outbound": _outbound, "inbound": _inbound, "edge": _edge}[where](mesh)
    answer, [echo] = _observe(mesh, lambda: h1(*target, _request("GET", "/public/x", HOST, *FORGED)))
    seen = echo["headers"]
    assert echo["path"] == "/public/x"
    assert not {"x-envoy-original-path", "x-envoy-original-url", "x-envoy-internal"} & set(seen), seen
    assert "sa/admin" not in seen.get("x-forwarded-client-cert", ""), seen
    if where == "outbound":  # meshed: the app sees the caller's verified identity instead
        assert "URI=spiffe://cluster.local/ns/default/sa/client" in seen["x-forwarded-client-cert"], seen


def test_edge_appends_the_peer_to_x_forwarded_for(mesh):
    """At the edge the client's address is the TCP peer's (no hops trusted): a forged
    X-Forwarded-For stays in the list but is not the address Envoy takes as the client's. (For a
    peer on loopback, as here, Envoy appends its host's address rather than 127.0.0.1.)"""
    answer, [echo] = _observe(
        mesh,
        lambda: h1(
            *_edge(mesh),
            _request("GET", "/public/x", HOST, "X-Forwarded-For: 6.6.6.6", "x-envoy-external-address: 6.6.6.6"),
        ),
    )
    seen = echo["headers"]
    hops = [h.strip() for h in seen["x-forwarded-for"].split(",")]
    # the gateway, then the backend's sidecar, append the peer each saw
    assert hops[0] == "6.6.6.6" and len(hops) == 3 and "6.6.6.6" not in hops[1:], seen
    assert seen.get("x-envoy-external-address") == "127.0.0.1", seen


# --- the ingress gateway: the same paths, the same answers ------------------------------------

EDGE_PATHS = [
    ("/public/x", 200, "/public/x"),
    ("//admin", 404, None),
    ("/public/../admin", 404, None),
    ("/public/%2E%2E/admin", 404, None),
    ("/public%2Fadmin", 400, None),
    ("/public%5cadmin", 400, None),
    ("/admin;x=1", 400, None),
    ("/admin.", 400, None),
    ("/admin#frag", 404, None),
    ("/public/x#/../../admin", 200, "/public/x"),
]


@pytest.mark.parametrize("protocol", ["h1", "h2"])
@pytest.mark.parametrize("path, status, seen", EDGE_PATHS, ids=[p for p, _, _ in EDGE_PATHS])
def test_edge_routes_on_the_path_the_app_sees(mesh, protocol, path, status, seen):
    _expect(mesh, protocol, _edge(mesh), path, status, seen)


# --- (b) the inbound sidecar under AuthorizationPolicy -----------------------------------------

# (raw path, under DENY /admin*, under ALLOW /public/* only): status, and the path the app saw.
POLICY_PATHS = [
    ("/public/x", (200, "/public/x"), (200, "/public/x")),
    ("/elsewhere", (200, "/elsewhere"), (403, None)),
    ("/admin", (403, None), (403, None)),
    ("//admin", (403, None), (403, None)),
    ("/public/../admin", (403, None), (403, None)),
    ("/public/%2e%2e/admin", (403, None), (403, None)),
    ("/public/%2E%2E/admin", (403, None), (403, None)),
    ("/public%2Fadmin", (400, None), (400, None)),
    ("/public%2fadmin", (400, None), (400, None)),
    ("/public%5Cadmin", (400, None), (400, None)),
    ("/admin;x=1", (400, None), (400, None)),  # refused before policy is asked
    ("/public/;/../admin", (200, "/public/admin"), (200, "/public/admin")),
    ("/public/..;/admin", (403, None), (403, None)),
    ("/admin#frag", (403, None), (403, None)),
    ("/public/x#/../../admin", (200, "/public/x"), (200, "/public/x")),
]


@pytest.fixture
def policy(mesh, shared_plane):
    """Apply one AuthorizationPolicy for the test; delete it afterwards."""
    applied = []

    def apply(doc: str) -> None:
        shared_plane.apply(doc)
        applied.append(doc)
        wait_for(shared_plane.all_synced, 10, what="the policy to reach the sidecar")

    yield apply
    for doc in applied:
        shared_plane.cli("delete", "-f", "-", input=doc, check=False)
    wait_for(shared_plane.all_synced, 10, what="the policy to be gone")


def _under_policy(mesh, protocol: str, path: str, status: int, seen: str | None) -> None:
    target = _inbound(mesh)
    answer, echoes = _observe(mesh, lambda: _over(protocol, target, path))
    assert answer.status == status, f"{protocol} {path!r}: {answer!r}"
    if status == 403:
        assert b"RBAC: access denied" in answer.body, answer
    assert [e["path"] for e in echoes] == ([seen] if seen else []), f"{protocol} {path!r}: the app saw {echoes}"


@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_deny_admin_holds_against_every_spelling(mesh, policy, protocol):
    policy(DENY_ADMIN)
    wait_for(
        lambda: h1(*_inbound(mesh), _request("GET", "/admin", HOST)).status == 403,
        10,
        what="the DENY policy to take effect",
    )
    for path, expected, _ in POLICY_PATHS:
        _under_policy(mesh, protocol, path, *expected)


@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_allow_only_public_holds_against_every_spelling(mesh, policy, protocol):
    policy(ALLOW_PUBLIC)
    wait_for(
        lambda: h1(*_inbound(mesh), _request("GET", "/elsewhere", HOST)).status == 403,
        10,
        what="the ALLOW policy to take effect",
    )
    for path, _, expected in POLICY_PATHS:
        _under_policy(mesh, protocol, path, *expected)


# --- (c) paths an app may read as a denied one (issue 14, finding 8) ---------------------------

DENY_EXACT_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-exact-admin}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
"""
# Spellings that Envoy keeps as paths other than /admin, and that some server reads as /admin:
# Tomcat/Spring (path parameters), IIS/.NET (trailing dots, spaces), double decoders (%25),
# lenient UTF-8 decoders (overlong forms). Each is refused with 400 before policy or routing.
AMBIGUOUS = [
    "/admin;x=1",
    "/admin;",
    "/admin;jsessionid=1/",
    "/admin%3Bx",
    "/admin.",
    "/admin..",
    "/admin%2e",
    "/admin%2E/",
    "/admin%20",
    "/admin%09",
    "/admin%0a",
    "/%2561dmin",
    "/admi%256e",
    "/%C1%A1dmin",  # overlong 'a'
    "/%E0%81%A1dmin",  # overlong 'a', three bytes
    "/admin%C0%AE",  # overlong '.'
    "/x/..%C0%AFadmin",  # overlong '/'
    "/admin%FF",
    "/admin%C3",  # truncated
    "/admin;?x=1",
]


@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_ambiguous_spellings_of_a_denied_path_are_400_and_never_reach_the_app(mesh, policy, protocol):
    policy(DENY_EXACT_ADMIN)
    wait_for(
        lambda: h1(*_inbound(mesh), _request("GET", "/admin", HOST)).status == 403,
        10,
        what="the DENY policy to take effect",
    )
    for path in AMBIGUOUS:
        for target in (_inbound(mesh), _outbound(mesh), _edge(mesh)):
            _expect(mesh, protocol, target, path, 400, None)
    # what honest clients send still passes, the query alone may hold anything
    _expect(mesh, protocol, _inbound(mesh), "/public/caf%C3%A9.html?q=a;b.&r=%25", 200, "/public/caf%C3%A9.html")
