"""TCP and TLS upstream listeners: a workload's `--upstream` ports for opaque protocols, routed by
the VirtualService `tcp` and `tls` rules of the service they forward to.

A workload asks for a local port per upstream (`lattice run --upstream SERVICE:PORT=LOCALPORT`);
its sidecar listens there on the workload's own address and forwards each connection, over mesh
mTLS, to the service port. HTTP services get an HTTP connection manager (lds.py); this module
builds the rest:
- TCP (tcp, mongo, mysql, redis): one `tcp_proxy`, to the first `tcp` rule that applies, else to
  the service itself.
- TLS (tls, https): the client's SNI, read by `tls_inspector`, picks a filter chain per `tls` rule
  (`sniHosts`, Envoy's `server_names`, wildcards as Istio writes them); a connection whose SNI no
  rule claims goes where a TCP connection would.

Istio decides a match's `port`, `sourceLabels`, `sourceNamespace` and `gateways` per proxy, at
translation time; Lattice does too. `destinationSubnets` is decided the same way: the destination
of an upstream connection is the local listener the app dialed, the workload's own address.
First match wins, in rule order: an SNI claimed by an earlier rule is not offered to a later one.
"""

from __future__ import annotations

import ipaddress

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from lattice.api import Resource
from lattice.api.networking import L4MatchAttributes, RouteDestination, TCPRoute
from lattice.mesh import MeshSnapshot, Service, Workload, fqdn
from lattice.mesh.model import Upstream
from lattice.translate import names, routes, telemetry
from lattice.translate.protos import pack, socket_address

TCP_PROXY = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_PROTOCOLS = ("tls", "https")
Destinations = list[tuple[str, int]]  # (cluster, weight)


def listener_name(proxy: Workload, upstream: Upstream) -> str:
    """Istio's outbound listener names are `<ip>_<port>`; an upstream listener is one."""
    return f"{proxy.outbound_address}_{upstream.local_port}"


def upstream_listener(
    snapshot: MeshSnapshot, proxy: Workload, upstream: Upstream, service: Service | None
) -> listener_pb2.Listener:
    """The local listener of one upstream of an opaque protocol. A service not (yet) registered
    still gets its listener, to a cluster that does not exist: connections close at once, and the
    next push, when the service appears, routes them."""
    host = service.hostname if service else fqdn(upstream.service, upstream.namespace, snapshot.domain)
    listener = listener_pb2.Listener(
        name=listener_name(proxy, upstream), address=socket_address(proxy.outbound_address, upstream.local_port)
    )
    vs = snapshot.virtual_service_for(host, proxy.namespace)
    if service is not None and service.protocol in TLS_PROTOCOLS:
        listener.listener_filters.add(name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector()))
        listener.filter_chains.extend(_sni_chains(snapshot, proxy, vs, service, upstream))
    default = (
        _tcp_destinations(snapshot, proxy, vs, service, upstream)
        if service
        else [(names.outbound_cluster(upstream.port, None, host), 100)]
    )
    listener.filter_chains.append(_chain(f"{listener.name}|tcp", default, listener.name))
    for chain in listener.filter_chains:  # every connection reported, as the outbound side
        _report(snapshot, proxy, chain)
    return listener


def _report(snapshot: MeshSnapshot, proxy: Workload, chain: listener_components_pb2.FilterChain) -> None:
    config = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(config)
    config.access_log.extend(telemetry.tcp_access_logs(snapshot, proxy, "outbound"))
    telemetry.tcp_log_options(config, "outbound")
    chain.filters[-1].typed_config.CopyFrom(pack(config))


def _sni_chains(
    snapshot: MeshSnapshot, proxy: Workload, vs: Resource | None, service: Service, upstream: Upstream
) -> list[listener_components_pb2.FilterChain]:
    chains: list[listener_components_pb2.FilterChain] = []
    claimed: set[str] = set()
    if vs is None:
        return chains
    for index, rule in enumerate(vs.spec.tls):
        snis = [h for m in rule.match if applies(m, proxy, upstream.port) for h in m.sni_hosts if h not in claimed]
        if not snis:
            continue
        claimed.update(snis)
        destinations = weighted(snapshot, vs.namespace, service, rule.route)
        chain = _chain(
            f"{listener_name(proxy, upstream)}|tls|{vs.namespace}/{vs.name}#{index}",
            destinations,
            listener_name(proxy, upstream),
        )
        chain.filter_chain_match.server_names.extend(sorted(set(snis)))
        chains.append(chain)
    return chains


def _tcp_destinations(
    snapshot: MeshSnapshot, proxy: Workload, vs: Resource | None, service: Service, upstream: Upstream
) -> Destinations:
    rule = first_tcp_rule(vs, proxy, upstream.port)
    if rule is None or vs is None:  # no VirtualService, no rule
        return [(names.outbound_cluster(service.port, None, service.hostname), 100)]
    return weighted(snapshot, vs.namespace, service, rule.route)


def first_tcp_rule(vs: Resource | None, proxy: Workload, port: int) -> TCPRoute | None:
    """The first `tcp` rule with no match, or with a match that applies to this proxy and port."""
    for rule in vs.spec.tcp if vs else ():
        if not rule.match or any(applies(m, proxy, port) for m in rule.match):
            return rule
    return None


def applies(match: L4MatchAttributes, proxy: Workload, port: int) -> bool:
    """Whether an L4 match can fire for connections from `proxy` to service port `port`."""
    if match.port is not None and match.port != port:
        return False
    if match.gateways and "mesh" not in match.gateways:  # a match naming only gateways leaves sidecars out
        return False
    if match.source_namespace is not None and match.source_namespace != proxy.namespace:
        return False
    if any(proxy.labels.get(k) != v for k, v in match.source_labels.items()):
        return False
    return not match.destination_subnets or _in_subnets(proxy.address, match.destination_subnets)


def _in_subnets(address: str, subnets: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(s, strict=False) for s in subnets)


def weighted(snapshot: MeshSnapshot, namespace: str, service: Service, route: list[RouteDestination]) -> Destinations:
    """A rule's destinations as (cluster, weight); a lone destination takes everything, as in Istio."""
    if len(route) == 1:
        return [(routes.cluster_for(snapshot, namespace, service, route[0].destination), 100)]
    return [(routes.cluster_for(snapshot, namespace, service, d.destination), d.weight or 0) for d in route]


def _chain(name: str, destinations: Destinations, stat_prefix: str) -> listener_components_pb2.FilterChain:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    kept = [(c, w) for c, w in destinations if w > 0]  # Envoy refuses a zero weight; Istio drops them
    if len(kept) == 1:
        proxy.cluster = kept[0][0]
    else:
        proxy.weighted_clusters.clusters.extend(
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=c, weight=w) for c, w in kept
        )
    return listener_components_pb2.FilterChain(
        name=name, filters=[listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
    )
