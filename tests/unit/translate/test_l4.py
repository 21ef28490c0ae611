"""Protocols in the translator: `--upstream` listeners (TCP, TLS by SNI, HTTP), VirtualService
`tcp`/`tls` rules, HTTP/2 between sidecars (h2UpgradePolicy, useClientProtocol) and WebSockets."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import CLUSTER, LISTENER, translate

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TCP_ECHO = "tcp-echo.default.svc.cluster.local"


def _workload(
    service: str,
    version: str,
    n: int,
    protocol: str,
    port: int = 9000,
    upstreams: list | None = None,
    labels: dict | None = None,
) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{version}-00000{n}.default",
            "name": f"{service}-{version}",
            "namespace": "default",
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": version, **(labels or {})},
            "address": f"127.0.10.{n}",
            "port": port,
            "app_port": 30000 + n,
            "protocol": protocol,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
            "upstreams": upstreams or [],
        }
    )


UPSTREAMS = [
    {"service": "tcp-echo", "namespace": "default", "port": 9000, "local_port": 19000},
    {"service": "tls-a", "namespace": "default", "port": 9443, "local_port": 19443},
    {"service": "web", "namespace": "default", "port": 8080, "local_port": 18080},
    {"service": "missing", "namespace": "default", "port": 7000, "local_port": 17000},
]
CLIENT = _workload("client", "v1", 2, "http", 9080, UPSTREAMS, {"team": "blue"})
SERVERS = (
    _workload("tcp-echo", "v1", 3, "tcp"),
    _workload("tcp-echo", "v2", 4, "tcp"),
    _workload("tls-a", "v1", 5, "tls", 9443),
    _workload("tls-b", "v1", 6, "tls", 9443),
    _workload("web", "v1", 7, "http", 8080),
    _workload("grpc", "v1", 8, "grpc", 9090),
)
SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def _snapshot(*texts: str, h2_upgrade_policy: str = "DO_NOT_UPGRADE") -> MeshSnapshot:
    resources = [r for t in texts for r in parse_documents(t)]
    kinds = lambda k: tuple(r for r in resources if r.kind == k)  # noqa: E731
    return MeshSnapshot(
        "l4", (CLIENT, *SERVERS), kinds("VirtualService"), kinds("DestinationRule"), h2_upgrade_policy=h2_upgrade_policy
    )


def _listener(snapshot: MeshSnapshot, port: int):
    return dict(translate(snapshot, CLIENT).by_type[LISTENER])[f"127.0.10.2_{port}"]


def _tcp_proxy(chain) -> tcp_proxy_pb2.TcpProxy:
    out = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(out)
    return out


def _targets(chain) -> dict[str, int]:
    proxy = _tcp_proxy(chain)
    return {proxy.cluster: 100} if proxy.cluster else {c.name: c.weight for c in proxy.weighted_clusters.clusters}


def _tcp_vs(rules: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo}}\nspec:\n  "
        f"hosts: [tcp-echo]\n  tcp:\n{rules}"
    )


# --- TCP -------------------------------------------------------------------------------------------


def test_tcp_upstream_without_rules_forwards_to_the_service():
    listener = _listener(_snapshot(), 19000)
    assert listener.address.socket_address.address == "127.0.10.2" and not listener.listener_filters
    assert [_targets(c) for c in listener.filter_chains] == [{f"outbound|9000||{TCP_ECHO}": 100}]


def test_tcp_weights_split_between_subsets():
    vs = _tcp_vs(
        "  - route:\n    - {destination: {host: tcp-echo, subset: v1}, weight: 70}\n    - {destination: {host: "
        "tcp-echo, subset: v2}, weight: 30}\n"
    )
    (chain,) = _listener(_snapshot(SUBSETS, vs), 19000).filter_chains
    assert _targets(chain) == {f"outbound|9000|v1|{TCP_ECHO}": 70, f"outbound|9000|v2|{TCP_ECHO}": 30}


@pytest.mark.parametrize(
    "match, applies",
    [
        ("{port: 9000}", True),
        ("{port: 9001}", False),
        ("{sourceLabels: {team: blue}}", True),
        ("{sourceLabels: {team: red}}", False),
        ("{sourceNamespace: default}", True),
        ("{sourceNamespace: other}", False),
        ("{destinationSubnets: [127.0.10.0/24]}", True),
        ("{destinationSubnets: [10.0.0.0/8]}", False),
        ("{gateways: [mesh]}", True),
        ("{gateways: [ingress]}", False),
    ],
)
def test_first_tcp_rule_whose_match_applies_wins(match, applies):
    vs = _tcp_vs(
        f"  - match: [{match}]\n    route: [{{destination: {{host: tcp-echo, subset: v2}}}}]\n  - route: "
        f"[{{destination: {{host: tcp-echo, subset: v1}}}}]\n"
    )
    (chain,) = _listener(_snapshot(SUBSETS, vs), 19000).filter_chains
    assert _targets(chain) == {f"outbound|9000|{'v2' if applies else 'v1'}|{TCP_ECHO}": 100}


def test_zero_weight_destinations_are_left_out():
    vs = _tcp_vs(
        "  - route:\n    - {destination: {host: tcp-echo, subset: v1}, weight: 0}\n    - {destination: {host: "
        "tcp-echo, subset: v2}, weight: 100}\n"
    )
    (chain,) = _listener(_snapshot(SUBSETS, vs), 19000).filter_chains
    assert _targets(chain) == {f"outbound|9000|v2|{TCP_ECHO}": 100}


def test_an_unregistered_upstream_still_gets_its_port():
    (chain,) = _listener(_snapshot(), 17000).filter_chains
    assert _targets(chain) == {"outbound|7000||missing.default.svc.cluster.local": 100}


# --- TLS -------------------------------------------------------------------------------------------

TLS_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: by-sni}
spec:
  hosts: [tls-a, tls-b]
  tls:
  - match: [{sniHosts: [b.example.com, "*.b.example.com"]}]
    route: [{destination: {host: tls-b}}]
  - match: [{sniHosts: [b.example.com, a.example.com]}, {sniHosts: [c.example.com], sourceLabels: {team: red}}]
    route: [{destination: {host: tls-a}, weight: 80}, {destination: {host: tls-b}, weight: 20}]
"""


def test_tls_routes_become_sni_filter_chains_first_match_wins():
    listener = _listener(_snapshot(TLS_VS), 19443)
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = [(list(c.filter_chain_match.server_names), _targets(c)) for c in listener.filter_chains]
    assert chains == [
        (["*.b.example.com", "b.example.com"], {"outbound|9443||tls-b.default.svc.cluster.local": 100}),
        # b.example.com went to the first rule; c.example.com is for other clients only.
        (
            ["a.example.com"],
            {
                "outbound|9443||tls-a.default.svc.cluster.local": 80,
                "outbound|9443||tls-b.default.svc.cluster.local": 20,
            },
        ),
        ([], {"outbound|9443||tls-a.default.svc.cluster.local": 100}),  # any other name: the service dialed
    ]


# --- HTTP upstreams, HTTP/2 and WebSockets ---------------------------------------------------------


def _manager(filter_) -> hcm.HttpConnectionManager:
    out = hcm.HttpConnectionManager()
    filter_.typed_config.Unpack(out)
    return out


def test_http_upstream_routes_any_host_like_the_outbound_proxy():
    web_vs = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: "
        "[web]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: tcp-echo}}]\n  - "
        "route: [{destination: {host: web}}]\n"
    )
    (chain,) = _listener(_snapshot(web_vs), 18080).filter_chains
    manager = _manager(chain.filters[0])
    (vhost,) = manager.route_config.virtual_hosts
    assert list(vhost.domains) == ["*"]
    assert [r.route.cluster for r in vhost.routes] == [
        f"outbound|9000||{TCP_ECHO}",
        "outbound|8080||web.default.svc.cluster.local",
    ]


def test_every_http_connection_manager_passes_websockets_also_over_http2():
    listeners = dict(translate(_snapshot(), CLIENT).by_type[LISTENER])
    managers = [
        _manager(listeners["outbound_http"].filter_chains[0].filters[0]),
        _manager(listeners["127.0.10.2_18080"].filter_chains[0].filters[0]),
    ]
    managers += [_manager(c.filters[0]) for c in listeners["inbound|9080"].filter_chains]
    for m in managers:
        assert [u.upgrade_type for u in m.upgrade_configs] == ["websocket"]
        assert m.http2_protocol_options.allow_connect


def _options(snapshot: MeshSnapshot, cluster: str) -> hpo.HttpProtocolOptions | None:
    found = dict(translate(snapshot, CLIENT).by_type[CLUSTER])[cluster]
    if HTTP_OPTIONS not in found.typed_extension_protocol_options:
        return None
    out = hpo.HttpProtocolOptions()
    found.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(out)
    return out


def _web_pool(http: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: "
        f"web\n  trafficPolicy: {{connectionPool: {{http: {http}}}}}\n"
    )


def _protocol(options: hpo.HttpProtocolOptions | None) -> str:
    if options is None or not options.HasField("upstream_protocol_options"):
        return "http1"
    if options.HasField("use_downstream_protocol_config"):
        return "client"
    return "h2" if options.explicit_http_config.HasField("http2_protocol_options") else "http1"


WEB = "outbound|8080||web.default.svc.cluster.local"


@pytest.mark.parametrize(
    "rule, mesh, expected",
    [
        (None, "DO_NOT_UPGRADE", "http1"),  # Istio's mesh default
        (None, "UPGRADE", "h2"),
        ("{h2UpgradePolicy: DEFAULT}", "UPGRADE", "h2"),
        ("{h2UpgradePolicy: DO_NOT_UPGRADE}", "UPGRADE", "http1"),
        ("{h2UpgradePolicy: UPGRADE}", "DO_NOT_UPGRADE", "h2"),
        ("{useClientProtocol: true}", "UPGRADE", "client"),
    ],
)
def test_h2_upgrade_between_sidecars_follows_istio(rule, mesh, expected):
    snapshot = _snapshot(*([_web_pool(rule)] if rule else []), h2_upgrade_policy=mesh)
    options = _options(snapshot, WEB)
    assert _protocol(options) == expected
    if expected != "http1":  # WebSockets cross an HTTP/2 hop as extended CONNECT
        h2 = (
            options.explicit_http_config.http2_protocol_options
            if expected == "h2"
            else options.use_downstream_protocol_config.http2_protocol_options
        )
        assert h2.allow_connect


def test_http2_services_always_speak_http2_and_opaque_ones_never_upgrade():
    snapshot = _snapshot(h2_upgrade_policy="UPGRADE")
    assert _protocol(_options(snapshot, "outbound|9090||grpc.default.svc.cluster.local")) == "h2"
    assert _protocol(_options(snapshot, f"outbound|9000||{TCP_ECHO}")) == "http1"


def test_the_app_hop_keeps_the_apps_protocol_under_a_mesh_upgrade():
    web = SERVERS[4]
    (inbound,) = [
        c
        for n, c in translate(_snapshot(h2_upgrade_policy="UPGRADE"), web).by_type[CLUSTER]
        if n.startswith("inbound|")
    ]
    assert HTTP_OPTIONS not in inbound.typed_extension_protocol_options
