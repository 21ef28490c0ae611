"""The translator's output and its entry point."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from lattice.mesh import MeshSnapshot, Workload

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Make-before-break: clusters and their endpoints exist before listeners and routes point at them.
TYPE_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


@dataclass(frozen=True)
class Resources:
    """Generated resources for one proxy: type URL -> ((name, message), ...) sorted by name."""

    by_type: dict[str, tuple[tuple[str, Message], ...]]

    def names(self, type_url: str) -> list[str]:
        return [name for name, _ in self.by_type.get(type_url, ())]


def translate(snapshot: MeshSnapshot, proxy: Workload) -> Resources:
    from lattice.translate import cds, eds, gateway, lds, rds

    # A gateway proxy serves its Gateways' ports instead of an app's; it reaches the mesh as sidecars do.
    edge = proxy.kind == "gateway"
    produced = {
        CLUSTER: gateway.clusters(snapshot, proxy) if edge else cds.clusters(snapshot, proxy),
        ENDPOINT: eds.load_assignments(snapshot, proxy),
        LISTENER: gateway.listeners(snapshot, proxy) if edge else lds.listeners(snapshot, proxy),
        ROUTE: gateway.route_configurations(snapshot, proxy) if edge else rds.route_configurations(snapshot, proxy),
    }
    return Resources({t: tuple(sorted(((_name(m), m) for m in msgs), key=lambda p: p[0])) for t, msgs in produced.items()})


def _name(message: Message) -> str:
    return getattr(message, "cluster_name", "") or message.name
