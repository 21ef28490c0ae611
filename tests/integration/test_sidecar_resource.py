"""Istio's `Sidecar` with real sidecars: egress.hosts scoping a client to two services cuts its
Envoy's clusters and its scrape to those two (measured against an unscoped sidecar of the same
mesh), and its outboundTrafficPolicy REGISTRY_ONLY refuses what the mesh's ALLOW_ANY passes."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from harness import BACKEND, ControlPlane, Workload, http, running, wait_for

pytestmark = pytest.mark.slow

SCOPE = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client, namespace: default}
spec:
  workloadSelector:
    labels: {app: client}
  egress:
  - hosts:
    - ./a.default.svc.cluster.local
    - ./b.default.svc.cluster.local
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
OUTBOUND = re.compile(r"outbound\|\d+\|[^|]*\|([a-z0-9-]+)\.")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("sidecar-scope") / "home").start()
    names = ("a", "b", "c", "d", "client")
    # The client and c keep every upstream cluster's stats (Istio's statsInclusionPrefixes), so the
    # scrape shows what scoping saves; Istio's short default list keeps no per-cluster stats at all.
    per_cluster = ("--stats-inclusion-prefixes", "cluster.outbound")
    workloads = [Workload(plane, n, command=BACKEND, extra=per_cluster if n in ("c", "client") else ()) for n in names]
    outside = ThreadingHTTPServer(("127.0.0.1", 0), _Outside)
    Thread(target=outside.serve_forever, daemon=True).start()
    try:
        with running(plane, workloads):
            yield plane, dict(zip(names, workloads, strict=True)), outside.server_address[1]
    finally:
        outside.shutdown()
        plane.stop()


class _Outside(BaseHTTPRequestHandler):
    """A host outside the mesh (not registered, no ServiceEntry)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def _clusters(plane: ControlPlane, w: Workload) -> set[str]:
    """The services the proxy's Envoy holds clusters for, from its own config dump."""
    dump = plane.get(f"/api/v1/proxies/{w.id}/config_dump")
    names = set()
    for config in dump["configs"]:
        for c in config.get("dynamic_active_clusters", []):
            found = OUTBOUND.match(c["cluster"]["name"])
            if found:
                names.add(found.group(1))
    return names


def _scrape(w: Workload) -> str:
    return http("GET", f"http://{w.address}:{w.info['agent_port']}/stats/prometheus")[2].decode()


def test_egress_hosts_cut_clusters_and_scrape_to_the_two_services(mesh, record_property):
    plane, w, _ = mesh
    everything = {"a", "b", "c", "d", "client"}
    plane.cli("delete", "-f", "-", input=SCOPE, check=False)  # (the other test may have applied it)
    wait_for(lambda: _clusters(plane, w["client"]) == everything, 15, what="a sidecar to get every service")
    unscoped_scrape = _scrape(w["client"])
    plane.apply(SCOPE)
    wait_for(lambda: _clusters(plane, w["client"]) == {"a", "b"}, 15, what="the client's Envoy to hold only a and b")
    assert _clusters(plane, w["c"]) == everything  # the Sidecar selects the client alone
    scoped, unscoped = _scrape(w["client"]), _scrape(w["c"])
    scraped = set(re.findall(r'cluster_name="outbound\|\d+\|[^|]*\|([a-z0-9-]+)\.', scoped))
    assert scraped <= {"a", "b"}
    assert set(re.findall(r'cluster_name="outbound\|\d+\|[^|]*\|([a-z0-9-]+)\.', unscoped)) >= {"c", "d"}
    assert len(scoped) < len(unscoped) and len(scoped) < len(unscoped_scrape)
    # What the test measured, shown by `pytest -rA` / junit: 5 services, scoped to 2.
    record_property("clusters", {"scoped": 2, "unscoped": len(everything)})
    record_property("scrape_bytes", {"scoped": len(scoped), "unscoped": len(unscoped)})
    print(f"outbound clusters scoped 2 vs unscoped {len(everything)}; scrape {len(scoped)} vs {len(unscoped)} bytes")


def test_outbound_traffic_policy_per_workload(mesh):
    plane, w, port = mesh
    plane.apply(SCOPE)
    wait_for(lambda: _clusters(plane, w["client"]) == {"a", "b"}, 15, what="the client's scope")
    assert w["client"].call("http://a:9080/")[0] == 200
    assert w["client"].call("http://b:9080/")[0] == 200
    assert w["client"].call(f"http://127.0.0.1:{port}/")[0] == 502  # REGISTRY_ONLY: not in the registry
    assert w["client"].call("http://c:9080/")[0] != 200  # a mesh service outside its egress hosts
    assert w["c"].call(f"http://127.0.0.1:{port}/")[0] == 200  # the mesh's ALLOW_ANY for everyone else
    assert w["c"].call("http://d:9080/")[0] == 200
