"""The outbound listener of a captured workload (`lattice run --capture`): every TCP connection
its app opens arrives here, redirected by the workload's iptables rules, original destination kept.

- `original_dst` restores where the app was going; `http_inspector` tells HTTP from the rest.
- A connection to a TCP service's virtual IP (mesh/vips.py) and port goes to that service, routed
  by its VirtualService `tcp` rules, as an `--upstream` port would send it (l4.py).
- HTTP goes to the HTTP connection manager the listener already has: routed by Host, so a mesh
  name never leaves the mesh, whatever its endpoints are doing (no endpoint: 503).
- Anything else leaves for where it was going (ALLOW_ANY: Istio's original-destination
  PassthroughCluster), or is closed (REGISTRY_ONLY).
- A mesh name no workload serves now (mesh/absent.py) keeps a virtual IP: HTTP to it gets the
  route table's 503 "no healthy upstream for <name>", anything else is closed at once
  (BlackHoleCluster), instead of a failed lookup or a connection left to time out.
The listener's metadata carries the name table the agent's DNS proxy answers from
(`lattice.dns`: {name: address}), so names and routes come in one push.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2
from google.protobuf.wrappers_pb2 import UInt32Value

from lattice.mesh import MeshSnapshot, Service, Workload, protocol as protocols
from lattice.mesh.vips import allocate, service_address
from lattice.mesh.workload import Upstream
from lattice.translate import l4
from lattice.translate.protos import duration, pack

PASSTHROUGH_ORIGINAL_DST = "PassthroughOriginalDst"
BLACKHOLE = "BlackHoleCluster"  # Istio's name: a cluster with no endpoints, so connections close at once
DNS_METADATA = "lattice.dns"
HTTP_PROTOCOLS = ("http/1.0", "http/1.1", "h2c")
CONNECT_TIMEOUT = 10.0


def vips(snapshot: MeshSnapshot) -> dict[str, str]:
    hosts = [s.hostname for s in (*snapshot.services, *snapshot.absent_services())]
    return snapshot.memo(("vips",), lambda: allocate(hosts))


def capture_outbound(snapshot: MeshSnapshot, proxy: Workload, listener: listener_pb2.Listener) -> None:
    """Turn the outbound listener (one HTTP chain) into the captured one."""
    listener.listener_filters.add(
        name="envoy.filters.listener.original_dst", typed_config=pack(original_dst_pb2.OriginalDst())
    )
    listener.listener_filters.add(
        name="envoy.filters.listener.http_inspector", typed_config=pack(http_inspector_pb2.HttpInspector())
    )
    # A client that waits for the server to speak first (SSH, MySQL) still gets through, a moment later.
    listener.listener_filters_timeout.CopyFrom(duration(1.0))
    listener.continue_on_listener_filters_timeout = True
    http = listener.filter_chains[0]
    http.name = "http"
    http.filter_chain_match.application_protocols.extend(HTTP_PROTOCOLS)
    table = vips(snapshot)
    for service in snapshot.services_for(proxy):
        address = service_address(service, table)
        if address is not None and not protocols.is_http(service.protocol):
            listener.filter_chains.append(_tcp_chain(snapshot, proxy, service, address))
    absent = sorted({table[s.hostname] for s in snapshot.absent_services() if s.hostname in table})
    if absent:
        listener.filter_chains.extend(_absent_chains(http, absent))
    if snapshot.outbound_policy_for(proxy) != "REGISTRY_ONLY":
        listener.filter_chains.append(_passthrough_chain())
    listener.metadata.filter_metadata[DNS_METADATA].CopyFrom(_names(snapshot, proxy, table))


def _tcp_chain(
    snapshot: MeshSnapshot, proxy: Workload, service: Service, address: str
) -> listener_components_pb2.FilterChain:
    upstream = Upstream(service.name, service.namespace, service.port, service.port)
    vs = snapshot.virtual_service_for(service.hostname, proxy.namespace)
    name = f"{address}_{service.port}"
    chain = l4._chain(name, l4._tcp_destinations(snapshot, proxy, vs, service, upstream), name)
    chain.filter_chain_match.destination_port.value = service.port
    chain.filter_chain_match.prefix_ranges.add(address_prefix=address, prefix_len=UInt32Value(value=32))
    l4._report(snapshot, proxy, chain)
    return chain


def _absent_chains(
    http: listener_components_pb2.FilterChain, addresses: list[str]
) -> list[listener_components_pb2.FilterChain]:
    """Chains for the virtual IPs of names without workloads (a destination address outranks the
    protocol in Envoy's chain match, so HTTP needs a copy of the http chain of its own)."""
    routed = listener_components_pb2.FilterChain()
    routed.CopyFrom(http)
    routed.name = "absent_http"
    config = tcp_proxy_pb2.TcpProxy(stat_prefix=BLACKHOLE, cluster=BLACKHOLE)
    closed = listener_components_pb2.FilterChain(
        name="absent", filters=[listener_components_pb2.Filter(name=l4.TCP_PROXY, typed_config=pack(config))]
    )
    for chain in (routed, closed):
        for address in addresses:
            chain.filter_chain_match.prefix_ranges.add(address_prefix=address, prefix_len=UInt32Value(value=32))
    return [routed, closed]


def _passthrough_chain() -> listener_components_pb2.FilterChain:
    config = tcp_proxy_pb2.TcpProxy(stat_prefix="PassthroughOriginalDst", cluster=PASSTHROUGH_ORIGINAL_DST)
    return listener_components_pb2.FilterChain(
        name="passthrough",
        filters=[listener_components_pb2.Filter(name=l4.TCP_PROXY, typed_config=pack(config))],
    )


def _names(snapshot: MeshSnapshot, proxy: Workload, table: dict[str, str]) -> struct_pb2.Struct:
    names: dict[str, str] = {}
    for service in (*snapshot.services_for(proxy), *snapshot.absent_services()):
        address = service_address(service, table)
        if address is None:
            continue
        for name in service.aliases(proxy.namespace, snapshot.domain):
            if not name.startswith("*") and not _is_ip(name):
                names.setdefault(name.lower(), address)
    out = struct_pb2.Struct()
    out.update(dict(sorted(names.items())))
    return out


def blackhole_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC, connect_timeout=duration(1.0))


def _is_ip(name: str) -> bool:
    return name.replace(".", "").isdigit() or ":" in name


def passthrough_cluster() -> cluster_pb2.Cluster:
    """Where a captured connection that is not the mesh's goes: the address it was going to."""
    return cluster_pb2.Cluster(
        name=PASSTHROUGH_ORIGINAL_DST,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration(CONNECT_TIMEOUT),
        dns_lookup_family=cluster_pb2.Cluster.V4_ONLY,
    )


__all__ = ["blackhole_cluster", "capture_outbound", "passthrough_cluster", "vips"]
