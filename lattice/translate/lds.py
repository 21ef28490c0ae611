"""Listeners: the outbound HTTP proxy listener and one inbound listener per service port."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.http.original_ip_detection.xff.v3 import xff_pb2

from lattice.mesh import MeshSnapshot, Service, Workload, fqdn
from lattice.mesh import protocol as protocols
from lattice.mesh.model import Upstream
from lattice.mesh.extensions import network_at
from lattice.translate import (
    authz,
    capture,
    extensions,
    http_filters,
    l4,
    names,
    paths,
    proxy_auth,
    rds,
    silence,
    telemetry,
    tls,
    tracing,
)
from lattice.translate.protos import ads, duration, pack, socket_address

HCM = "envoy.filters.network.http_connection_manager"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TCP_PROTOCOLS = protocols.OPAQUE
# Headers that only Envoy itself sets (on a path rewrite or an internal redirect) and that its own
# sanitizing of external requests leaves alone: a client's copy would pose as the proxy's word.
ENVOY_SET_HEADERS = ("x-envoy-original-path", "x-envoy-original-url")
# Slow clients may take this long to send their headers before the connection is closed
# (slowloris); large enough for any real client, small enough that idle sockets do not pile up.
REQUEST_HEADERS_TIMEOUT = 10


def listeners(snapshot: MeshSnapshot, proxy: Workload) -> list[listener_pb2.Listener]:
    built = [
        outbound(snapshot, proxy),
        inbound(snapshot, proxy),
        *(_upstream(snapshot, proxy, u) for u in proxy.upstreams),
    ]
    return [silence.bound(snapshot, listener) for listener in built]


def outbound(snapshot: MeshSnapshot, proxy: Workload) -> listener_pb2.Listener:
    manager = _outbound_manager(snapshot, proxy, "outbound_http")
    manager.rds.CopyFrom(hcm.Rds(config_source=ads(), route_config_name=names.OUTBOUND_ROUTE))
    proxy_auth.configure(manager, proxy)  # its refusals are the proxy's 407
    listener = _listener(
        names.OUTBOUND_LISTENER, proxy.outbound_address, proxy.outbound_port, _network_filter(HCM, manager)
    )
    listener.metadata.CopyFrom(telemetry.rules_metadata(snapshot, proxy))
    if proxy.capture:  # the app's connections arrive redirected, to any address (translate/capture.py)
        capture.capture_outbound(snapshot, proxy, listener)
    return listener


def _outbound_manager(
    snapshot: MeshSnapshot, proxy: Workload, stat_prefix: str, port: int | None = None
) -> hcm.HttpConnectionManager:
    """Extensions on the CLIENT side with `match.ports` run on the `--upstream` listeners of
    those service ports; the shared outbound listener (every destination) runs those without."""
    manager = _manager(snapshot, stat_prefix, http_filters.chain(snapshot, proxy, http_filters.OUTBOUND, port))
    manager.access_log.extend(telemetry.http_access_logs(snapshot, proxy, "outbound"))
    tracing.configure(manager, snapshot, proxy, tracing.OUTBOUND)
    return manager


def _upstream(snapshot: MeshSnapshot, proxy: Workload, upstream: Upstream) -> listener_pb2.Listener:
    """An `--upstream` port: HTTP services routed as the outbound listener routes them, anything
    else (and a service not registered yet) by l4."""
    host = fqdn(upstream.service, upstream.namespace, snapshot.domain)
    service = next((s for s in snapshot.services_for(proxy) if s.hostname == host and s.port == upstream.port), None)
    if service is None or not protocols.is_http(service.protocol):
        return l4.upstream_listener(snapshot, proxy, upstream, service)
    return _http_upstream(snapshot, proxy, upstream, service)


def _http_upstream(
    snapshot: MeshSnapshot, proxy: Workload, upstream: Upstream, service: Service
) -> listener_pb2.Listener:
    name = l4.listener_name(proxy, upstream)
    manager = _outbound_manager(snapshot, proxy, name, service.port)
    manager.route_config.CopyFrom(rds.upstream_route_configuration(snapshot, proxy, service, name))
    return _listener(name, proxy.outbound_address, upstream.local_port, _network_filter(HCM, manager))


def inbound(snapshot: MeshSnapshot, proxy: Workload) -> listener_pb2.Listener:
    """The workload's service port: mTLS, plaintext or both, as its PeerAuthentication says."""
    name = names.inbound_listener(proxy.port)
    mode = snapshot.inbound_mtls(proxy)
    chains = []
    selected = snapshot.extensions_for(proxy)
    http = http_filters.chain(snapshot, proxy, http_filters.INBOUND, proxy.port)  # in the one order (http_filters.py)
    tcp_filters = []
    if proxy.protocol in TCP_PROTOCOLS:
        network = extensions.network_filters(network_at(selected, proxy.port), snapshot.wasm_modules)
        tcp_filters = [*authz.network_filters(snapshot, proxy), *network]
    if mode in ("STRICT", "PERMISSIVE"):
        chains.append(
            _inbound_chain(
                snapshot, proxy, tls.inbound_socket(), "tls" if mode == "PERMISSIVE" else "", http, tcp_filters
            )
        )
    if mode in ("PERMISSIVE", "DISABLE"):
        chains.append(
            _inbound_chain(snapshot, proxy, None, "raw_buffer" if mode == "PERMISSIVE" else "", http, tcp_filters)
        )
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(proxy.inbound_bind, proxy.port),
        filter_chains=chains,
        # Callers' requests in: the listener a stopping sidecar drains (`/drain_listeners?inboundonly`).
        traffic_direction=base_pb2.INBOUND,
    )
    listener.metadata.CopyFrom(telemetry.rules_metadata(snapshot, proxy))
    if mode == "PERMISSIVE":  # one port, two kinds of client: look at the first bytes to choose
        listener.listener_filters.add(name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector()))
    return listener


def _inbound_chain(
    snapshot: MeshSnapshot,
    proxy: Workload,
    socket: base_pb2.TransportSocket | None,
    transport: str,
    http: list[hcm.HttpFilter],
    tcp_filters: Sequence[listener_components_pb2.Filter] = (),
) -> listener_components_pb2.FilterChain:
    cluster = names.inbound_cluster(proxy.port)
    if proxy.protocol in TCP_PROTOCOLS:
        tcp_proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=names.inbound_stat_prefix(proxy.port),
            cluster=cluster,
            access_log=telemetry.tcp_access_logs(snapshot, proxy, "inbound", socket is not None),
        )
        telemetry.tcp_log_options(tcp_proxy, "inbound")
        network_filter = _network_filter("envoy.filters.network.tcp_proxy", tcp_proxy)
    else:
        manager = _manager(snapshot, names.inbound_stat_prefix(proxy.port), http)
        manager.access_log.extend(telemetry.http_access_logs(snapshot, proxy, "inbound", socket is not None))
        tracing.configure(manager, snapshot, proxy, tracing.INBOUND)
        # The caller's identity reaches the app in x-forwarded-client-cert, set from the verified
        # peer certificate only: whatever a client sent in that header is dropped.
        manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
        distrust_client(manager)
        believe_no_forwarded_for(manager)
        manager.route_config.CopyFrom(
            route_pb2.RouteConfiguration(
                name=names.inbound_listener(proxy.port),
                virtual_hosts=[
                    rc.VirtualHost(
                        name=f"inbound|http|{proxy.port}",
                        domains=["*"],
                        routes=[
                            *rds.refusals(),
                            rc.Route(
                                match=rc.RouteMatch(prefix="/"),
                                route=rc.RouteAction(cluster=cluster, timeout=duration(0)),
                            ),
                        ],
                    )
                ],
            )
        )
        network_filter = _network_filter(HCM, manager)
    chain = listener_components_pb2.FilterChain(
        filters=[*tcp_filters, network_filter]
    )  # authorization (TCP) before the proxy
    if transport:
        chain.filter_chain_match.transport_protocol = transport
    if socket is not None:
        chain.name = f"inbound|{proxy.port}|mtls"
        chain.transport_socket.CopyFrom(socket)
    else:
        chain.name = f"inbound|{proxy.port}|plaintext"
    return chain


def _manager(snapshot: MeshSnapshot, stat_prefix: str, filters: list[hcm.HttpFilter]) -> hcm.HttpConnectionManager:
    # Safe request handling by default (DESIGN "Failure rules"): routing, authorization and the app
    # all see one normalized path (RFC 3986 dot segments, merged slashes; a #fragment is stripped
    # by the runtime flag in the bootstrap), per the mesh's path policy (translate/paths.py). Under
    # the default, escaped slashes (%2F, %5C) are refused outright rather than redirected: a
    # redirect would have the client fetch `a/b` when it named the one segment `a%2Fb`, and would
    # resend bodies of non-idempotent requests. Underscores in header names (a
    # classic smuggling vector across proxies) are refused; a Host with a trailing dot names the
    # same service as without one, so it must meet the same routes.
    manager = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        http_filters=filters,  # the whole chain, router last (http_filters.chain)
        # WebSockets pass every hop: as HTTP/1.1 upgrades, and as extended CONNECT (RFC 8441)
        # where the hop between sidecars is HTTP/2.
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(allow_connect=True),
        strip_trailing_host_dot=True,
        request_headers_timeout=duration(REQUEST_HEADERS_TIMEOUT),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
            # No request open for this long: closed (translate/silence.py); an open stream is a request.
            idle_timeout=duration(snapshot.http_policy.idle_timeout),
        ),
    )
    paths.configure(manager, snapshot.http_policy.path_normalization)
    return manager


def distrust_client(manager: hcm.HttpConnectionManager) -> None:
    """Where the client is another machine (inbound, gateway), drop the Envoy-set headers it may
    have forged before any filter or route reads them. Envoy already ignores its other x-envoy-*
    controls (retries, timeouts) from such clients: none of them is an internal address."""
    rules = [mutation_rules_pb2.HeaderMutation(remove=name) for name in ENVOY_SET_HEADERS]
    config = header_mutation_pb2.HeaderMutation(mutations=rules)
    manager.early_header_mutation_extensions.append(
        extension_pb2.TypedExtensionConfig(
            name="envoy.http.early_header_mutation.header_mutation", typed_config=pack(config)
        )
    )


def trust_forwarded_for(manager: hcm.HttpConnectionManager, trusted_hops: int) -> None:
    """At the edge: the client's address (what `remoteIpBlocks` and `x-envoy-external-address`
    name) is the TCP peer's, or, with `trusted_hops` proxies in front, the address that many hops
    from the right of X-Forwarded-For (MeshConfig `numTrustedProxies`, at gateways)."""
    manager.use_remote_address.value = True
    manager.xff_num_trusted_hops = trusted_hops


def believe_no_forwarded_for(manager: hcm.HttpConnectionManager) -> None:
    """At a sidecar: the client's address for `remoteIpBlocks` is the TCP peer's. Envoy's default
    would take the last X-Forwarded-For entry, which any client writes; X-Forwarded-For is trusted
    here from no peer (an address no peer has). The sidecar appends the peer it saw to
    X-Forwarded-For, and leaves the gateway's `x-envoy-external-address` as it came."""
    nobody = address_pb2.CidrRange(address_prefix="0.0.0.0", prefix_len={"value": 32})
    config = xff_pb2.XffConfig(xff_trusted_cidrs=xff_pb2.XffTrustedCidrs(cidrs=[nobody]))
    manager.original_ip_detection_extensions.append(
        extension_pb2.TypedExtensionConfig(name="envoy.http.original_ip_detection.xff", typed_config=pack(config))
    )


def _network_filter(name: str, config) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=pack(config))


def _listener(name: str, ip: str, port: int, network_filter: listener_components_pb2.Filter) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(ip, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[network_filter])],
        traffic_direction=base_pb2.OUTBOUND,  # the app's requests out: Envoy's spans here are CLIENT spans
    )
