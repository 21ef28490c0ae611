"""Route tables: the outbound table routes by Host to each service, through its VirtualService."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from lattice.mesh import MeshSnapshot, Service, Workload, host_aliases
from lattice.translate import names, routes


def route_configurations(snapshot: MeshSnapshot, proxy: Workload) -> list[route_pb2.RouteConfiguration]:
    hosts = [_virtual_host(snapshot, proxy, s) for s in snapshot.services]
    hosts.append(_passthrough_host())
    # A route may name a cluster that does not exist (a subset no DestinationRule defines);
    # Envoy accepts the table and answers such requests 503, as Istio does.
    return [route_pb2.RouteConfiguration(name=names.OUTBOUND_ROUTE, virtual_hosts=hosts)]


def _virtual_host(snapshot: MeshSnapshot, proxy: Workload, service: Service) -> rc.VirtualHost:
    ports = snapshot.service_ports(service.hostname)
    aliases = host_aliases(service.name, service.namespace, proxy.namespace, snapshot.domain)
    domains = [f"{a}:{service.port}" for a in aliases]
    # A bare host (no port) means port 80 in HTTP; a service with a single port also takes it,
    # so `http://reviews/` works for a service that only serves 9080.
    if service.port == 80 or (len(ports) == 1 and 80 not in ports):
        domains += aliases
    rule = snapshot.virtual_service_for(service.hostname)
    table = routes.for_virtual_service(snapshot, rule, service) if rule else [routes.default_route(service)]
    return rc.VirtualHost(name=f"{service.hostname}:{service.port}", domains=domains, routes=table)


def _passthrough_host() -> rc.VirtualHost:
    return rc.VirtualHost(
        name="allow_any",
        domains=["*"],
        routes=[rc.Route(name="allow_any", match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(cluster=names.PASSTHROUGH, timeout={"seconds": 0}))],
    )
