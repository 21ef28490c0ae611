"""The captured outbound listener (translate/capture.py) and the virtual IPs it routes by (mesh/vips.py)."""

from __future__ import annotations

import ipaddress

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.vips import VIP_NETWORK, allocate
from lattice.translate.silence import HTTP_INSPECTOR
from lattice.translate import CLUSTER, LISTENER, translate
from lattice.translate.capture import DNS_METADATA, PASSTHROUGH_ORIGINAL_DST
from lattice.translate.names import OUTBOUND_LISTENER


def _workload(service: str, n: int, protocol: str, port: int, capture: bool = False) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-v1-00000{n}.default",
            "name": f"{service}-v1",
            "namespace": "default",
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": "v1"},
            "address": f"10.0.0.{n}",
            "port": port,
            "app_port": 30000 + n,
            "protocol": protocol,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
            "capture": capture,
            "local_address": "127.0.0.1" if capture else "",
            "inbound_address": f"100.127.0.{n}" if capture else "",
        }
    )


WEB = _workload("web", 1, "http", 8080, capture=True)
SNAPSHOT = MeshSnapshot(
    version="1", workloads=(WEB, _workload("reviews", 2, "http", 9080), _workload("db", 3, "tcp", 5432))
)


def _outbound(snapshot: MeshSnapshot = SNAPSHOT, proxy: Workload = WEB) -> listener_pb2.Listener:
    return dict(translate(snapshot, proxy).by_type[LISTENER])[OUTBOUND_LISTENER]


def test_virtual_ips_are_stable_distinct_and_in_the_reserved_range() -> None:
    names = [f"svc{i}.default.svc.cluster.local" for i in range(300)]
    first = allocate(names)
    assert allocate(list(reversed(names))) == first  # the same wherever and in whatever order computed
    assert len(set(first.values())) == 300 and all(ipaddress.ip_address(v) in VIP_NETWORK for v in first.values())
    more = allocate([*names, "new.default.svc.cluster.local"])
    assert sum(first[n] != more[n] for n in names) <= 1  # a new service moves at most the one it clashes with


def test_captured_listener_restores_the_destination_and_routes_tcp_services_by_virtual_ip() -> None:
    listener = _outbound()
    assert [f.name for f in listener.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.http_inspector",
    ]
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == ("127.0.0.1", 15001)
    names = json_format.MessageToDict(listener.metadata.filter_metadata[DNS_METADATA])
    assert names["reviews"] == names["reviews.default.svc.cluster.local"] and names["db.default"] == names["db"]
    chains = {c.name: c for c in listener.filter_chains}
    assert list(chains["http"].filter_chain_match.application_protocols) == ["http/1.0", "http/1.1", "h2c"]
    db = chains[f"{names['db']}_5432"]
    assert db.filter_chain_match.prefix_ranges[0].address_prefix == names["db"]
    proxy = tcp_proxy_pb2.TcpProxy()
    db.filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound|5432||db.default.svc.cluster.local"
    passthrough = tcp_proxy_pb2.TcpProxy()
    chains["passthrough"].filters[0].typed_config.Unpack(passthrough)
    assert passthrough.cluster == PASSTHROUGH_ORIGINAL_DST
    assert f"{names['reviews']}_9080" not in chains  # HTTP is routed by Host, on the http chain


def test_registry_only_closes_what_is_not_the_mesh_and_uncaptured_proxies_are_unchanged() -> None:
    strict = MeshSnapshot(version="1", workloads=SNAPSHOT.workloads, outbound_traffic_policy="REGISTRY_ONLY")
    assert "passthrough" not in {c.name for c in _outbound(strict).filter_chains}
    reviews = SNAPSHOT.workloads[1]
    plain = _outbound(proxy=reviews)
    # Uncaptured: one HTTP chain; its only listener filter bounds a silent connection (translate/silence.py).
    assert [f.name for f in plain.listener_filters] == [
        HTTP_INSPECTOR
    ] and not plain.continue_on_listener_filters_timeout
    assert len(plain.filter_chains) == 1
    clusters = [c.name for c in _clusters(reviews)]
    assert PASSTHROUGH_ORIGINAL_DST not in clusters and PASSTHROUGH_ORIGINAL_DST in [c.name for c in _clusters(WEB)]


def _clusters(proxy: Workload):
    return [c for _, c in translate(SNAPSHOT, proxy).by_type[CLUSTER]]


def test_a_name_without_workloads_keeps_a_virtual_ip_answered_503_for_http_and_closed_for_the_rest() -> None:
    snapshot = MeshSnapshot(version="1", workloads=SNAPSHOT.workloads, departed=(("ratings", "default", 9080, "http"),))
    listener = _outbound(snapshot)
    names = json_format.MessageToDict(listener.metadata.filter_metadata[DNS_METADATA])
    assert names["ratings"] == names["ratings.default.svc.cluster.local"]
    chains = {c.name: c for c in listener.filter_chains}
    for name in ("absent_http", "absent"):
        assert [r.address_prefix for r in chains[name].filter_chain_match.prefix_ranges] == [names["ratings"]]
    assert chains["absent_http"].filters == chains["http"].filters  # routed by Host: the 503 of rds.py
    closed = tcp_proxy_pb2.TcpProxy()
    chains["absent"].filters[0].typed_config.Unpack(closed)
    assert closed.cluster == "BlackHoleCluster" and "BlackHoleCluster" in dict(
        translate(snapshot, WEB).by_type[CLUSTER]
    )
