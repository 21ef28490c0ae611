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

from lattice.mesh import MeshSnapshot, Service, Workload
from lattice.translate import names, tls
from lattice.translate.protos import ads, duration, pack, socket_address

CONNECT_TIMEOUT = 10.0
HTTP2_PROTOCOLS = ("grpc", "http2", "grpc-web")
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Like Istio: Envoy's default circuit breakers (1024) would silently cap a busy service; limits
# are opt-in through DestinationRule connectionPool instead.
_UNLIMITED = 4294967295


def clusters(snapshot: MeshSnapshot, proxy: Workload) -> list[cluster_pb2.Cluster]:
    out = [_inbound(proxy), passthrough()]
    for service in snapshot.services:
        peers = tls.peer_identities(snapshot, service)  # one list for the service and its subsets
        out.append(_outbound(snapshot, service, None, peers))
        rule = snapshot.destination_rule_for(service.hostname)
        out.extend(_outbound(snapshot, service, s.name, peers) for s in (rule.spec.subsets if rule else ()))
    return out


def _outbound(snapshot: MeshSnapshot, service: Service, subset: str | None, peers: list[str]) -> cluster_pb2.Cluster:
    name = names.outbound_cluster(service.port, subset, service.hostname)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads(), service_name=name),
        connect_timeout=duration(CONNECT_TIMEOUT),
        circuit_breakers=_no_limits(),
        # Envoy's default panic mode (below 50% healthy, use them all) would send requests to apps
        # that are not listening yet; a mesh only routes to endpoints whose health it knows.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(healthy_panic_threshold=percent_pb2.Percent(value=0)),
    )
    _set_protocol(cluster, service.protocol)
    _set_tls(cluster, snapshot, service, subset, peers)
    return cluster


def _set_tls(cluster: cluster_pb2.Cluster, snapshot: MeshSnapshot, service: Service, subset: str | None, peers: list[str]) -> None:
    """Istio's client side: a DestinationRule's `tls` if it has one; otherwise auto mTLS, where
    each endpoint's metadata says whether it expects mesh mTLS (see eds.py)."""
    settings = tls.client_tls(snapshot, service, subset)
    sni = f"outbound_.{service.port}_.{subset or ''}_.{service.hostname}"
    if settings is None:
        mesh = cluster.transport_socket_matches.add(name="tlsMode-istio", transport_socket=tls.mesh_client_socket(peers, sni))
        mesh.match.update(tls.MESH_TLS_MODE)
        cluster.transport_socket_matches.add(name="tlsMode-disabled", match=struct_pb2.Struct(), transport_socket=_plaintext())
    elif settings.mode == "ISTIO_MUTUAL":
        cluster.transport_socket.CopyFrom(tls.mesh_client_socket(peers, sni))
    elif settings.mode in ("SIMPLE", "MUTUAL"):
        cluster.transport_socket.CopyFrom(tls.origination_socket(settings, service.hostname))


def _plaintext() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer()))


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
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address("127.0.0.1", proxy.app_port))
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
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.dynamic_forward_proxy",
            typed_config=pack(dfp_cluster_pb2.ClusterConfig(dns_cache_config=dns_cache())),
        ),
    )


def dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(name="passthrough_dns", dns_lookup_family=1)  # V4_ONLY


def _no_limits() -> circuit_breaker_pb2.CircuitBreakers:
    unlimited = UInt32Value(value=_UNLIMITED)
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=unlimited, max_pending_requests=unlimited, max_requests=unlimited, max_retries=unlimited
    )
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _set_protocol(cluster: cluster_pb2.Cluster, protocol: str) -> None:
    if protocol in HTTP2_PROTOCOLS:
        options = hpo.HttpProtocolOptions(
            explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options=protocol_pb2.Http2ProtocolOptions())
        )
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
