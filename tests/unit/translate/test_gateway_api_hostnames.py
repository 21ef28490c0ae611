"""A Gateway API Gateway whose listeners share a port with overlapping hostnames: a request goes to
the routes of the most specific listener hostname it matches (conformance
GRPCRouteListenerHostnameMatching / HTTPRouteListenerHostnameMatching)."""

from __future__ import annotations

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.k8s_gateway import CLASS_LABEL, GATEWAY_KEY
from lattice.translate import ROUTE, translate

CONFIG = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: lattice}
spec: {controllerName: lattice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: apps}
spec:
  gatewayClassName: lattice
  listeners:
  - {name: exact, port: 80, protocol: HTTP, hostname: foo.bar.com}
  - {name: wild, port: 80, protocol: HTTP, hostname: "*.bar.com"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-v2, namespace: apps}
spec:
  parentRefs: [{name: web, sectionName: exact}]
  rules: [{backendRefs: [{name: v2, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-v3, namespace: apps}
spec:
  parentRefs: [{name: web, sectionName: wild}]
  rules: [{backendRefs: [{name: v3, port: 8080}]}]
"""
PROXY = Workload.from_record(
    {
        "id": "gw-1.apps",
        "name": "gw",
        "namespace": "apps",
        "service": "gw",
        "service_account": "gw",
        "labels": {CLASS_LABEL: "lattice"},
        "address": "127.0.10.9",
        "port": 80,
        "app_port": 80,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
        "kind": "gateway",
        "listen": {"80": 8080},
    }
)


def test_the_most_specific_listener_hostname_takes_its_own_routes_first():
    resources = parse_documents(CONFIG)
    kind = lambda k: tuple(r for r in resources if r.key[0] == k)  # noqa: E731
    snapshot = MeshSnapshot(
        "1",
        workloads=(PROXY,),
        gateway_classes=kind("GatewayClass"),
        k8s_gateways=kind(GATEWAY_KEY),
        http_routes=kind("HTTPRoute"),
        created={r.key: 1.0 for r in resources},
    )
    (table,) = [m for _, m in translate(snapshot, PROXY).by_type[ROUTE]]
    first = {d: v.routes[0].route.cluster.split("|")[-1].split(".")[0] for v in table.virtual_hosts for d in v.domains}
    assert first == {"foo.bar.com": "v2", "*.bar.com": "v3"}
