"""Endpoints: each outbound cluster's workloads, filtered by subset labels, with their health."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import names
from lattice.translate.protos import socket_address


def load_assignments(snapshot: MeshSnapshot, proxy: Workload) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out = []
    for service in snapshot.services:
        members = [w for w in snapshot.endpoints(service.hostname) if w.port == service.port]
        out.append(_assignment(names.outbound_cluster(service.port, None, service.hostname), members))
        rule = snapshot.destination_rule_for(service.hostname)
        for subset in rule.spec.subsets if rule else ():
            chosen = [w for w in members if all(w.labels.get(k) == v for k, v in subset.labels.items())]
            out.append(_assignment(names.outbound_cluster(service.port, subset.name, service.hostname), chosen))
    return out


def _assignment(cluster: str, members: list[Workload]) -> endpoint_pb2.ClusterLoadAssignment:
    # Unhealthy endpoints stay listed (so `proxy-config endpoints` shows them) but get no traffic.
    endpoints = [
        ec.LbEndpoint(
            endpoint=ec.Endpoint(address=socket_address(w.address, w.port)),
            health_status=health_check_pb2.HEALTHY if w.healthy else health_check_pb2.UNHEALTHY,
        )
        for w in members
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[ec.LocalityLbEndpoints(lb_endpoints=endpoints)] if endpoints else []
    )
