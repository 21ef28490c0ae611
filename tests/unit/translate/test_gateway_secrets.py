"""credentialName: a gateway gets the secrets its own servers name, over SDS on its ADS stream, and
a server whose secret is missing is left out (and `lattice status` says why)."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.credentials import TlsCredential
from lattice.translate import LISTENER, SECRET, translate

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: MODE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [mygateway]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"""
CREDENTIAL = TlsCredential(b"CERT-PEM", b"KEY-PEM", b"CA-PEM")


def _workload(name: str, namespace: str, n: int, kind: str = "sidecar", labels: dict | None = None) -> Workload:
    return Workload.from_record(
        {
            "id": f"{name}-{n}.{namespace}",
            "name": name,
            "namespace": namespace,
            "service": name,
            "service_account": name,
            "labels": labels or {"app": name},
            "address": f"127.0.10.{n}",
            "port": 8000,
            "app_port": 30000 + n,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
            "kind": kind,
            "listen": {"443": 8443} if kind == "gateway" else {},
        }
    )


GATEWAYS = {ns: _workload("ingressgateway", ns, i, "gateway", {"istio": "ingressgateway"}) for i, ns in
            ((2, "istio-system"), (3, "other"))}  # fmt: skip
HTTPBIN = _workload("httpbin", "default", 1)


def _snapshot(mode: str = "SIMPLE", credentials: dict | None = None) -> MeshSnapshot:
    resources = parse_documents(GATEWAY.replace("MODE", mode))
    return MeshSnapshot(
        "1",
        workloads=(HTTPBIN, *GATEWAYS.values()),
        gateways=tuple(r for r in resources if r.kind == "Gateway"),
        virtual_services=tuple(r for r in resources if r.kind == "VirtualService"),
        tls_credentials=credentials
        if credentials is not None
        else {("istio-system", "httpbin-credential"): CREDENTIAL},
    )


def _tls(snapshot: MeshSnapshot, proxy: Workload) -> list[tls_pb2.DownstreamTlsContext]:
    out = []
    for listener in dict(translate(snapshot, proxy).by_type[LISTENER]).values():
        for chain in listener.filter_chains:
            context = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(context)
            out.append(context)
    return out


def test_simple_server_names_the_secret_over_ads_and_the_gateway_gets_only_it():
    snapshot = _snapshot()
    gateway = GATEWAYS["istio-system"]
    (context,) = _tls(snapshot, gateway)
    (sds,) = context.common_tls_context.tls_certificate_sds_secret_configs
    assert sds.name == "lattice://istio-system/httpbin-credential" and sds.sds_config.HasField("ads")
    assert not context.require_client_certificate.value
    secrets = dict(translate(snapshot, gateway).by_type[SECRET])
    (secret,) = secrets.values()
    assert secret.tls_certificate.private_key.inline_bytes == b"KEY-PEM"
    assert secret.tls_certificate.certificate_chain.inline_bytes == b"CERT-PEM"
    assert snapshot.conflicts() == [
        "Gateway default/mygateway server port 443 on ingressgateway-3.other: no TLS secret 'httpbin-credential' in "
        "namespace other (lattice secret create tls httpbin-credential -n other ...); not served"
    ]


def test_a_gateway_in_another_namespace_and_sidecars_get_no_secret():
    snapshot = _snapshot()
    assert translate(snapshot, GATEWAYS["other"]).by_type[SECRET] == ()
    assert _tls(snapshot, GATEWAYS["other"]) == []  # its server's secret does not exist in its namespace
    assert translate(snapshot, HTTPBIN).by_type[SECRET] == ()


def test_mutual_checks_clients_against_the_secrets_ca():
    snapshot = _snapshot("MUTUAL")
    (context,) = _tls(snapshot, GATEWAYS["istio-system"])
    assert context.require_client_certificate.value
    combined = context.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "lattice://istio-system/httpbin-credential-cacert"
    names = [n for n, _ in translate(snapshot, GATEWAYS["istio-system"]).by_type[SECRET]]
    assert names == ["lattice://istio-system/httpbin-credential", "lattice://istio-system/httpbin-credential-cacert"]


def test_mutual_without_a_ca_in_the_secret_is_not_served_and_says_why():
    no_ca = {("istio-system", "httpbin-credential"): TlsCredential(b"C", b"K")}
    snapshot = _snapshot("MUTUAL", no_ca)
    assert _tls(snapshot, GATEWAYS["istio-system"]) == []
    assert any(
        "has no CA for client certificates, which MUTUAL and OPTIONAL_MUTUAL need" in c for c in snapshot.conflicts()
    )


def test_the_key_never_shows_in_a_credential_repr():
    assert "KEY-PEM" not in repr(CREDENTIAL) and "KEY-PEM" not in repr(_snapshot())
