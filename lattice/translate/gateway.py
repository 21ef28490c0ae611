"""A gateway proxy's config: listeners for the Gateways that select it, routes from the
VirtualServices bound to them, and the same outbound clusters a sidecar has.

One listener per (address, Gateway port), on the local port `gateway_local_port` gives:
- HTTP, HTTP2, GRPC: one connection manager; its route table holds a virtual host per host that a
  bound VirtualService and a server both name (`httpsRedirect` makes those answer 301 to https).
- HTTPS and TLS that terminate (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL): a filter chain per
  server, chosen by SNI, with the server's certificate; HTTPS then routes like HTTP (a route table
  per server), TLS forwards by the VirtualService's `tcp` routes.
- TLS PASSTHROUGH (or HTTPS without termination): a filter chain per `tls` route SNI, forwarded unopened.
- TCP: the first `tcp` route for the port.

Gateways and VirtualServices are taken oldest first; where two claim the same port in incompatible
ways or the same SNI, the older one wins (Istio's rule for conflicts).
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from lattice.api import Resource
from lattice.api.gateway import Server, ServerTLSSettings, split_host
from lattice.api.networking import RouteDestination
from lattice.api.registration import gateway_local_port
from lattice.mesh import MeshSnapshot, Workload, credentials, fqdn, k8s_gateway
from lattice.translate import cds, http_filters, lds, names, rds, routes, silence, telemetry, tls, tracing
from lattice.translate.protos import ads, pack, socket_address

TCP_PROXY = "envoy.filters.network.tcp_proxy"
_TLS_VERSIONS = {f"TLSV1_{i}": getattr(common_pb2.TlsParameters, f"TLSv1_{i}") for i in range(4)} | {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO
}
_SAN_TYPES = (
    common_pb2.SubjectAltNameMatcher.DNS,
    common_pb2.SubjectAltNameMatcher.URI,
    common_pb2.SubjectAltNameMatcher.EMAIL,
    common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
)


@dataclass(frozen=True)
class BoundServer:
    """One server of one Gateway that selects this proxy."""

    gateway: Resource
    server: Server
    index: int

    @property
    def ref(self) -> str:
        return f"{self.gateway.namespace}/{self.gateway.name}"

    @property
    def label(self) -> str:
        return self.server.name or f"{self.server.port.name}.{self.index}"


# --- which servers, on which ports ---------------------------------------------------------


def servers_by_port(snapshot: MeshSnapshot, proxy: Workload) -> dict[tuple[str, int], list[BoundServer]]:
    """Servers of the Gateways selecting `proxy`, grouped by (address, Gateway port), oldest first.
    A server whose port another Gateway already serves differently is left out."""
    groups: dict[tuple[str, int], list[BoundServer]] = {}
    for gw in snapshot.edge_gateways:
        if not gw.spec.selects(dict(proxy.labels)) or not k8s_gateway.serves(proxy.labels, gw, proxy.namespace):
            continue
        for i, server in enumerate(gw.spec.servers):
            group = groups.setdefault((server.bind or proxy.address, server.port.number), [])
            if not group or _shape(group[0].server) == _shape(server):
                group.append(BoundServer(gw, server, i))
    return groups


def _shape(server: Server) -> str:
    if server.port.protocol in ("HTTP", "HTTP2", "GRPC"):
        return "http"
    if server.port.protocol == "TCP":
        return "tcp"
    return "passthrough" if server.tls_mode == "PASSTHROUGH" else "terminate"


def _local(proxy: Workload, number: int) -> int:
    return gateway_local_port(number, dict(proxy.listen))


# --- resources -------------------------------------------------------------------------------


def clusters(snapshot: MeshSnapshot, proxy: Workload) -> list[cluster_pb2.Cluster]:
    """A sidecar's clusters (mesh mTLS, DestinationRules) without the inbound one: no app here."""
    return [c for c in cds.clusters(snapshot, proxy) if c.name != names.inbound_cluster(proxy.port)]


def listeners(snapshot: MeshSnapshot, proxy: Workload) -> list[listener_pb2.Listener]:
    out, taken = [], set()
    for (address, number), group in servers_by_port(snapshot, proxy).items():
        local = _local(proxy, number)
        if (address, local) in taken:  # two Gateway ports mapped to one local port: the first keeps it
            continue
        taken.add((address, local))
        listener = listener_pb2.Listener(name=f"{address}_{local}", address=socket_address(address, local))
        listener.filter_chains.extend(_chains(snapshot, proxy, group))
        if _shape(group[0].server) in ("terminate", "passthrough"):  # SNI picks the chain
            listener.listener_filters.add(name=lds.TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector()))
        if listener.filter_chains:
            out.append(silence.bound(snapshot, listener))
    return out


def route_configurations(snapshot: MeshSnapshot, proxy: Workload) -> list[route_pb2.RouteConfiguration]:
    out = []
    for (address, number), group in servers_by_port(snapshot, proxy).items():
        shape = _shape(group[0].server)
        if shape == "http":
            out.append(_route_table(snapshot, proxy, _http_route_name(address, number, proxy), group))
        elif shape == "terminate":
            out.extend(_route_table(snapshot, proxy, _https_route_name(b), [b]) for b in group if b.server.speaks_http)
    return out


def _http_route_name(address: str, number: int, proxy: Workload) -> str:
    return f"http.{number}" if address == proxy.address else f"http.{number}.{address}"


def _https_route_name(b: BoundServer) -> str:
    # Istio's naming: https.<port>.<server or port name>.<gateway>.<namespace>
    return f"https.{b.server.port.number}.{b.label}.{b.gateway.name}.{b.gateway.namespace}"


# --- filter chains ---------------------------------------------------------------------------


def _chains(snapshot: MeshSnapshot, proxy: Workload, group: list[BoundServer]) -> list[lc.FilterChain]:
    shape = _shape(group[0].server)
    address, number = group[0].server.bind or proxy.address, group[0].server.port.number
    if shape == "http":
        manager = _http_manager(
            snapshot, proxy, f"gateway_http_{number}", _http_route_name(address, number, proxy), number
        )
        return [lc.FilterChain(name=f"http.{number}", filters=[_network(lds.HCM, manager)])]
    if shape == "tcp":
        proxy_filter = _tcp_proxy(snapshot, group, number, f"gateway_tcp_{number}")
        return [lc.FilterChain(name=f"tcp.{number}", filters=[proxy_filter])] if proxy_filter else []
    if shape == "passthrough":
        return _passthrough_chains(snapshot, group, number)
    return _terminating_chains(snapshot, proxy, group)


def _terminating_chains(snapshot: MeshSnapshot, proxy: Workload, group: list[BoundServer]) -> list[lc.FilterChain]:
    chains, seen = [], set()
    for b in group:
        sni = _server_names(b.server)
        if tuple(sni) in seen:  # the same SNI on one port twice: the older server keeps it
            continue
        seen.add(tuple(sni))
        if b.server.speaks_http:
            network = _network(
                lds.HCM,
                _http_manager(
                    snapshot, proxy, f"gateway_https_{b.server.port.number}", _https_route_name(b), b.server.port.number
                ),
            )
        else:
            network = _tcp_proxy(snapshot, [b], b.server.port.number, f"gateway_tls_{b.server.port.number}")
        if network is None or _credential_problem(snapshot, proxy, b.server):
            continue  # a secret not (yet) made: the server is left out, and `lattice status` says why
        transport = _downstream_tls(b.server, proxy)
        chain = lc.FilterChain(name=_https_route_name(b), filters=[network], transport_socket=transport)
        chain.filter_chain_match.server_names.extend(sni)
        chains.append(chain)
    return chains


def _server_names(server: Server) -> list[str]:
    """SNI values a terminating server answers: its hosts, or any (none listed) if one is '*'."""
    hosts = sorted({split_host(h, "")[1] for h in server.hosts})
    return [] if "*" in hosts else hosts


def _passthrough_chains(snapshot: MeshSnapshot, group: list[BoundServer], number: int) -> list[lc.FilterChain]:
    """A chain per SNI that a bound VirtualService's `tls` route names, within the servers' hosts."""
    chains: list[lc.FilterChain] = []
    seen: set[str] = set()
    for b in group:
        for vs in _bound_virtual_services(snapshot, b):
            for i, rule in enumerate(vs.spec.tls):
                for match in rule.match:
                    if not _l4_applies(match, vs.namespace, b, number):
                        continue
                    allowed = _server_hosts(b, vs)
                    sni = sorted(
                        {h for h in match.sni_hosts if h != "*" and any(_intersect(h, s) for s in allowed)} - seen
                    )
                    if not sni:
                        continue
                    seen.update(sni)
                    chain = lc.FilterChain(
                        name=f"tls.{number}.{vs.namespace}/{vs.name}#{i}",
                        filters=[_tcp_filter(snapshot, vs, rule.route, f"gateway_tls_{number}")],
                    )
                    chain.filter_chain_match.server_names.extend(sni)
                    chains.append(chain)
    return chains


def _tcp_proxy(snapshot: MeshSnapshot, group: list[BoundServer], number: int, stat_prefix: str) -> lc.Filter | None:
    """The first `tcp` route of a bound VirtualService that applies on this port (Istio: first match wins)."""
    for b in group:
        for vs in _bound_virtual_services(snapshot, b):
            for rule in vs.spec.tcp:
                if not rule.match or any(_l4_applies(m, vs.namespace, b, number) for m in rule.match):
                    return _tcp_filter(snapshot, vs, rule.route, stat_prefix)
    return None


def _l4_applies(match, namespace: str, b: BoundServer, number: int) -> bool:
    if match.port is not None and match.port != number:
        return False
    return not match.gateways or b.ref in {_gateway_ref(g, namespace) for g in match.gateways}


def _tcp_filter(snapshot: MeshSnapshot, vs: Resource, route: list[RouteDestination], stat_prefix: str) -> lc.Filter:
    config = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(route) == 1:
        config.cluster = routes.cluster_for(snapshot, vs.namespace, None, route[0].destination)
    else:
        config.weighted_clusters.clusters.extend(
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(
                name=routes.cluster_for(snapshot, vs.namespace, None, d.destination), weight=d.weight or 0
            )
            for d in route
        )
    return _network(TCP_PROXY, config)


def _http_manager(
    snapshot: MeshSnapshot, proxy: Workload, stat_prefix: str, route_name: str, port: int
) -> hcm.HttpConnectionManager:
    """The sidecar's outbound connection manager (same filters, same safe request handling), routing
    by this port's table. At the edge, the client's address is the peer's (Istio's gateway default),
    or that of the first of MeshConfig's `numTrustedProxies` in front of the gateway.
    RequestAuthentication and AuthorizationPolicy selecting the gateway run first, as in Istio."""
    manager = hcm.HttpConnectionManager()
    lds.outbound(snapshot, proxy).filter_chains[0].filters[0].typed_config.Unpack(manager)
    # The gateway's own chain, in the one order (http_filters.py): no passthrough to arbitrary hosts
    # from outside; extensions of the CLIENT side for this port, as Istio treats gateway listeners.
    del manager.http_filters[:]
    manager.http_filters.extend(http_filters.chain(snapshot, proxy, http_filters.GATEWAY, port))
    manager.stat_prefix = stat_prefix
    manager.rds.CopyFrom(hcm.Rds(config_source=ads(), route_config_name=route_name))
    manager.strip_any_host_port = True
    lds.trust_forwarded_for(manager, snapshot.http_policy.num_trusted_proxies)
    lds.distrust_client(manager)
    tracing.configure(manager, snapshot, proxy, tracing.GATEWAY)  # a hop of its own: a span per upstream request too
    return manager


def _network(name: str, config) -> lc.Filter:
    return lc.Filter(name=name, typed_config=pack(config))


# --- TLS termination -------------------------------------------------------------------------


def _downstream_tls(server: Server, proxy: Workload) -> base_pb2.TransportSocket:
    settings = server.tls
    assert settings is not None, "validation: an HTTPS or TLS server has tls"
    if settings.credential_name:
        context = tls_pb2.DownstreamTlsContext(common_tls_context=_secret_certificate(settings, proxy))
        context.require_client_certificate.value = settings.mode == "MUTUAL"
    elif settings.mode == "ISTIO_MUTUAL":
        context = tls_pb2.DownstreamTlsContext()
        tls.inbound_socket().typed_config.Unpack(context)  # the mesh certificate and trust bundle, over SDS
        context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names.extend(
            _san_matchers(settings.subject_alt_names)
        )
    else:
        context = tls_pb2.DownstreamTlsContext(common_tls_context=_own_certificate(settings))
        context.require_client_certificate.value = settings.mode == "MUTUAL"
    params = context.common_tls_context.tls_params
    params.tls_minimum_protocol_version = _TLS_VERSIONS[
        settings.min_protocol_version or "TLSV1_2"
    ]  # Istio's gateway default
    params.tls_maximum_protocol_version = _TLS_VERSIONS[settings.max_protocol_version or "TLS_AUTO"]
    params.cipher_suites.extend(settings.cipher_suites)
    del context.common_tls_context.alpn_protocols[:]
    context.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"] if server.speaks_http else [])
    return base_pb2.TransportSocket(name=tls.TLS_SOCKET, typed_config=pack(context))


def _own_certificate(settings: ServerTLSSettings) -> tls_pb2.CommonTlsContext:
    """SIMPLE, MUTUAL, OPTIONAL_MUTUAL: the files on the gateway's host, read by Envoy itself."""
    common = tls_pb2.CommonTlsContext()
    certificate = common.tls_certificates.add()
    certificate.certificate_chain.filename = settings.server_certificate
    certificate.private_key.filename = settings.private_key
    if settings.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        validation = common.validation_context
        validation.trusted_ca.filename = settings.ca_certificates
        if settings.ca_crl:
            validation.crl.filename = settings.ca_crl
        validation.match_typed_subject_alt_names.extend(_san_matchers(settings.subject_alt_names))
        validation.verify_certificate_spki.extend(settings.verify_certificate_spki)
        validation.verify_certificate_hash.extend(settings.verify_certificate_hash)
    return common


def _secret_certificate(settings: ServerTLSSettings, proxy: Workload) -> tls_pb2.CommonTlsContext:
    """credentialName: the certificate, key and client CAs of a `lattice secret`, over SDS on the
    gateway's ADS stream, so a new version reaches new connections without a listener change."""
    assert settings.credential_name is not None
    cert, ca = credentials.secret_names(*credentials.credential_key(settings.credential_name, proxy.namespace))
    common = tls_pb2.CommonTlsContext()
    common.tls_certificate_sds_secret_configs.add(name=cert, sds_config=ads())
    if settings.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        combined = common.combined_validation_context
        combined.validation_context_sds_secret_config.name = ca
        combined.validation_context_sds_secret_config.sds_config.CopyFrom(ads())
        checks = combined.default_validation_context
        checks.match_typed_subject_alt_names.extend(_san_matchers(settings.subject_alt_names))
        checks.verify_certificate_spki.extend(settings.verify_certificate_spki)
        checks.verify_certificate_hash.extend(settings.verify_certificate_hash)
    return common


def _credential_problem(snapshot: MeshSnapshot, proxy: Workload, server: Server) -> str | None:
    if server.tls is None or not server.tls.credential_name:
        return None
    key = credentials.credential_key(server.tls.credential_name, proxy.namespace)
    return credentials.missing(snapshot.tls_credentials, key, server.tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL"))


def secrets(snapshot: MeshSnapshot, proxy: Workload) -> list[secret_pb2.Secret]:
    """The secrets this gateway's own servers name, and only those: a proxy never gets another
    namespace's keys unless a Gateway API Gateway it serves was granted them."""
    wanted: dict[tuple[str, str], bool] = {}  # secret -> whether a server checks clients with its CA
    for group in servers_by_port(snapshot, proxy).values():
        for b in group:
            if b.server.tls is not None and b.server.tls.credential_name:
                key = credentials.credential_key(b.server.tls.credential_name, proxy.namespace)
                wanted[key] = wanted.get(key, False) or b.server.tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL")
    out = []
    for key, checks_clients in sorted(wanted.items()):
        found = snapshot.tls_credentials.get(key)
        if found is None:
            continue
        cert_name, ca_name = credentials.secret_names(*key)
        certificate = secret_pb2.Secret(name=cert_name)
        certificate.tls_certificate.certificate_chain.inline_bytes = found.cert_pem
        certificate.tls_certificate.private_key.inline_bytes = found.key_pem
        out.append(certificate)
        if found.ca_pem and checks_clients:
            roots = secret_pb2.Secret(name=ca_name)
            roots.validation_context.trusted_ca.inline_bytes = found.ca_pem
            out.append(roots)
    return out


def _san_matchers(sans: list[str]) -> list[common_pb2.SubjectAltNameMatcher]:
    # Istio compares a subjectAltNames entry with SANs of any type; Envoy needs one matcher per type.
    return [
        common_pb2.SubjectAltNameMatcher(san_type=t, matcher=string_pb2.StringMatcher(exact=san))
        for san in sans
        for t in _SAN_TYPES
    ]


# --- route tables ----------------------------------------------------------------------------


def _route_table(
    snapshot: MeshSnapshot, proxy: Workload, name: str, group: list[BoundServer]
) -> route_pb2.RouteConfiguration:
    """Virtual hosts for every host a server and a bound VirtualService share; VirtualServices
    claiming one host have their rules merged, oldest first (as Istio merges them on gateways)."""
    claims: dict[str, tuple[BoundServer, list[Resource]]] = {}
    for b in group:
        redirect_hosts = [split_host(h, b.gateway.namespace)[1] for h in b.server.hosts] if _redirects(b.server) else []
        for host in redirect_hosts:
            claims.setdefault(host, (b, []))
        for vs in _bound_virtual_services(snapshot, b):
            for host in _shared_hosts(snapshot, b, vs):
                owner, bound = claims.setdefault(host, (b, []))
                if owner is b and vs not in bound:
                    bound.append(vs)
    hosts = [_virtual_host(snapshot, proxy, host, b, bound) for host, (b, bound) in sorted(claims.items())]
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=hosts)


def _redirects(server: Server) -> bool:
    return server.tls is not None and server.tls.https_redirect


def _virtual_host(
    snapshot: MeshSnapshot, proxy: Workload, host: str, b: BoundServer, bound: list[Resource]
) -> rc.VirtualHost:
    table = [
        r
        for vs in bound
        for r in routes.for_virtual_service(snapshot, vs, None, proxy, gateway=b.ref, port=b.server.port.number)
    ]
    mesh = {s.hostname for s in snapshot.services if s.source == "registry"}
    for r in table:
        _say_who_called(r, mesh)
    out = rc.VirtualHost(
        name=f"{host}:{b.server.port.number}",
        domains=[host],
        routes=[*rds.refusals(), *table] if host == "*" else table,
    )
    if _redirects(b.server):
        out.require_tls = rc.VirtualHost.ALL  # Envoy answers 301 to https:// before any route
    return out


def _say_who_called(route: rc.Route, mesh: set[str]) -> None:
    """A route to mesh services only says the gateway's workload called (as sidecars' routes do),
    so the destination reports `source_workload` as the gateway, not "unknown". Never on a route
    that may leave the mesh: the header would go to an outside host."""
    action = route.route
    clusters = [w.name for w in action.weighted_clusters.clusters] or [action.cluster]
    hosts = [names.parse_cluster(c).get("host") for c in clusters if c]
    if route.HasField("route") and hosts and all(h in mesh for h in hosts):
        telemetry.add_peer_header(route.request_headers_to_add)


def _bound_virtual_services(snapshot: MeshSnapshot, b: BoundServer) -> list[Resource]:
    """VirtualServices naming this server's Gateway, visible from its namespace, oldest first."""
    return [
        vs
        for vs in snapshot.edge_virtual_services
        if b.ref in {_gateway_ref(g, vs.namespace) for g in vs.spec.gateways}
        and vs.spec.exported_to(vs.namespace, b.gateway.namespace)
    ]


def _gateway_ref(name: str, namespace: str) -> str:
    """A VirtualService's `gateways` entry as namespace/name: a bare name is in the VirtualService's namespace."""
    return name if "/" in name else f"{namespace}/{name}"


def _server_hosts(b: BoundServer, vs: Resource) -> list[str]:
    """The server's hosts that `vs` may bind, given each host's namespace part."""
    out = []
    for h in b.server.hosts:
        ns, host = split_host(h, b.gateway.namespace)
        if ns in ("*", vs.namespace):
            out.append(host)
    return out


def _shared_hosts(snapshot: MeshSnapshot, b: BoundServer, vs: Resource) -> list[str]:
    server_hosts = _server_hosts(b, vs)
    # A Gateway API Gateway's routes, converted per host (mesh/k8s_gateway.py), already hold, after
    # their own, the rules of the wildcard hosts covering them; a wildcard host's rules never narrow
    # to a more specific listener's host, whose own routes come first (the most specific wins).
    converted = any(g.endswith(k8s_gateway.SUFFIX) for g in vs.spec.gateways)
    found: list[str] = []
    for h in vs.spec.hosts:
        host = h.lower() if "." in h or h.startswith("*") else fqdn(h, vs.namespace, snapshot.domain)
        shared = (_intersect(host, s) for s in server_hosts)
        found.extend(x for x in shared if x and x not in found and (not converted or x == host))
    return found


def _intersect(a: str, b: str) -> str | None:
    """The more specific of two host patterns if one covers the other ('*', '*.example.com'), else None."""
    if _covers(a, b):
        return b
    if _covers(b, a):
        return a
    return None


def _covers(pattern: str, host: str) -> bool:
    return pattern == "*" or pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:]))
