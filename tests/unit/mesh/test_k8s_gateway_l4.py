"""Gateway API TLSRoute (SNI, passed through) and TCPRoute on a Gateway's TLS and TCP listeners."""

from __future__ import annotations

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.k8s_gateway import CLASS_LABEL, GATEWAY_KEY
from lattice.translate import LISTENER, translate

CONFIG = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: lattice}
spec: {controllerName: lattice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: l4}
spec:
  gatewayClassName: lattice
  listeners:
  - {name: tls, port: 9443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: l4}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: secure, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: plain, namespace: l4}
spec:
  parentRefs: [{name: edge, sectionName: tcp}]
  rules: [{backendRefs: [{name: plain, port: 8000}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: stray, namespace: l4}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  rules: [{backendRefs: [{name: plain, port: 8000}]}]
"""
PROXY = Workload.from_record(
    {
        "id": "edge-1.l4",
        "name": "edge",
        "namespace": "l4",
        "service": "edge",
        "service_account": "edge",
        "labels": {CLASS_LABEL: "lattice"},
        "address": "127.0.10.9",
        "port": 80,
        "app_port": 80,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
        "kind": "gateway",
        "listen": {"9443": 19443, "9000": 19000},
    }
)


def _snapshot() -> MeshSnapshot:
    resources = parse_documents(CONFIG)
    kind = lambda k: tuple(r for r in resources if r.key[0] == k)  # noqa: E731
    return MeshSnapshot(
        "1",
        workloads=(PROXY,),
        gateway_classes=kind("GatewayClass"),
        k8s_gateways=kind(GATEWAY_KEY),
        tls_routes=kind("TLSRoute"),
        tcp_routes=kind("TCPRoute"),
    )


def _cluster(chain) -> str:
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(proxy)
    return proxy.cluster


def test_tls_route_by_sni_and_tcp_route_on_their_listeners():
    snapshot = _snapshot()
    listeners = dict(translate(snapshot, PROXY).by_type[LISTENER])
    (tls_chain,) = listeners["127.0.10.9_19443"].filter_chains
    assert list(tls_chain.filter_chain_match.server_names) == ["secure.example.com"]
    assert _cluster(tls_chain) == "outbound|9080||secure.l4.svc.cluster.local"
    assert not tls_chain.HasField("transport_socket")  # passed through unopened
    (tcp_chain,) = listeners["127.0.10.9_19000"].filter_chains
    assert _cluster(tcp_chain) == "outbound|8000||plain.l4.svc.cluster.local"
    status = snapshot.gateway_api.status
    accepted = lambda name, kind: status[(kind, "l4", name)]["parents"][0]["conditions"][0]  # noqa: E731
    assert accepted("secure", "TLSRoute")["status"] == "True"
    assert accepted("plain", "TCPRoute")["status"] == "True"
    assert accepted("stray", "TCPRoute")["reason"] == "NotAllowedByListeners"  # a TLS listener takes TLSRoutes
