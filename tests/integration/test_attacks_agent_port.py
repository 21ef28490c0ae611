"""Attacks on the agent port and on the control plane's mesh-wide views (findings 6 and 7).

- finding 6: any local user (here: `nobody`, via setpriv) read `/config_dump`, stats and the live
  tap from any sidecar's agent port. Metrics stay open (Prometheus scrapes them); the config dump,
  tap, telemetry window and request records need the key the control plane holds.
- finding 7: one rogue agent broke `stat`/`edges` for the whole mesh with a malformed answer,
  grew the control plane's memory with a huge one, and planted an edge with 999,999 requests.
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import BACKEND, ControlPlane, Enrolled, Workload, http, wait_for

pytestmark = pytest.mark.slow

PRIVATE = ("/config_dump", "/lattice/v1/window", "/lattice/v1/tap", "/lattice/v1/requests?limit=5")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("agent-port") / "home").start()
    server = Workload(plane, "teller", command=BACKEND).start()
    client = Workload(plane, "visitor", command=BACKEND).start()
    try:
        wait_for(plane.all_synced, 15, what="both proxies to hold each other's endpoints")
        yield plane, server, client
    finally:
        client.stop()
        server.stop()
        plane.stop()


def _agent(w: Workload, path: str) -> str:
    return f"http://{w.address}:{w.info['agent_port']}{path}"


def _as_nobody(url: str, *headers: str) -> tuple[int, str]:
    """curl as an unprivileged local user: (status, body)."""
    command = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "curl", "-s", "-m", "5"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run(
        [*command, "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20, check=False
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status or 0), body


def test_a_local_user_gets_metrics_but_no_config_tap_or_telemetry_from_an_agent_port(mesh):
    plane, server, client = mesh
    assert client.call("http://teller:9080/private/account")[0] == 200
    for path in PRIVATE:
        status, body = _as_nobody(_agent(server, path))
        assert status == 401, (path, status, body[:200])
        assert "spiffe://" not in body and "/private/account" not in body and "teller" not in body
        forged = _as_nobody(_agent(server, path), "Authorization: Bearer 0123456789abcdef")
        assert forged[0] == 401, (path, forged)
    status, metrics = _as_nobody(_agent(server, "/stats/prometheus"))
    assert status == 200 and "envoy_server_live" in metrics
    assert _as_nobody(_agent(server, "/healthz/ready"))[0] == 200
    # The control plane still has them, for the admin: proxy-config, stat.
    clusters = json.loads(plane.cli("proxy-config", "clusters", server.id, "-o", "json").stdout)
    assert clusters, "lattice proxy-config got nothing through the control plane"
    assert wait_for(
        lambda: [r for r in plane.get("/api/v1/stat?window=300")["items"] if r.get("workload") == "teller-v1"],
        10,
        what="teller's stat through the control plane",
    )


class RogueAgent:
    """A registered workload whose agent port answers whatever the test sets."""

    def __init__(self, address: str) -> None:
        self.answer = b"{}"
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(rogue.answer)))
                self.end_headers()
                self.wfile.write(rogue.answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _forged_edge(victim: str) -> dict:
    row = {
        "reporter": "destination",
        "peer_workload": victim,
        "peer_namespace": "default",
        "peer_principal": f"spiffe://cluster.local/ns/default/sa/{victim.rsplit('-', 1)[0]}",
        "service": "rogue.default.svc.cluster.local",
        "mtls": True,
        "requests": 999_999,
        "failures": 0,
        "latency": {"3": 999_999},
        "tcp_opened": 0,
        "tcp_bytes": 0,
    }
    return {"seconds": 300, "peers": [row], "paths": []}


def test_a_rogue_agent_cannot_break_bloat_or_forge_the_mesh_wide_views(mesh, tmp_path):
    plane, server, client = mesh
    address = "127.1.0.40"
    rogue = RogueAgent(address)
    enrolled = Enrolled(plane, "rogue", "rogue-x.default", tmp_path / "rogue")
    enrolled.register(
        {
            "name": "rogue-v1",
            "service": "rogue",
            "service_account": "rogue",
            "address": address,
            "port": 9080,
            "app_port": 9,
            "outbound_port": 15001,
            "agent_port": rogue.port,
            "healthy": True,
        }
    )
    try:
        assert client.call("http://teller:9080/edge")[0] == 200
        real = ("visitor-v1", "teller-v1")
        for name, answer in (
            ("malformed", b'{"peers": [{"reporter": "destination"}], "paths": 7}'),
            ("not json", b"\xff{"),
            ("huge", b'{"peers": [' + b'{"x": 1},' * 1_000_000 + b'{}], "paths": []}'),
            ("forged", json.dumps(_forged_edge("visitor-v1")).encode()),
        ):
            rogue.answer = answer
            status, _, body = http("GET", f"{plane.api}/api/v1/edges?window=300", headers=plane.admin, timeout=20)
            assert status == 200, (name, body[:300])
            view = json.loads(body)
            edges = {(e["source"], e["destination"]): e for e in view["items"]}
            assert real in edges, (name, view)  # everyone else's traffic is still shown
            assert ("visitor-v1", "rogue-v1") not in edges, (name, edges)  # nothing the caller did not report
            if name != "forged":
                assert "rogue-v1" in view["unreachable"], (name, view["unreachable"])
            status, _, body = http("GET", f"{plane.api}/api/v1/stat?window=300", headers=plane.admin, timeout=20)
            assert status == 200, (name, body[:300])
    finally:
        enrolled.agent_call("DELETE", "/agent/v1/workloads/rogue-x.default")
        rogue.close()
