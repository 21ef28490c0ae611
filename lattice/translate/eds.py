"""Endpoints: each outbound cluster's workloads, filtered by subset labels, with their health.

ServiceEntry endpoints come through the same path (mesh/service_entry.py): they add a
load-balancing weight and a locality, and listen on their own target port.
"""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from lattice.mesh import MeshSnapshot, Service, Workload
from lattice.translate import names, policy, telemetry
from lattice.translate.protos import socket_address
from lattice.translate.tls import MESH_TLS_MODE, SOCKET_MATCH


def load_assignments(snapshot: MeshSnapshot, proxy: Workload) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out = []
    for service in snapshot.services_for(proxy):
        if service.resolution != "STATIC":
            continue  # DNS clusters carry their endpoints inline (cds.py); NONE goes to the requested host
        rule = snapshot.destination_rule_for(service.hostname)
        for subset in [None, *(s.name for s in rule.spec.subsets)] if rule else [None]:
            out.append(assignment(snapshot, service, subset, proxy))
    return out


def assignment(
    snapshot: MeshSnapshot, service: Service, subset: str | None, proxy: Workload | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """One cluster's endpoints: the service's, on its port, narrowed to the subset's labels, grouped
    by locality with the priorities or weights the DestinationRule gives the calling `proxy`.
    Built once for every caller alike, or once per set of caller labels (all a locality decision
    reads of a caller) when the DestinationRule makes the caller matter."""
    matters = proxy is not None and snapshot.memo(
        ("caller-matters", service.hostname, subset, service.port),
        lambda: policy.caller_matters(snapshot, service.hostname, subset, service.port),
    )
    caller = tuple(sorted(proxy.labels.items())) if matters and proxy is not None else None
    return snapshot.memo(
        ("endpoints", service.hostname, service.port, subset, caller),
        lambda: _assignment(snapshot, service, subset, proxy),
    )


def _assignment(
    snapshot: MeshSnapshot, service: Service, subset: str | None, proxy: Workload | None
) -> endpoint_pb2.ClusterLoadAssignment:
    members = [w for w in snapshot.endpoints(service.hostname) if w.port == service.port]
    rule = snapshot.destination_rule_for(service.hostname)
    labels: dict[str, str] = (
        next((s.labels for s in rule.spec.subsets if s.name == subset), {}) if rule and subset else {}
    )
    chosen = [w for w in members if all(w.labels.get(k) == v for k, v in labels.items())]
    pairs = [(w, _lb_endpoint(snapshot, w)) for w in chosen]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=names.outbound_cluster(service.port, subset, service.hostname),
        endpoints=policy.locality_endpoints(snapshot, proxy, service.hostname, subset, service.port, pairs),
    )


def _health(w) -> int:
    if w.draining:
        return health_check_pb2.DRAINING
    return health_check_pb2.HEALTHY if w.healthy else health_check_pb2.UNHEALTHY


def _lb_endpoint(snapshot: MeshSnapshot, w) -> ec.LbEndpoint:
    # Unhealthy and draining endpoints stay listed (so `proxy-config endpoints` shows them) but
    # get no new requests; a draining one finishes those it has (`lattice run` stopping).
    endpoint = ec.LbEndpoint(
        endpoint=ec.Endpoint(address=socket_address(w.address, w.target_port)),
        health_status=_health(w),
    )
    if w.weight:
        endpoint.load_balancing_weight.value = w.weight
    peer = telemetry.endpoint_metadata(snapshot, w)
    if peer is not None:  # who answered, for the caller's metrics (translate/telemetry.py)
        endpoint.metadata.filter_metadata[telemetry.ENDPOINT_METADATA].update({"peer": peer})
    # Auto mTLS: an endpoint that accepts mesh mTLS is marked for it.
    if snapshot.accepts_mesh_tls(w):
        endpoint.metadata.filter_metadata[SOCKET_MATCH].update(MESH_TLS_MODE)
    return endpoint
