"""AuthorizationPolicy with real sidecars: Istio's documented behaviours, one test each, observed as
clients observe them (status, the body Envoy writes, whether the app saw the request, a TCP
connection closed without a byte), plus the dry-run counters in the server sidecar's Envoy stats.

One control plane for the module, started with a MeshConfig naming an external authorizer that
this test runs itself (an HTTP server in this process: allows when `x-allow: yes`).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import BACKEND, ControlPlane, Workload, drained, http, reset_config, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("authorization")]
APPS = Path(__file__).parents[1] / "apps"
SERVER = "authz-server"
URL = f"http://{SERVER}.default:9080"
DENIED = b"RBAC: access denied"


class Authorizer(BaseHTTPRequestHandler):
    """The external authorizer: 200 when the checked request carried `x-allow: yes`, else 403."""

    seen: list[str] = []

    def do_GET(self) -> None:
        Authorizer.seen.append(self.path)
        allowed = self.headers.get("x-allow") == "yes"
        body = b"" if allowed else b"denied by the test authorizer"
        self.send_response(200 if allowed else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A server, three HTTP clients (two service accounts in `default`, one in `other`), a TCP
    server, and the authorizer; client-a also has an `--upstream` port to the TCP server."""
    authorizer = ThreadingHTTPServer(("127.0.0.1", 0), Authorizer)
    threading.Thread(target=authorizer.serve_forever, name="test-authorizer", daemon=True).start()
    home = tmp_path_factory.mktemp("authz") / "home"
    home.mkdir(parents=True)
    mesh_config = home / "mesh.yaml"
    mesh_config.write_text(
        json.dumps(
            {
                "extensionProviders": [
                    {
                        "name": "test-authz",
                        "envoyExtAuthzHttp": {
                            "service": "127.0.0.1",
                            "port": authorizer.server_address[1],
                            "includeRequestHeadersInCheck": ["x-allow"],
                        },
                    }
                ]
            }
        )
    )
    plane = ControlPlane(home, "--mesh-config", str(mesh_config))
    tcp_local = _free_port()
    try:
        plane.start()
        workloads = [
            Workload(plane, SERVER, command=BACKEND),
            Workload(
                plane,
                "client",
                "v1",
                command=BACKEND,
                extra=("--service-account", "client-a", "--upstream", f"tcp-echo:9000={tcp_local}"),
            ),
            Workload(plane, "client", "v2", command=BACKEND, extra=("--service-account", "client-b")),
            Workload(
                plane,
                "client",
                "v3",
                command=BACKEND,
                extra=("--service-account", "client-c", "-n", "other"),
                token=plane.token("client-c", "other", services=["client"]),
            ),
            Workload(
                plane,
                "tcp-echo",
                command=[sys.executable, str(APPS / "tcp_echo.py")],
                extra=("--port", "9000", "--protocol", "tcp"),
            ),
        ]
        with running(plane, workloads) as ready:
            yield {
                "plane": plane,
                "server": ready[0],
                "a": ready[1],
                "b": ready[2],
                "other": ready[3],
                "tcp": ready[4],
                "tcp_local": tcp_local,
            }
    finally:
        plane.stop()
        authorizer.shutdown()
        authorizer.server_close()


@pytest.fixture
def ctx(mesh):
    reset_config(mesh["plane"])
    for w in (mesh["server"], mesh["tcp"]):
        drained(w)
    Authorizer.seen.clear()
    return mesh


def _policy(
    name: str, spec: dict, namespace: str = "default", selector: str | None = SERVER, annotations: dict | None = None
) -> dict:
    if selector:
        spec = {"selector": {"matchLabels": {"app": selector}}, **spec}
    metadata = {"name": name, "namespace": namespace, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec}


def _apply(mesh, *docs: dict) -> None:
    plane = mesh["plane"]
    plane.apply("\n---\n".join(json.dumps(d) for d in docs))
    wait_for(plane.all_synced, 10, what="every proxy to hold the policies")
    for w in (mesh["server"], mesh["tcp"]):
        drained(w)


def _get(client: Workload, path: str = "/", headers: dict | None = None) -> tuple[int, bytes, bool]:
    """(status, body, whether the app answered) of one request from `client` to the server."""
    status, h, body = client.call(f"{URL}{path}", headers)
    return status, body, h.get("x-served-by") == f"{SERVER}-v1"


def _stat(workload: Workload, name: str) -> int:
    body = http(
        "GET",
        f"http://{workload.address}:{workload.info['agent_port']}/stats?filter={urllib.parse.quote('^' + name + '$')}",
    )[2].decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if line.split(":", 1)[0] == name)


def _rbac_stats(workload: Workload) -> str:
    return http("GET", f"http://{workload.address}:{workload.info['agent_port']}/stats?filter=rbac")[2].decode()


def _tcp_exchange(mesh, line: bytes = b"hello\n") -> bytes:
    """Send a line through client-a's upstream port to the TCP server; everything read back until
    the connection closes or 2 s pass without data."""
    with socket.create_connection((mesh["a"].address, mesh["tcp_local"]), timeout=5) as s:
        s.sendall(line)
        s.settimeout(2)
        received = b""
        try:
            while chunk := s.recv(4096):
                received += chunk
                if received.endswith(b"\n"):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def test_allow_nothing_denies_everyone(ctx):
    assert _get(ctx["a"])[2] and _get(ctx["b"])[2]  # open before the policy
    _apply(ctx, _policy("allow-nothing", {}))
    for client in (ctx["a"], ctx["b"], ctx["other"]):
        assert _get(client) == (403, DENIED, False)


def test_deny_by_path(ctx):
    _apply(
        ctx,
        _policy(
            "deny-admin", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}
        ),
    )
    assert _get(ctx["a"], "/admin") == (403, DENIED, False)
    assert _get(ctx["a"], "/admin/users?x=1") == (403, DENIED, False)
    assert _get(ctx["a"], "/administrator")[::2] == (200, True)
    assert _get(ctx["a"], "/public")[::2] == (200, True)


def test_allow_by_principal(ctx):
    _apply(
        ctx,
        _policy(
            "only-a", {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client-a"]}}]}]}
        ),
    )
    assert _get(ctx["a"])[::2] == (200, True)
    assert _get(ctx["b"]) == (403, DENIED, False)
    # Plaintext straight to the inbound port (PERMISSIVE): no certificate, so no principal.
    status, _, body = http("GET", f"http://{ctx['server'].address}:9080/")
    assert (status, body) == (403, DENIED)


def test_namespace_rules(ctx):
    _apply(ctx, _policy("from-other", {"rules": [{"from": [{"source": {"namespaces": ["other"]}}]}]}))
    assert _get(ctx["other"])[::2] == (200, True)
    assert _get(ctx["a"]) == (403, DENIED, False)
    _apply(
        ctx,
        _policy("from-other", {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["default"]}}]}]}),
    )
    assert _get(ctx["other"]) == (403, DENIED, False)
    assert _get(ctx["a"])[::2] == (200, True)


def test_when_request_header(ctx):
    _apply(ctx, _policy("header", {"rules": [{"when": [{"key": "request.headers[x-token]", "values": ["let-me-*"]}]}]}))
    assert _get(ctx["a"], headers={"x-token": "let-me-in"})[::2] == (200, True)
    assert _get(ctx["a"], headers={"x-token": "nope"}) == (403, DENIED, False)
    assert _get(ctx["a"]) == (403, DENIED, False)


def test_tcp_authorization_by_port(ctx):
    assert _tcp_exchange(ctx) == b"tcp-echo-v1 hello\n"
    _apply(ctx, _policy("tcp-port", {"rules": [{"to": [{"operation": {"ports": ["9001"]}}]}]}, selector="tcp-echo"))
    assert _tcp_exchange(ctx) == b""  # closed by the server's sidecar, nothing from the app
    _apply(ctx, _policy("tcp-port", {"rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]}, selector="tcp-echo"))
    assert _tcp_exchange(ctx) == b"tcp-echo-v1 hello\n"
    # An HTTP-only field in an ALLOW rule on TCP: Istio drops the rule, so nothing is allowed.
    _apply(
        ctx,
        _policy(
            "tcp-port",
            {"rules": [{"to": [{"operation": {"ports": ["9000"], "methods": ["GET"]}}]}]},
            selector="tcp-echo",
        ),
    )
    assert _tcp_exchange(ctx) == b""


def test_dry_run_counts_but_does_not_deny(ctx):
    counter = "http.inbound_0.0.0.0_9080.rbac.istio_dry_run_deny_.shadow_denied"  # Envoy adds the dot
    before = _stat(ctx["server"], counter)
    _apply(
        ctx,
        _policy(
            "would-deny",
            {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/dry"]}}]}]},
            annotations={"istio.io/dry-run": "true"},
        ),
    )
    assert [_get(ctx["a"], "/dry")[::2] for _ in range(3)] == [(200, True)] * 3
    assert _get(ctx["a"], "/other")[::2] == (200, True)
    assert _stat(ctx["server"], counter) - before == 3, _rbac_stats(ctx["server"])
    # The task's Prometheus query, on the server's scrape (its port 80 is 9080 here):
    # envoy_http_inbound_0_0_0_0_80_rbac{authz_dry_run_action="deny",authz_dry_run_result="denied"}
    wanted = {"authz_dry_run_action": "deny", "authz_dry_run_result": "denied"}
    found = _series(ctx["server"], "envoy_http_inbound_0_0_0_0_9080_rbac")
    assert any(labels.items() >= wanted.items() and value >= 3 for labels, value in found), found


def _series(workload: Workload, metric: str) -> list[tuple[dict, float]]:
    """The samples of `metric` in the workload's Prometheus scrape (the agent's /stats/prometheus)."""
    body = http("GET", f"http://{workload.address}:{workload.info['agent_port']}/stats/prometheus")[2].decode()
    out = []
    for line in body.splitlines():
        name, _, rest = line.partition("{")
        if name != metric:
            continue
        labels, _, value = rest.rpartition("} ")
        out.append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return out


def test_custom_external_authorizer(ctx):
    _apply(
        ctx,
        _policy(
            "ext",
            {
                "action": "CUSTOM",
                "provider": {"name": "test-authz"},
                "rules": [{"to": [{"operation": {"paths": ["/private/*"]}}]}],
            },
        ),
    )
    assert _get(ctx["a"], "/private/x", {"x-allow": "yes"})[::2] == (200, True)
    status, body, served = _get(ctx["a"], "/private/y", {"x-allow": "no"})
    assert (status, body, served) == (403, b"denied by the test authorizer", False)
    assert _get(ctx["a"], "/public")[::2] == (200, True)  # not selected: the authorizer is not asked
    assert Authorizer.seen == ["/private/x", "/private/y"]


def test_mesh_wide_policy_in_the_root_namespace(ctx):
    _apply(
        ctx,
        _policy(
            "mesh-deny",
            {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/mesh-denied"]}}]}]},
            namespace="istio-system",
            selector=None,
        ),
    )
    assert _get(ctx["a"], "/mesh-denied") == (403, DENIED, False)
    assert _get(ctx["other"], "/mesh-denied") == (403, DENIED, False)
    # The client sidecars are under it too: a call to client-b's app is denied by client-b's sidecar.
    status, h, body = ctx["a"].call("http://client:9080/mesh-denied")
    assert (status, body) == (403, DENIED)
    assert _get(ctx["a"], "/fine")[::2] == (200, True)
