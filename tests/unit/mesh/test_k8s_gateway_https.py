"""Gateway API HTTPS listeners: certificateRefs name a `lattice secret`, served over SDS like an
Istio Gateway's credentialName; another namespace's secret needs a ReferenceGrant."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.credentials import TlsCredential
from lattice.mesh.k8s_gateway import CLASS_LABEL, GATEWAY_KEY
from lattice.translate import LISTENER, SECRET, translate

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
  - name: https
    port: 443
    protocol: HTTPS
    hostname: web.example.com
    tls: {certificateRefs: [{kind: Secret, group: "", name: web-cert, namespace: NS}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: apps}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: backend, port: 8000}]}]
"""
GRANT = """
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: apps}]
  to: [{group: "", kind: Secret}]
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
        "listen": {"443": 8443},
    }
)


def _snapshot(namespace: str, grant: bool = False, secrets=(("apps", "web-cert"), ("certs", "web-cert"))):
    resources = parse_documents(CONFIG.replace("NS", namespace) + (GRANT if grant else ""))
    kind = lambda k: tuple(r for r in resources if r.key[0] == k)  # noqa: E731
    return MeshSnapshot(
        "1",
        workloads=(PROXY,),
        gateway_classes=kind("GatewayClass"),
        k8s_gateways=kind(GATEWAY_KEY),
        http_routes=kind("HTTPRoute"),
        reference_grants=kind("ReferenceGrant"),
        tls_credentials={key: TlsCredential(b"CERT", b"KEY") for key in secrets},
    )


def _served(snapshot: MeshSnapshot) -> list[str]:
    names = []
    for listener in dict(translate(snapshot, PROXY).by_type[LISTENER]).values():
        for chain in listener.filter_chains:
            context = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(context)
            names += [c.name for c in context.common_tls_context.tls_certificate_sds_secret_configs]
    return names


def _refs(snapshot: MeshSnapshot) -> dict:
    (listener,) = snapshot.gateway_api.status[(GATEWAY_KEY, "apps", "web")]["listeners"]
    return next(c for c in listener["conditions"] if c["type"] == "ResolvedRefs")


def test_a_secret_in_the_gateways_namespace_is_served_over_sds():
    snapshot = _snapshot("apps")
    assert _served(snapshot) == ["lattice://apps/web-cert"]
    assert [n for n, _ in translate(snapshot, PROXY).by_type[SECRET]] == ["lattice://apps/web-cert"]
    assert _refs(snapshot)["status"] == "True"


def test_another_namespaces_secret_needs_a_reference_grant():
    refused = _snapshot("certs")
    assert _served(refused) == [] and translate(refused, PROXY).by_type[SECRET] == ()
    assert (_refs(refused)["status"], _refs(refused)["reason"]) == ("False", "RefNotPermitted")
    granted = _snapshot("certs", grant=True)
    assert _served(granted) == ["lattice://certs/web-cert"]
    assert _refs(granted)["status"] == "True"


def test_a_missing_secret_says_how_to_make_it():
    snapshot = _snapshot("apps", secrets=())
    assert _served(snapshot) == []
    refs = _refs(snapshot)
    assert refs["reason"] == "InvalidCertificateRef" and "lattice secret create tls web-cert -n apps" in refs["message"]
