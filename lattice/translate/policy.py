"""A DestinationRule's traffic policy for one cluster: which settings win, and what they make of Envoy's config.

Istio's precedence, for the cluster of (host, subset, port):
1. the host's `trafficPolicy`; a `portLevelSettings` entry for the port replaces all of it (nothing
   is inherited from the host's own fields: omitted fields take their defaults);
2. the subset's `trafficPolicy` overrides that field by field at the top level (loadBalancer,
   connectionPool, outlierDetection, tls);
3. the subset's own `portLevelSettings` entry for the port replaces everything again.

The result shapes the Cluster (load balancer, circuit breakers, outlier detection, connection
options), the endpoints (locality priorities and weights, per calling proxy, as Istio does in EDS)
and, for consistent hashing, the route (Envoy keeps hash policies on the RouteAction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.v3 import percent_pb2
from google.protobuf.wrappers_pb2 import UInt32Value

from lattice.api.destination_rule import (
    LOCALITY_LABELS,
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    LoadBalancerSettings,
    LocalityDistribute,
    LocalityFailover,
    LocalityLoadBalancerSetting,
    OutlierDetection,
)
from lattice.api.durations import parse_duration
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import names
from lattice.translate.protos import duration, pack

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UNLIMITED = 4294967295
# Retries may add at most a fifth on top of the requests in flight, so an upstream that fails
# everything sees ~1.2x its load instead of 3x (the default route retries twice); the floor of 3
# concurrent retries keeps retrying possible for a quiet service with one or two requests in
# flight. Both are Envoy's own retry-budget defaults, and Linkerd's default budget is the same 20%.
RETRY_BUDGET_PERCENT = 20.0
RETRY_BUDGET_MIN_CONCURRENCY = 3
_SIMPLE = {
    None: cluster_pb2.Cluster.LEAST_REQUEST,  # Istio's default when nothing is chosen
    "UNSPECIFIED": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,  # deprecated Istio alias
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}


@dataclass(frozen=True)
class Policy:
    """The traffic policy in force for one cluster, after Istio's precedence rules."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


_FIELDS = [f.name for f in fields(Policy)]


def effective(snapshot: MeshSnapshot, hostname: str, subset: str | None, port: int) -> Policy:
    rule = snapshot.destination_rule_for(hostname)
    if rule is None:
        return Policy()
    merged = _overlay(Policy(), rule.spec.traffic_policy, port)
    chosen = next((s for s in rule.spec.subsets if s.name == subset), None)
    return _overlay(merged, chosen.traffic_policy, port) if chosen is not None else merged


def _overlay(base: Policy, policy, port: int) -> Policy:
    if policy is None:
        return base
    out = Policy(**{f: getattr(policy, f) if getattr(policy, f) is not None else getattr(base, f) for f in _FIELDS})
    level = next((p for p in policy.port_level_settings if p.port.number == port), None)
    return Policy(**{f: getattr(level, f) for f in _FIELDS}) if level is not None else out


# --- the cluster -----------------------------------------------------------------------------------


def apply(
    cluster: cluster_pb2.Cluster,
    snapshot: MeshSnapshot,
    hostname: str,
    subset: str | None,
    port: int,
    mesh: bool = False,
) -> None:
    """Shape an outbound cluster by its policy. Call it after the protocol is set: it adds to the
    cluster's HTTP protocol options rather than replacing them. A `mesh` cluster (workloads'
    sidecars, not a ServiceEntry's hosts) without outlierDetection gets the mesh's default."""
    policy = effective(snapshot, hostname, subset, port)
    if policy.outlier_detection is None and mesh:
        _default_outlier_detection(cluster)
    # A cluster that picks its own host (ServiceEntry resolution NONE: the host the client asked
    # for) has nothing to balance, as in Istio; every other setting still applies.
    if cluster.lb_policy != cluster_pb2.Cluster.CLUSTER_PROVIDED:
        _load_balancer(cluster, policy.load_balancer)
    _connection_pool(cluster, policy.connection_pool)
    _outlier_detection(cluster, policy.outlier_detection)


def _load_balancer(cluster: cluster_pb2.Cluster, lb: LoadBalancerSettings | None) -> None:
    hashing = lb.consistent_hash if lb else None
    if hashing is not None:
        _hash_ring(cluster, hashing)
    else:
        cluster.lb_policy = _SIMPLE[lb.simple if lb else None]
        _slow_start(cluster, lb)
    if (
        lb is not None
        and lb.locality_lb_setting is not None
        and lb.locality_lb_setting.distribute
        and lb.locality_lb_setting.enabled is not False
    ):
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()


def _hash_ring(cluster: cluster_pb2.Cluster, hashing: ConsistentHashLB) -> None:
    if hashing.maglev is not None:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        cluster.maglev_lb_config.table_size.value = hashing.maglev.table_size
        return
    cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    size = hashing.ring_hash.minimum_ring_size if hashing.ring_hash else hashing.minimum_ring_size
    if size:
        cluster.ring_hash_lb_config.minimum_ring_size.value = size


def _slow_start(cluster: cluster_pb2.Cluster, lb: LoadBalancerSettings | None) -> None:
    if lb is None:
        return
    window = lb.warmup.duration if lb.warmup is not None else lb.warmup_duration_secs
    if window is None:
        return
    config = cluster_pb2.Cluster.SlowStartConfig(slow_start_window=duration(parse_duration(window)))
    if lb.warmup is not None and lb.warmup.aggression is not None:
        config.aggression.default_value = lb.warmup.aggression
        config.aggression.runtime_key = "upstream.slow_start.aggression"
    if lb.warmup is not None and lb.warmup.minimum_percent is not None:
        config.min_weight_percent.value = lb.warmup.minimum_percent
    target = (
        cluster.round_robin_lb_config
        if cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
        else cluster.least_request_lb_config
    )
    target.slow_start_config.CopyFrom(config)


def _connection_pool(cluster: cluster_pb2.Cluster, pool: ConnectionPoolSettings | None) -> None:
    cluster.circuit_breakers.CopyFrom(circuit_breakers(pool))
    tcp, http = (pool.tcp, pool.http) if pool else (None, None)
    if tcp is not None and tcp.connect_timeout:
        cluster.connect_timeout.CopyFrom(duration(parse_duration(tcp.connect_timeout)))
    if tcp is not None and tcp.tcp_keepalive is not None:
        keepalive = cluster.upstream_connection_options.tcp_keepalive
        keepalive.SetInParent()  # present but empty: SO_KEEPALIVE with the OS's timings
        if tcp.tcp_keepalive.probes:
            keepalive.keepalive_probes.value = tcp.tcp_keepalive.probes
        if tcp.tcp_keepalive.time:
            keepalive.keepalive_time.value = int(parse_duration(tcp.tcp_keepalive.time))
        if tcp.tcp_keepalive.interval:
            keepalive.keepalive_interval.value = int(parse_duration(tcp.tcp_keepalive.interval))
    _http_options(cluster, _common_http_options(pool), http.max_concurrent_streams if http else None)


def circuit_breakers(pool: ConnectionPoolSettings | None) -> circuit_breaker_pb2.CircuitBreakers:
    """Istio's thresholds: unlimited unless configured (Envoy's default 1024 would silently cap a busy
    service; 0 means "not set", as in Istio), plus a retry budget unless maxRetries fixes a number."""
    tcp, http = (pool.tcp, pool.http) if pool else (None, None)
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=_limit(tcp.max_connections if tcp else None),
        max_pending_requests=_limit(http.http1_max_pending_requests if http else None),
        max_requests=_limit(http.http2_max_requests if http else None),
        track_remaining=True,
    )
    if http is not None and http.max_retries:
        thresholds.max_retries.value = http.max_retries
    else:
        thresholds.retry_budget.budget_percent.value = RETRY_BUDGET_PERCENT
        thresholds.retry_budget.min_retry_concurrency.value = RETRY_BUDGET_MIN_CONCURRENCY
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _limit(value: int | None) -> UInt32Value:
    return UInt32Value(value=value or UNLIMITED)


def _common_http_options(pool: ConnectionPoolSettings | None) -> protocol_pb2.HttpProtocolOptions | None:
    tcp, http = (pool.tcp, pool.http) if pool else (None, None)
    options = protocol_pb2.HttpProtocolOptions()
    # Istio: the HTTP idle timeout, or else the TCP one, closes idle pooled upstream connections.
    idle = (http.idle_timeout if http else None) or (tcp.idle_timeout if tcp else None)
    if idle:
        options.idle_timeout.CopyFrom(duration(parse_duration(idle)))
    if http is not None and http.max_requests_per_connection:
        options.max_requests_per_connection.value = http.max_requests_per_connection
    if tcp is not None and tcp.max_connection_duration:
        options.max_connection_duration.CopyFrom(duration(parse_duration(tcp.max_connection_duration)))
    return options if options.ListFields() else None


def _http_options(
    cluster: cluster_pb2.Cluster, common: protocol_pb2.HttpProtocolOptions | None, max_streams: int | None
) -> None:
    if common is None and not max_streams:
        return
    options = hpo.HttpProtocolOptions()
    if HTTP_OPTIONS in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
    if not options.HasField("upstream_protocol_options"):
        options.explicit_http_config.http_protocol_options.SetInParent()  # HTTP/1.1, Envoy's default
    if common is not None:
        options.common_http_protocol_options.MergeFrom(common)
    # Like Istio, the stream limit applies where the cluster speaks HTTP/2.
    for h2 in (options.explicit_http_config, options.use_downstream_protocol_config, options.auto_config):
        if max_streams and h2.HasField("http2_protocol_options"):
            h2.http2_protocol_options.max_concurrent_streams.value = max_streams
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))


# The mesh's outlier detection when no DestinationRule sets one (its `outlierDetection` replaces
# all of it, as an Istio user expects; `consecutive5xxErrors: 0` turns ejection off). Counted are
# 5xx answers (the app failing, or refusing behind a sidecar that answers 503) and, as Istio's
# consecutive5xxErrors counts them, failures to connect or answer in time. The base ejection is
# short so that a host whose link healed is used again soon; never more than half a service is out.
DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_INTERVAL = 5.0  # seconds between sweeps (they return ejected hosts to service)
DEFAULT_BASE_EJECTION = 15.0  # seconds, times the number of ejections in a row (Envoy's rule)
DEFAULT_MAX_EJECTION_PERCENT = 50  # never more than half of a service (at least one host: Envoy)


def _default_outlier_detection(cluster: cluster_pb2.Cluster) -> None:
    out = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=UInt32Value(value=DEFAULT_CONSECUTIVE_5XX),
        enforcing_consecutive_5xx=UInt32Value(value=100),
        enforcing_success_rate=UInt32Value(value=0),
        interval=duration(DEFAULT_INTERVAL),
        base_ejection_time=duration(DEFAULT_BASE_EJECTION),
        max_ejection_percent=UInt32Value(value=DEFAULT_MAX_EJECTION_PERCENT),
    )
    cluster.outlier_detection.CopyFrom(out)
    # At once: Envoy's default 1 s window for merging host updates kept an ejected host in its
    # workers' balancers for as long as requests kept coming (seen across hosts, tests/integration).
    cluster.common_lb_config.update_merge_window.CopyFrom(duration(0))


def _outlier_detection(cluster: cluster_pb2.Cluster, od: OutlierDetection | None) -> None:
    if od is None:
        return
    out = outlier_detection_pb2.OutlierDetection(
        enforcing_success_rate=UInt32Value(value=0)
    )  # Istio: no success-rate ejection
    if od.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = od.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = 100 if od.consecutive_5xx_errors else 0
    if od.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = od.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = 100 if od.consecutive_gateway_errors else 0
    if od.interval:
        out.interval.CopyFrom(duration(parse_duration(od.interval)))
    if od.base_ejection_time:
        out.base_ejection_time.CopyFrom(duration(parse_duration(od.base_ejection_time)))
    if od.max_ejection_percent:  # 0 is "not set" in Istio: Envoy's 10% (at least one host) applies
        out.max_ejection_percent.value = od.max_ejection_percent
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        out.enforcing_local_origin_success_rate.value = 0
        if od.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
    cluster.outlier_detection.CopyFrom(out)
    # Istio's minHealthPercent is Envoy's panic threshold (default 0: never spray traffic at ejected hosts).
    cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=od.min_health_percent or 0))


# --- the route -------------------------------------------------------------------------------------


def hash_policies(
    snapshot: MeshSnapshot, hostname: str, subset: str | None, port: int
) -> list[rc.RouteAction.HashPolicy]:
    """The RouteAction hash policy a consistent-hash destination needs (empty for any other)."""
    lb = effective(snapshot, hostname, subset, port).load_balancer
    hashing = lb.consistent_hash if lb else None
    if hashing is None:
        return []
    policy = rc.RouteAction.HashPolicy
    if hashing.http_header_name:
        return [policy(header=policy.Header(header_name=hashing.http_header_name))]
    if hashing.http_cookie is not None:
        cookie = policy.Cookie(name=hashing.http_cookie.name, path=hashing.http_cookie.path or "")
        if hashing.http_cookie.ttl is not None:  # with a TTL (even 0s) Envoy sets the cookie when it is missing
            cookie.ttl.CopyFrom(duration(parse_duration(hashing.http_cookie.ttl)))
        return [policy(cookie=cookie)]
    if hashing.use_source_ip:
        return [policy(connection_properties=policy.ConnectionProperties(source_ip=True))]
    return [policy(query_parameter=policy.QueryParameter(name=hashing.http_query_parameter_name))]


# --- the endpoints, as seen from one proxy ---------------------------------------------------------

Locality = tuple[str, str, str]  # region, zone, subzone


def locality_of(workload: Workload) -> Locality:
    """A ServiceEntry endpoint's own `locality`, else the workload's topology labels (Istio's names)."""
    written = getattr(workload, "locality", "")
    if written:
        return tuple((written.split("/") + ["", ""])[:3])
    return _labelled_locality(workload.labels)


def _labelled_locality(labels) -> Locality:
    return tuple(labels.get(k, "") for k in LOCALITY_LABELS)


def caller_matters(snapshot: MeshSnapshot, hostname: str, subset: str | None, port: int) -> bool:
    """Whether the calling proxy changes a cluster's endpoints: only when its DestinationRule
    distributes or fails over by locality (or labels). Otherwise every caller gets the same list."""
    policy = effective(snapshot, hostname, subset, port)
    setting = _locality_setting(policy.load_balancer)
    return setting is not None and (bool(setting.distribute) or policy.outlier_detection is not None)


def locality_endpoints(
    snapshot: MeshSnapshot,
    proxy: Workload | None,
    hostname: str,
    subset: str | None,
    port: int,
    members: list[tuple[Workload, ec.LbEndpoint]],
) -> list[ec.LocalityLbEndpoints]:
    """Endpoints grouped by locality, with the priorities (failover) or weights (distribute) that
    Istio computes for the calling proxy. Failover needs outlier detection, as in Istio: without
    it Envoy would never see a local endpoint fail and move down a priority. Without a proxy (config
    shared by every caller) the caller counts as one with no locality."""
    if not members:
        return []
    policy = effective(snapshot, hostname, subset, port)
    setting = _locality_setting(policy.load_balancer)
    failover = setting is not None and not setting.distribute and policy.outlier_detection is not None
    labels = setting.failover_priority if setting is not None and failover else []
    mine = proxy.labels if proxy is not None else {}
    groups: dict[tuple[Locality, int], list[ec.LbEndpoint]] = {}
    for w, endpoint in members:
        groups.setdefault((locality_of(w), _label_priority(mine, w.labels, labels)), []).append(endpoint)
    out = [
        ec.LocalityLbEndpoints(locality=_locality_proto(loc), lb_endpoints=eps, priority=p)
        for (loc, p), eps in sorted(groups.items())
    ]
    if setting is not None and setting.distribute:
        return _distribute(out, _labelled_locality(mine), setting.distribute)
    # Istio: failoverPriority alone orders by labels; otherwise by locality (refining the labels' order).
    if setting is not None and failover and (setting.failover or not setting.failover_priority):
        _failover(out, _labelled_locality(mine), setting.failover)
    _compact(out)
    return out


def _locality_setting(lb: LoadBalancerSettings | None) -> LocalityLoadBalancerSetting | None:
    # Istio's mesh default has locality load balancing on; a DestinationRule may turn it off.
    setting = lb.locality_lb_setting if lb else None
    if setting is not None and setting.enabled is False:
        return None
    return setting or LocalityLoadBalancerSetting()


def _locality_proto(loc: Locality) -> base_pb2.Locality | None:
    return base_pb2.Locality(region=loc[0], zone=loc[1], sub_zone=loc[2]) if any(loc) else None


def _group_locality(group: ec.LocalityLbEndpoints) -> Locality:
    return (group.locality.region, group.locality.zone, group.locality.sub_zone)


def _label_priority(mine, theirs, labels: list[str]) -> int:
    """Istio's failoverPriority: 0 when every label matches, else N minus the first mismatch's index.
    `key=value` compares the endpoint's label with that value instead of the caller's."""
    for i, label in enumerate(labels):
        key, _, wanted = label.partition("=")
        if (wanted if "=" in label else mine.get(key, "")) != theirs.get(key, ""):
            return len(labels) - i
    return 0


def _lb_priority(mine: Locality, theirs: Locality) -> int:
    """0: same subzone, 1: same zone, 2: same region, 3: elsewhere (Istio's LbPriority)."""
    for depth in range(3):
        if mine[depth] != theirs[depth]:
            return 3 - depth
    return 0


def _failover(groups: list[ec.LocalityLbEndpoints], mine: Locality, rules: list[LocalityFailover]) -> None:
    rule = next((r for r in rules if r.from_ == mine[0]), None)
    for g in groups:
        rank = _lb_priority(mine, _group_locality(g))
        if rank == 3 and rule is not None and g.locality.region != rule.to:
            rank = 4  # a region the failover rule does not name comes last
        g.priority = g.priority * 5 + rank  # Istio keeps failoverPriority's order and refines it by locality


def _compact(groups: list[ec.LocalityLbEndpoints]) -> None:
    ranks = sorted({g.priority for g in groups})
    for g in groups:
        g.priority = ranks.index(g.priority)  # Envoy wants priorities 0..N without gaps


def _matches(loc: Locality, pattern: str) -> bool:
    """Istio's LocalityMatch: "region[/zone[/subzone]]", where '*' or a missing part matches anything."""
    for part, value in zip(pattern.split("/"), loc, strict=False):
        if part == "*":
            return True
        if part != value:
            return False
    return True


def _distribute(
    groups: list[ec.LocalityLbEndpoints], mine: Locality, rules: list[LocalityDistribute]
) -> list[ec.LocalityLbEndpoints]:
    """Istio's locality weights: each 'to' weight is shared by the localities it matches in proportion
    to their size; localities no 'to' names get no traffic (they are dropped)."""
    for g in groups:
        g.load_balancing_weight.value = sum(e.load_balancing_weight.value or 1 for e in g.lb_endpoints)
    rule = next((r for r in rules if _matches(mine, r.from_)), None)
    if rule is None:
        return groups
    kept: set[int] = set()
    for pattern, weight in sorted(rule.to.items()):
        matched = [i for i, g in enumerate(groups) if i not in kept and _matches(_group_locality(g), pattern)]
        total = sum(groups[i].load_balancing_weight.value for i in matched)
        for i in matched:
            groups[i].load_balancing_weight.value = math.ceil(groups[i].load_balancing_weight.value * weight / total)
        kept.update(matched)
    return [g for i, g in enumerate(groups) if i in kept]


def route_hash_policies(snapshot: MeshSnapshot, clusters: list[str]) -> list[rc.RouteAction.HashPolicy]:
    """For a route to these outbound clusters: the first one's consistent-hash policy that has one
    (a route carries one hash policy for all its weighted clusters)."""
    for name in clusters:
        parts = names.parse_cluster(name)
        if parts["direction"] == "outbound" and parts["port"].isdigit():
            found = hash_policies(snapshot, parts["host"], parts["subset"] or None, int(parts["port"]))
            if found:
                return found
    return []
