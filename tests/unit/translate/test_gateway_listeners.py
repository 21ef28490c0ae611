"""Gateway proxies: listeners per Gateway port, routes from the VirtualServices bound to them."""

from __future__ import annotations

from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import CLUSTER, LISTENER, ROUTE, translate

BOOKINFO_GATEWAY = Path("/work/shared/conformance/istio-bookinfo/bookinfo-gateway.yaml")
GATEWAY_NODE = "ingressgateway-abc123.istio-system"


def _record(name: str, service: str, n: int, **extra) -> dict:
    return {
        "id": f"{name}-00000{n}.{extra.pop('namespace', 'default')}",
        "name": name,
        "namespace": "default",
        "service": service,
        "service_account": service,
        "labels": {"app": service, "version": "v1"},
        "address": f"127.0.10.{n}",
        "port": 9080,
        "app_port": 30000 + n,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
    } | extra


def _gateway(listen: dict | None = None, labels: dict | None = None) -> Workload:
    return Workload.from_record(
        _record("ingressgateway", "istio-ingressgateway", 9, namespace="istio-system")
        | {
            "id": GATEWAY_NODE,
            "namespace": "istio-system",
            "kind": "gateway",
            "listen": {str(k): v for k, v in (listen or {}).items()},
            "labels": labels or {"istio": "ingressgateway", "app": "istio-ingressgateway"},
        }
    )


def _snapshot(yaml_text: str, gateway: Workload | None = None) -> MeshSnapshot:
    resources = parse_documents(yaml_text)
    workloads = (
        Workload.from_record(_record("productpage-v1", "productpage", 1)),
        Workload.from_record(_record("details-v1", "details", 2)),
        gateway or _gateway(),
    )
    by_kind = lambda k: tuple(r for r in resources if r.kind == k)  # noqa: E731
    return MeshSnapshot(
        "1",
        workloads=workloads,
        virtual_services=by_kind("VirtualService"),
        destination_rules=by_kind("DestinationRule"),
        gateways=by_kind("Gateway"),
    )


def _of(snapshot: MeshSnapshot, proxy: Workload | None = None) -> dict:
    resources = translate(snapshot, proxy or snapshot.workload(GATEWAY_NODE))
    return {t: dict(resources.by_type[t]) for t in (CLUSTER, LISTENER, ROUTE)}


def _manager(listener: listener_pb2.Listener, chain: int = 0) -> hcm.HttpConnectionManager:
    out = hcm.HttpConnectionManager()
    listener.filter_chains[chain].filters[0].typed_config.Unpack(out)
    return out


def test_bookinfo_gateway_serves_port_80_on_8080_with_the_bound_routes():
    out = _of(_snapshot(BOOKINFO_GATEWAY.read_text()))
    (listener,) = out[LISTENER].values()
    assert (
        listener.address.socket_address.port_value == 8080 and listener.address.socket_address.address == "127.0.10.9"
    )
    manager = _manager(listener)
    assert manager.rds.route_config_name == "http.80" and manager.strip_any_host_port
    assert "envoy.filters.http.dynamic_forward_proxy" not in [f.name for f in manager.http_filters]
    (vhost,) = out[ROUTE]["http.80"].virtual_hosts
    assert list(vhost.domains) == ["*"]
    refused, routed = vhost.routes[:2], vhost.routes[2:]  # a '*' host first refuses malformed requests (rds.refusals)
    assert [r.name for r in refused] == ["ambiguous_host", "method_case"] and all(
        r.direct_response.status == 400 for r in refused
    )
    assert [r.match.path or r.match.prefix for r in routed] == [
        "/productpage",
        "/static",
        "/login",
        "/logout",
        "/api/v1/products",
    ]
    assert {r.route.cluster for r in routed} == {"outbound|9080||productpage.default.svc.cluster.local"}


def test_gateway_has_mesh_clusters_but_no_inbound_and_is_a_service_on_its_gateway_ports():
    snapshot = _snapshot(BOOKINFO_GATEWAY.read_text())
    clusters = _of(snapshot)[CLUSTER]
    assert "outbound|9080||productpage.default.svc.cluster.local" in clusters
    assert not any(name.startswith("inbound|") for name in clusters)
    # Reachable as a mesh service, as Istio's gateway Service makes it: port 80, served on 8080.
    host = "istio-ingressgateway.istio-system.svc.cluster.local"
    assert [(s.name, s.port, s.protocol) for s in snapshot.services if s.hostname == host] == [
        ("istio-ingressgateway", 80, "http")
    ]
    assert [(e.address, e.port, e.target_port) for e in snapshot.endpoints(host)] == [("127.0.10.9", 80, 8080)]
    # The cluster to productpage carries the mesh's mTLS, as a sidecar's does.
    assert (
        clusters["outbound|9080||productpage.default.svc.cluster.local"].transport_socket_matches[0].name
        == "tlsMode-istio"
    )


def test_sidecars_do_not_get_gateway_listeners():
    snapshot = _snapshot(BOOKINFO_GATEWAY.read_text())
    out = _of(snapshot, snapshot.workloads[0])
    assert not any(name.endswith("_8080") for name in out[LISTENER])


def test_listen_overrides_the_local_port_and_high_ports_stay():
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9443, name: tcp, protocol: TCP}
    hosts: ["*"]
"""
    out = _of(_snapshot(gw, _gateway({80: 31080})))
    assert sorted(out[LISTENER]) == ["127.0.10.9_31080"]  # no VirtualService binds the TCP port: no chain, no listener
    assert gateway_port(out, "127.0.10.9_31080") == 31080


def gateway_port(out: dict, name: str) -> int:
    return out[LISTENER][name].address.socket_address.port_value


def test_selector_matching_no_proxy_changes_nothing():
    before = _of(_snapshot(""))
    after = _of(_snapshot(BOOKINFO_GATEWAY.read_text().replace("istio: ingressgateway", "istio: other-gateway")))
    assert before[LISTENER] == after[LISTENER] == {} and before[ROUTE] == after[ROUTE] == {}


HOSTS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["default/*.example.com", "other/shop.example.org"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: MUTUAL, serverCertificate: /c/cert.pem, privateKey: /c/key.pem, caCertificates: /c/ca.pem,
    subjectAltNames: [client.example.com], minProtocolVersion: TLSV1_3}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com, shop.example.org, "*"]
  gateways: [web]
  http:
  - route: [{destination: {host: productpage}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: default}
spec:
  hosts: [a.example.com]
  gateways: [default/web, mesh]
  http:
  - match: [{uri: {prefix: /details}}]
    route: [{destination: {host: details, port: {number: 9080}}}]
"""


def test_hosts_intersect_merge_and_respect_the_namespace_part():
    out = _of(_snapshot(HOSTS))
    vhosts = {v.name: v for v in out[ROUTE]["http.80"].virtual_hosts}
    # shop.example.org only admits VirtualServices from namespace `other`: it gets the redirect, no
    # routes; '*' narrows to the server's host; a.example.com merges two VirtualServices.
    assert sorted(vhosts) == ["*.example.com:80", "a.example.com:80", "shop.example.org:80"]
    assert not vhosts["shop.example.org:80"].routes
    assert [r.route.cluster.split("|")[3] for r in vhosts["a.example.com:80"].routes] == [
        "productpage.default.svc.cluster.local",
        "details.default.svc.cluster.local",
    ]
    assert all(v.require_tls == v.ALL for v in vhosts.values())  # httpsRedirect


def test_https_mutual_terminates_with_the_given_files():
    out = _of(_snapshot(HOSTS))
    listener = out[LISTENER]["127.0.10.9_8443"]
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["*.example.com"]
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert context.require_client_certificate.value
    assert (
        common.tls_certificates[0].certificate_chain.filename == "/c/cert.pem"
        and common.validation_context.trusted_ca.filename == "/c/ca.pem"
    )
    assert {m.matcher.exact for m in common.validation_context.match_typed_subject_alt_names} == {"client.example.com"}
    assert common.tls_params.tls_minimum_protocol_version == common.tls_params.TLSv1_3
    assert _manager(listener).rds.route_config_name in out[ROUTE]


def test_tls_passthrough_forwards_by_sni_and_tcp_by_port():
    yaml_text = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: t, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [pp.example.com, not-mine.example.org], port: 443}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: details, port: {number: 9080}}}]
"""
    out = _of(_snapshot(yaml_text))
    (chain,) = out[LISTENER]["127.0.10.9_8443"].filter_chains
    assert list(chain.filter_chain_match.server_names) == ["pp.example.com"]
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound|9080||productpage.default.svc.cluster.local"
    out[LISTENER]["127.0.10.9_31400"].filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound|9080||details.default.svc.cluster.local"
    assert out[ROUTE] == {}


def test_match_level_gateways_narrow_the_rules():
    yaml_text = (
        BOOKINFO_GATEWAY.read_text()
        + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split}
spec:
  hosts: [details.example.com]
  gateways: [bookinfo-gateway, mesh]
  http:
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /edge}, gateways: [bookinfo-gateway]}]
    route: [{destination: {host: details}}]
"""
    )
    vhosts = {v.name: v for v in _of(_snapshot(yaml_text))[ROUTE]["http.80"].virtual_hosts}
    assert [r.match.prefix for r in vhosts["details.example.com:80"].routes] == ["/edge"]


def test_routes_to_mesh_services_say_the_gateway_called_and_outside_hosts_are_not_told():
    external = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http: [{match: [{uri: {prefix: /ext}}], route: [{destination: {host: api.example.com}}]}]
"""
    snap = _snapshot(BOOKINFO_GATEWAY.read_text() + external)
    snap = MeshSnapshot(
        "1",
        workloads=snap.workloads,
        virtual_services=snap.virtual_services,
        gateways=snap.gateways,
        service_entries=tuple(r for r in parse_documents(external) if r.kind == "ServiceEntry"),
    )
    (vhost,) = _of(snap)[ROUTE]["http.80"].virtual_hosts
    told = {
        r.match.path or r.match.prefix: [
            h.header.value for h in r.request_headers_to_add if h.header.key == "x-lattice-peer"
        ]
        for r in vhost.routes[2:]
    }
    assert told["/productpage"] == ["%ENVIRONMENT(LATTICE_PEER)%"]
    assert told["/ext"] == []
