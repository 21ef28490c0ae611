"""Clusters: one per service port, one per DestinationRule subset, the inbound app, passthrough."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2
from google.protobuf.wrappers_pb2 import UInt32Value

from lattice.api.destination_rule import HTTPSettings
from lattice.mesh import MeshSnapshot, Service, Workload
from lattice.translate import capture, eds, ext_authz, names, policy, tls, tracing
from lattice.translate.protos import ads, duration, pack, socket_address

CONNECT_TIMEOUT = 10.0
HTTP2_PROTOCOLS = ("grpc", "http2", "grpc-web")
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Like Istio: Envoy's default circuit breakers (1024) would silently cap a busy service; limits
# are opt-in through DestinationRule connectionPool instead.
_UNLIMITED = 4294967295


def clusters(snapshot: MeshSnapshot, proxy: Workload) -> list[cluster_pb2.Cluster]:
    out = [_inbound(proxy), passthrough()]
    if proxy.capture:
        out += [capture.passthrough_cluster(), capture.blackhole_cluster()]
    for service in snapshot.services_for(proxy):
        # The same for every caller: built once per snapshot, shared by all proxies.
        def build(service: Service = service) -> list[cluster_pb2.Cluster]:
            return _service_clusters(snapshot, service)

        out.extend(snapshot.memo(("clusters", service.hostname, service.port), build))
    return (
        out + ext_authz.clusters(snapshot, proxy) + tracing.clusters(snapshot, proxy)
    )  # a CUSTOM authorizer, a trace collector


def _service_clusters(snapshot: MeshSnapshot, service: Service) -> list[cluster_pb2.Cluster]:
    peers = tls.peer_identities(snapshot, service)  # one list for the service and its subsets
    rule = snapshot.destination_rule_for(service.hostname)
    return [
        _outbound(snapshot, service, None, peers),
        *(_outbound(snapshot, service, s.name, peers) for s in (rule.spec.subsets if rule else ())),
    ]


def _outbound(snapshot: MeshSnapshot, service: Service, subset: str | None, peers: list[str]) -> cluster_pb2.Cluster:
    name = names.outbound_cluster(service.port, subset, service.hostname)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads(), service_name=name),
        connect_timeout=duration(CONNECT_TIMEOUT),
        # Envoy's default panic mode (below 50% healthy, use them all) would send requests to apps
        # that are not listening yet; a mesh only routes to endpoints whose health it knows.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(healthy_panic_threshold=percent_pb2.Percent(value=0)),
    )
    _set_discovery(cluster, snapshot, service, subset)
    http = _http_pool(snapshot, service, subset)
    _set_protocol(
        cluster,
        service.protocol,
        _h2_upgrade(service.protocol, http, snapshot.h2_upgrade_policy),
        bool(http and http.use_client_protocol),
    )
    _set_tls(cluster, snapshot, service, subset, peers)
    # Last: it adds to the protocol options.
    policy.apply(cluster, snapshot, service.hostname, subset, service.port, mesh=service.source == "registry")
    return cluster


def _set_discovery(cluster: cluster_pb2.Cluster, snapshot: MeshSnapshot, service: Service, subset: str | None) -> None:
    """Where endpoints come from, by ServiceEntry resolution: EDS for registered workloads and
    STATIC entries; Envoy's own DNS for DNS (every address, STRICT_DNS) and DNS_ROUND_ROBIN (one
    address at a time, LOGICAL_DNS); for NONE, the host the client asked for (dynamic forward proxy)."""
    if service.resolution == "STATIC":
        return
    cluster.ClearField("eds_cluster_config")
    if service.resolution == "NONE":
        cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
        cluster.cluster_type.CopyFrom(_dynamic_forward_proxy())
        return
    cluster.type = cluster_pb2.Cluster.STRICT_DNS if service.resolution == "DNS" else cluster_pb2.Cluster.LOGICAL_DNS
    cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    cluster.respect_dns_ttl = True
    cluster.load_assignment.CopyFrom(eds.assignment(snapshot, service, subset))


def _set_tls(
    cluster: cluster_pb2.Cluster, snapshot: MeshSnapshot, service: Service, subset: str | None, peers: list[str]
) -> None:
    """Istio's client side: a DestinationRule's `tls` if it has one; otherwise auto mTLS, where
    each endpoint's metadata says whether it expects mesh mTLS (see eds.py)."""
    settings = tls.client_tls(snapshot, service, subset)
    sni = f"outbound_.{service.port}_.{subset or ''}_.{service.hostname}"
    if settings is None:
        mesh = cluster.transport_socket_matches.add(
            name="tlsMode-istio", transport_socket=tls.mesh_client_socket(peers, sni)
        )
        mesh.match.update(tls.MESH_TLS_MODE)
        cluster.transport_socket_matches.add(
            name="tlsMode-disabled", match=struct_pb2.Struct(), transport_socket=_plaintext()
        )
    elif settings.mode == "ISTIO_MUTUAL":
        cluster.transport_socket.CopyFrom(tls.mesh_client_socket(peers, sni))
    elif settings.mode in ("SIMPLE", "MUTUAL"):
        cluster.transport_socket.CopyFrom(tls.origination_socket(settings, service.hostname))


def _plaintext() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())
    )


def _inbound(proxy: Workload) -> cluster_pb2.Cluster:
    name = names.inbound_cluster(proxy.port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(CONNECT_TIMEOUT),
        circuit_breakers=_no_limits(),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=socket_address("127.0.0.1", proxy.app_port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    _set_protocol(cluster, proxy.protocol)
    return cluster


def passthrough() -> cluster_pb2.Cluster:
    """Hosts outside the mesh, resolved by DNS per request (Istio's ALLOW_ANY for HTTP_PROXY clients)."""
    return cluster_pb2.Cluster(
        name=names.PASSTHROUGH,
        connect_timeout=duration(CONNECT_TIMEOUT),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=_dynamic_forward_proxy(),
    )


def _dynamic_forward_proxy() -> cluster_pb2.Cluster.CustomClusterType:
    # One DNS cache, shared with the outbound listener's filter: Envoy requires them to match.
    return cluster_pb2.Cluster.CustomClusterType(
        name="envoy.clusters.dynamic_forward_proxy",
        typed_config=pack(dfp_cluster_pb2.ClusterConfig(dns_cache_config=dns_cache())),
    )


def dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(name="passthrough_dns", dns_lookup_family=1)  # V4_ONLY


def _no_limits() -> circuit_breaker_pb2.CircuitBreakers:
    unlimited = UInt32Value(value=_UNLIMITED)
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=unlimited, max_pending_requests=unlimited, max_requests=unlimited, max_retries=unlimited
    )
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _http_pool(snapshot: MeshSnapshot, service: Service, subset: str | None) -> HTTPSettings | None:
    pool = policy.effective(snapshot, service.hostname, subset, service.port).connection_pool
    return pool.http if pool else None


def _h2_upgrade(protocol: str, http: HTTPSettings | None, mesh_policy: str) -> bool:
    """Istio's shouldH2Upgrade, for the hop between sidecars: UPGRADE in the DestinationRule
    always (the user vouches the port is HTTP), DO_NOT_UPGRADE never, otherwise (DEFAULT or
    unset) the mesh-wide policy, and only for HTTP/1.1 ports."""
    chosen = (http.h2_upgrade_policy if http else None) or "DEFAULT"
    if chosen != "DEFAULT":
        return chosen == "UPGRADE"
    return protocol == "http" and mesh_policy == "UPGRADE"


def _set_protocol(
    cluster: cluster_pb2.Cluster, protocol: str, upgrade: bool = False, client_protocol: bool = False
) -> None:
    """HTTP/2 to destinations that speak it, or to an HTTP/1.1 one's sidecar when upgraded (one
    connection carries every request); with useClientProtocol, whichever the client spoke.
    Extended CONNECT is allowed wherever HTTP/2 may be used, so WebSockets cross such a hop."""
    h2 = protocol_pb2.Http2ProtocolOptions(allow_connect=True)
    if client_protocol:
        config = hpo.HttpProtocolOptions.UseDownstreamHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions(), http2_protocol_options=h2
        )
        options = hpo.HttpProtocolOptions(use_downstream_protocol_config=config)
    elif protocol in HTTP2_PROTOCOLS or upgrade:
        options = hpo.HttpProtocolOptions(
            explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options=h2)
        )
    else:
        return
    cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
