"""translate/policy.py: which DestinationRule settings win for a cluster, and the Envoy config they become.

The last test hands the generated clusters, endpoints and routes to a real `envoy --mode validate`,
so a field Envoy would NACK fails here, not in a running mesh.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import CLUSTER, ENDPOINT, ROUTE, policy, tls, translate

HOST = "svc.default.svc.cluster.local"
REGION, ZONE, SUBZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"
ENVOY = Path(sys.executable).parent / "envoy"


def _workload(service: str, version: str, n: int, protocol: str = "http", **labels: str) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{version}-{n}.default",
            "name": f"{service}-{version}",
            "namespace": "default",
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": version, **labels},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": protocol,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
    )


def _at(region: str, zone: str, subzone: str = "") -> dict:
    return {REGION: region, ZONE: zone, **({SUBZONE: subzone} if subzone else {})}


CLIENT = _workload("client", "v1", 2, **_at("r1", "a", "s1"), network="n1")
BACKENDS = (
    _workload("svc", "v1", 3, **_at("r1", "a", "s1"), network="n1"),
    _workload("svc", "v1", 4, **_at("r1", "a", "s2"), network="n2"),
    _workload("svc", "v2", 5, **_at("r1", "b"), network="n1"),
    _workload("svc", "v2", 6, **_at("r2", "c"), network="n1"),
    _workload("svc", "v3", 7, **_at("r3", "d"), network="n1"),
)


def _snapshot(spec: str, *extra: Workload) -> MeshSnapshot:
    text = (
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: "
        f"svc\n{spec}"
        if spec
        else ""
    )
    rules = tuple(parse_documents(text)) if text else ()
    return MeshSnapshot("t", (CLIENT, *BACKENDS, *extra), (), rules)


def _cluster(snapshot: MeshSnapshot, subset: str = "", host: str = HOST) -> cluster_pb2.Cluster:
    return dict(translate(snapshot, CLIENT).by_type[CLUSTER])[f"outbound|9080|{subset}|{host}"]


def _groups(snapshot: MeshSnapshot, subset: str = "") -> list[tuple[str, int, int]]:
    """(region/zone/subzone, priority, weight) per locality group, as the client sees them."""
    cla = dict(translate(snapshot, CLIENT).by_type[ENDPOINT])[f"outbound|9080|{subset}|{HOST}"]
    return [
        (
            "/".join(filter(None, (g.locality.region, g.locality.zone, g.locality.sub_zone))),
            g.priority,
            g.load_balancing_weight.value,
        )
        for g in cla.endpoints
    ]


# --- precedence ------------------------------------------------------------------------------------

PRECEDENCE = """  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 10}}
    outlierDetection: {consecutive5xxErrors: 5}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 20}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 2}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: LEAST_REQUEST}
  - name: v3
    labels: {version: v3}
"""


def test_a_port_level_setting_replaces_the_whole_host_policy_for_its_port():
    snapshot = _snapshot(PRECEDENCE)
    host = policy.effective(snapshot, HOST, None, 9080)
    assert host.connection_pool.tcp.max_connections == 20
    assert (host.load_balancer, host.outlier_detection, host.tls) == (None, None, None)  # not inherited
    other_port = policy.effective(snapshot, HOST, None, 8080)
    assert (other_port.load_balancer.simple, other_port.connection_pool.tcp.max_connections) == ("RANDOM", 10)


def test_a_subset_overrides_field_by_field_and_its_own_port_level_setting_wins():
    snapshot = _snapshot(PRECEDENCE)
    v1 = policy.effective(snapshot, HOST, "v1", 9080)
    assert (v1.load_balancer.simple, v1.connection_pool.tcp.max_connections, v1.outlier_detection, v1.tls) == (
        "ROUND_ROBIN",
        20,
        None,
        None,
    )
    v2 = policy.effective(snapshot, HOST, "v2", 9080)
    assert (v2.load_balancer.simple, v2.connection_pool, v2.outlier_detection, v2.tls) == (
        "LEAST_REQUEST",
        None,
        None,
        None,
    )
    v2_elsewhere = policy.effective(snapshot, HOST, "v2", 8080)
    assert (
        v2_elsewhere.load_balancer.simple,
        v2_elsewhere.outlier_detection.consecutive_5xx_errors,
        v2_elsewhere.tls.mode,
    ) == ("RANDOM", 2, "ISTIO_MUTUAL")
    assert policy.effective(snapshot, HOST, "v3", 9080) == policy.effective(snapshot, HOST, None, 9080)


def test_tls_follows_the_same_precedence():
    snapshot = _snapshot(PRECEDENCE)
    service = next(s for s in snapshot.services if s.hostname == HOST)
    assert tls.client_tls(snapshot, service, "v1") is None  # the host's port-level setting has no tls
    no_port_level = _snapshot(
        PRECEDENCE.replace("port: {number: 9080}\n      connectionPool", "port: {number: 1}\n      connectionPool")
    )
    assert tls.client_tls(no_port_level, service, "v1").mode == "ISTIO_MUTUAL"


# --- clusters --------------------------------------------------------------------------------------


def test_without_a_rule_clusters_are_unlimited_least_request_with_a_retry_budget():
    cluster = _cluster(_snapshot(""))
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST  # Istio's default
    (t,) = cluster.circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value) == (policy.UNLIMITED,) * 3
    assert not t.HasField("max_retries")
    assert (t.retry_budget.budget_percent.value, t.retry_budget.min_retry_concurrency.value) == (20.0, 3)
    assert cluster.outlier_detection.consecutive_5xx.value == policy.DEFAULT_CONSECUTIVE_5XX  # the mesh's default
    assert cluster.common_lb_config.healthy_panic_threshold.value == 0


def test_mesh_clusters_eject_on_consecutive_5xx_by_default():
    od = _cluster(_snapshot("")).outlier_detection
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value) == (5, 100)
    assert (od.interval.seconds, od.base_ejection_time.seconds, od.max_ejection_percent.value) == (5, 15, 50)
    assert od.enforcing_success_rate.value == 0
    assert not od.split_external_local_origin_errors  # connect failures count as 5xx, as in Istio


def test_a_destination_rule_s_outlier_detection_replaces_the_default_whole():
    od = _cluster(_snapshot("  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0}}\n")).outlier_detection
    assert od.enforcing_consecutive_5xx.value == 0
    assert not od.HasField("base_ejection_time")  # Envoy's defaults, not the mesh's, as in Istio


def test_connection_pool_becomes_circuit_breakers_and_connection_options():
    cluster = _cluster(
        _snapshot("""  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 3, connectTimeout: 250ms, tcpKeepalive: {time: 60s}, maxConnectionDuration: 10m}
      http: {http1MaxPendingRequests: 4, http2MaxRequests: 5, maxRetries: 6, maxRequestsPerConnection: 7, idleTimeout:
      30s}
""")
    )
    (t,) = cluster.circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value, t.max_retries.value) == (
        3,
        4,
        5,
        6,
    )
    assert not t.HasField("retry_budget")  # an explicit maxRetries replaces the budget
    assert cluster.connect_timeout.ToMilliseconds() == 250
    keepalive = cluster.upstream_connection_options.tcp_keepalive
    assert (keepalive.keepalive_time.value, keepalive.HasField("keepalive_probes")) == (60, False)
    options = hpo.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[policy.HTTP_OPTIONS].Unpack(options)
    common = options.common_http_protocol_options
    assert (
        common.idle_timeout.seconds,
        common.max_requests_per_connection.value,
        common.max_connection_duration.seconds,
    ) == (30, 7, 600)
    assert options.explicit_http_config.HasField("http_protocol_options")


def test_connection_pool_keeps_the_clusters_http2_and_limits_its_streams():
    grpc = _workload("svc", "v9", 9, protocol="grpc")
    snapshot = MeshSnapshot(
        "t",
        (CLIENT, grpc),
        (),
        tuple(
            parse_documents(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc}\nspec:\n  host: svc\n"
                "  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 1h}, http: {maxConcurrentStreams: 8}}}\n"
            )
        ),
    )
    options = hpo.HttpProtocolOptions()
    _cluster(snapshot).typed_extension_protocol_options[policy.HTTP_OPTIONS].Unpack(options)
    assert options.explicit_http_config.http2_protocol_options.max_concurrent_streams.value == 8
    assert options.common_http_protocol_options.idle_timeout.seconds == 3600  # tcp.idleTimeout when http has none


def test_outlier_detection_as_istio_translates_it():
    cluster = _cluster(
        _snapshot("""  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, interval: 2s, baseEjectionTime: 1m,
                       maxEjectionPercent: 40, minHealthPercent: 30, splitExternalLocalOriginErrors: true,
                       consecutiveLocalOriginFailures: 2}
""")
    )
    od = cluster.outlier_detection
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value) == (0, 0)  # 0 turns it off
    assert (od.consecutive_gateway_failure.value, od.enforcing_consecutive_gateway_failure.value) == (3, 100)
    assert (od.interval.seconds, od.base_ejection_time.seconds, od.max_ejection_percent.value) == (2, 60, 40)
    assert od.HasField("enforcing_success_rate") and od.enforcing_success_rate.value == 0
    assert (
        od.split_external_local_origin_errors,
        od.consecutive_local_origin_failure.value,
        od.enforcing_consecutive_local_origin_failure.value,
    ) == (True, 2, 100)
    assert cluster.common_lb_config.healthy_panic_threshold.value == 30


def test_outlier_detection_defaults_are_envoys():
    od = _cluster(_snapshot("  trafficPolicy: {outlierDetection: {}}\n")).outlier_detection
    assert not any(
        od.HasField(f) for f in ("consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent")
    )


@pytest.mark.parametrize(
    "lb, expected",
    [
        ("{simple: RANDOM}", cluster_pb2.Cluster.RANDOM),
        ("{simple: ROUND_ROBIN}", cluster_pb2.Cluster.ROUND_ROBIN),
        ("{simple: LEAST_CONN}", cluster_pb2.Cluster.LEAST_REQUEST),
        ("{simple: UNSPECIFIED}", cluster_pb2.Cluster.LEAST_REQUEST),
        ("{consistentHash: {httpHeaderName: x}}", cluster_pb2.Cluster.RING_HASH),
        ("{consistentHash: {httpHeaderName: x, maglev: {tableSize: 7}}}", cluster_pb2.Cluster.MAGLEV),
    ],
)
def test_load_balancer_policy(lb, expected):
    assert _cluster(_snapshot(f"  trafficPolicy: {{loadBalancer: {lb}}}\n")).lb_policy == expected


def test_hash_ring_sizes_and_slow_start():
    assert (
        _cluster(
            _snapshot("  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 64}}}\n")
        ).ring_hash_lb_config.minimum_ring_size.value
        == 64
    )
    assert (
        _cluster(
            _snapshot(
                "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: "
                "32}}}}\n"
            )
        ).ring_hash_lb_config.minimum_ring_size.value
        == 32
    )
    assert (
        _cluster(
            _snapshot(
                "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 7}}}}\n"
            )
        ).maglev_lb_config.table_size.value
        == 7
    )
    rr = _cluster(
        _snapshot(
            "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 20s, minimumPercent: 5, "
            "aggression: 2}}}\n"
        )
    )
    slow = rr.round_robin_lb_config.slow_start_config
    assert (slow.slow_start_window.seconds, slow.min_weight_percent.value, slow.aggression.default_value) == (20, 5, 2)
    least = _cluster(_snapshot("  trafficPolicy: {loadBalancer: {warmupDurationSecs: 15s}}\n"))
    assert least.least_request_lb_config.slow_start_config.slow_start_window.seconds == 15


# --- routes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, expected",
    [
        ("{httpHeaderName: x-user}", {"header": {"header_name": "x-user"}}),
        ("{httpCookie: {name: u, path: /a, ttl: 0s}}", {"cookie": {"name": "u", "path": "/a", "ttl": "0s"}}),
        ("{httpCookie: {name: u}}", {"cookie": {"name": "u"}}),
        ("{useSourceIp: true}", {"connection_properties": {"source_ip": True}}),
        ("{httpQueryParameterName: q}", {"query_parameter": {"name": "q"}}),
    ],
)
def test_hash_policies(key, expected):
    (found,) = policy.hash_policies(
        _snapshot(f"  trafficPolicy: {{loadBalancer: {{consistentHash: {key}}}}}\n"), HOST, None, 9080
    )
    assert json_format.MessageToDict(found, preserving_proto_field_name=True) == expected


def _routes(snapshot: MeshSnapshot) -> dict:
    return {vh.name: vh.routes for _, rc in translate(snapshot, CLIENT).by_type[ROUTE] for vh in rc.virtual_hosts}


def test_routes_carry_the_chosen_destinations_hash_policy():
    rule = (
        "  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: "
        "{httpHeaderName: x-v1}}}}]\n"
    )
    snapshot = _snapshot("  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-any}}}\n" + rule)
    (default,) = next(routes for name, routes in _routes(snapshot).items() if name.startswith(HOST))
    assert [h.header.header_name for h in default.route.hash_policy] == ["x-any"]
    vs = parse_documents("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - route: [{destination: {host: svc, subset: v1}}]
""")
    routed = MeshSnapshot("t", snapshot.workloads, tuple(vs), snapshot.destination_rules)
    (route,) = next(routes for name, routes in _routes(routed).items() if name.startswith(HOST))
    assert [h.header.header_name for h in route.route.hash_policy] == ["x-v1"]
    plain = next(routes for name, routes in _routes(_snapshot("")).items() if name.startswith(HOST))
    assert not plain[0].route.hash_policy


# --- endpoints by locality -------------------------------------------------------------------------

OUTLIER = "outlierDetection: {consecutive5xxErrors: 3}"


def test_endpoints_are_grouped_by_locality_without_priorities_unless_outlier_detection_is_set():
    assert _groups(_snapshot("")) == [
        ("r1/a/s1", 0, 0),
        ("r1/a/s2", 0, 0),
        ("r1/b", 0, 0),
        ("r2/c", 0, 0),
        ("r3/d", 0, 0),
    ]


def test_default_failover_orders_subzone_zone_region_then_the_rest():
    groups = _groups(_snapshot(f"  trafficPolicy: {{{OUTLIER}}}\n"))
    assert groups == [("r1/a/s1", 0, 0), ("r1/a/s2", 1, 0), ("r1/b", 2, 0), ("r2/c", 3, 0), ("r3/d", 3, 0)]


def test_disabled_locality_load_balancing_keeps_one_priority():
    groups = _groups(
        _snapshot(f"  trafficPolicy: {{{OUTLIER}, loadBalancer: {{localityLbSetting: {{enabled: false}}}}}}\n")
    )
    assert {p for _, p, _ in groups} == {0}


def test_failover_rule_puts_unnamed_regions_last():
    groups = _groups(
        _snapshot(
            "  trafficPolicy: "
            f"{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{failover: [{{from: r1, to: r3}}]}}}}}}\n"
        )
    )
    assert groups == [("r1/a/s1", 0, 0), ("r1/a/s2", 1, 0), ("r1/b", 2, 0), ("r2/c", 4, 0), ("r3/d", 3, 0)]


def test_failover_priority_by_labels_then_by_locality():
    setting = "failoverPriority: [network, topology.kubernetes.io/region]"
    groups = _groups(_snapshot(f"  trafficPolicy: {{{OUTLIER}, loadBalancer: {{localityLbSetting: {{{setting}}}}}}}\n"))
    # same network and region: 0; same network only: 1; another network: 2.
    assert groups == [("r1/a/s1", 0, 0), ("r1/a/s2", 2, 0), ("r1/b", 0, 0), ("r2/c", 1, 0), ("r3/d", 1, 0)]
    pinned = _groups(
        _snapshot(
            f"  trafficPolicy: {{{OUTLIER}, loadBalancer: {{localityLbSetting: {{failoverPriority: [network=n2]}}}}}}\n"
        )
    )
    assert [p for _, p, _ in pinned] == [1, 0, 1, 1, 1]


def test_distribute_weights_localities_for_the_matching_caller_and_drops_the_rest():
    setting = "distribute: [{from: 'r1/a/*', to: {'r1/a/*': 70, 'r2/*': 30}}]"
    cluster_groups = _groups(_snapshot(f"  trafficPolicy: {{loadBalancer: {{localityLbSetting: {{{setting}}}}}}}\n"))
    assert cluster_groups == [("r1/a/s1", 0, 35), ("r1/a/s2", 0, 35), ("r2/c", 0, 30)]
    assert _cluster(
        _snapshot(f"  trafficPolicy: {{loadBalancer: {{localityLbSetting: {{{setting}}}}}}}\n")
    ).common_lb_config.HasField("locality_weighted_lb_config")
    elsewhere = "distribute: [{from: 'r9/*', to: {'r2/*': 100}}]"
    assert [
        w
        for _, _, w in _groups(
            _snapshot(f"  trafficPolicy: {{loadBalancer: {{localityLbSetting: {{{elsewhere}}}}}}}\n")
        )
    ] == [1, 1, 1, 1, 1]


# --- Envoy accepts it ------------------------------------------------------------------------------

EVERYTHING = """  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s, aggression: 2, minimumPercent: 10}, localityLbSetting:
    {failover: [{from: r1, to: r2}]}}
    connectionPool:
      tcp: {maxConnections: 5, connectTimeout: 250ms, tcpKeepalive: {probes: 3, time: 60s, interval: 10s},
      maxConnectionDuration: 1h, idleTimeout: 30s}
      http: {http1MaxPendingRequests: 2, http2MaxRequests: 10, maxRequestsPerConnection: 100, maxConcurrentStreams: 50}
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 5s,
    maxEjectionPercent: 50, minHealthPercent: 20,
                       splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 4}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: u, path: /,
  ttl: 10s}, maglev: {tableSize: 65537}}}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash:
  {minimumRingSize: 2048}}, localityLbSetting: {distribute: [{from: 'r1/*', to: {'r1/*': 80, 'r2/*': 20}}]}}}}
  - {name: v3, labels: {version: v3}, trafficPolicy: {connectionPool: {http: {maxRetries: 4}}, loadBalancer:
  {consistentHash: {httpQueryParameterName: q, minimumRingSize: 64}}}}
"""


def _as_static(resources) -> dict:
    """Clusters with their endpoints inline and the routes behind listeners: a bootstrap Envoy can
    validate offline. TLS is dropped (it needs the agent's SDS); everything policy-made stays."""
    endpoints = {n: json_format.MessageToDict(m) for n, m in resources.by_type[ENDPOINT]}
    clusters = []
    for name, message in resources.by_type[CLUSTER]:
        cluster = json_format.MessageToDict(message)
        for key in ("transportSocketMatches", "transportSocket"):
            cluster.pop(key, None)
        if cluster.get("type") == "EDS":
            cluster.pop("edsClusterConfig")
            cluster.update(type="STATIC", loadAssignment=endpoints[name])
        clusters.append(cluster)
    router = {
        "name": "router",
        "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    listeners = [
        {
            "name": f"l{i}",
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 1}},
            "filterChains": [
                {
                    "filters": [
                        {
                            "name": "hcm",
                            "typedConfig": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network"
                                ".http_connection_manager.v3.HttpConnectionManager",
                                "statPrefix": "v",
                                "routeConfig": json_format.MessageToDict(m),
                                "httpFilters": [router],
                            },
                        }
                    ]
                }
            ],
        }
        for i, (_, m) in enumerate(resources.by_type[ROUTE])
    ]
    return {"staticResources": {"clusters": clusters, "listeners": listeners}}


def test_envoy_accepts_every_policy(tmp_path):
    snapshot = _snapshot(EVERYTHING)
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(_as_static(translate(snapshot, CLIENT))))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "-l", "error"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
