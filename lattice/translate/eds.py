"""Endpoints: each outbound cluster's workloads, filtered by subset labels, with their health."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import names
from lattice.translate.protos import socket_address
from lattice.translate.tls import MESH_TLS_MODE, SOCKET_MATCH


def load_assignments(snapshot: MeshSnapshot, proxy: Workload) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out = []
    for service in snapshot.services:
        members = [w for w in snapshot.endpoints(service.hostname) if w.port == service.port]
        # Auto mTLS: an endpoint whose own PeerAuthentication accepts mTLS is marked for it.
        mesh_tls = {w.id for w in members if snapshot.inbound_mtls(w) != "DISABLE"}
        out.append(_assignment(names.outbound_cluster(service.port, None, service.hostname), members, mesh_tls))
        rule = snapshot.destination_rule_for(service.hostname)
        for subset in rule.spec.subsets if rule else ():
            chosen = [w for w in members if all(w.labels.get(k) == v for k, v in subset.labels.items())]
            out.append(_assignment(names.outbound_cluster(service.port, subset.name, service.hostname), chosen, mesh_tls))
    return out


def _assignment(cluster: str, members: list[Workload], mesh_tls: set[str]) -> endpoint_pb2.ClusterLoadAssignment:
    # Unhealthy endpoints stay listed (so `proxy-config endpoints` shows them) but get no traffic.
    endpoints = []
    for w in members:
        endpoint = ec.LbEndpoint(
            endpoint=ec.Endpoint(address=socket_address(w.address, w.port)),
            health_status=health_check_pb2.HEALTHY if w.healthy else health_check_pb2.UNHEALTHY,
        )
        if w.id in mesh_tls:
            endpoint.metadata.filter_metadata[SOCKET_MATCH].update(MESH_TLS_MODE)
        endpoints.append(endpoint)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[ec.LocalityLbEndpoints(lb_endpoints=endpoints)] if endpoints else []
    )
