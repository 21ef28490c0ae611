"""The frozen mesh snapshot the translator reads."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, TypeVar

from lattice.api import Resource
from lattice.api.mesh_config import ExtensionProvider
from lattice.api.networking import binds_mesh
from lattice.mesh.http_policy import HttpPolicy
from lattice.mesh import (
    authz,
    credentials,
    extensions,
    gateway_api,
    k8s_gateway,
    rate_limits,
    request_authn,
    sidecar_scope,
)
from lattice.mesh.absent import absent_services
from lattice.mesh.credentials import TlsCredential
from lattice.mesh.gateway_service import gateway_services
from lattice.mesh.hosts import fqdn
from lattice.mesh.peer_auth import mtls_mode
from lattice.mesh.service_entry import entry_registry, visible
from lattice.mesh.telemetry import MeshTelemetry
from lattice.mesh.workload import Service, Workload
from lattice.mesh.workload import Upstream as Upstream  # (where it lived before mesh/workload.py)

T = TypeVar("T")

# MeshSnapshot's field for each stored kind it holds: the pusher and the analyzer fill them alike.
SNAPSHOT_FIELDS = {
    "VirtualService": "virtual_services",
    "DestinationRule": "destination_rules",
    "PeerAuthentication": "peer_authentications",
    "AuthorizationPolicy": "authorization_policies",
    "RequestAuthentication": "request_authentications",
    "ServiceEntry": "service_entries",
    "WorkloadEntry": "workload_entries",
    "Gateway": "gateways",
    "RateLimitPolicy": "rate_limit_policies",
    "HTTPRoute": "http_routes",
    "GRPCRoute": "grpc_routes",
    "Telemetry": "telemetries",
    "TrafficExtension": "traffic_extensions",
    "WasmPlugin": "wasm_plugins",
    "Gateway.gateway.networking.k8s.io": "k8s_gateways",
    "GatewayClass": "gateway_classes",
    "ReferenceGrant": "reference_grants",
    "Sidecar": "sidecars",
    "TLSRoute": "tls_routes",
    "TCPRoute": "tcp_routes",
}


@dataclass(frozen=True)
class MeshSnapshot:
    """Config plus registry; indexes are derived once in __post_init__."""

    version: str
    workloads: tuple[Workload, ...] = ()
    virtual_services: tuple[Resource, ...] = ()
    destination_rules: tuple[Resource, ...] = ()
    peer_authentications: tuple[Resource, ...] = ()
    domain: str = "cluster.local"  # DNS suffix of service host names
    trust_domain: str = "cluster.local"  # SPIFFE trust domain of workload identities
    root_namespace: str = "istio-system"  # where mesh-wide policies live
    service_entries: tuple[Resource, ...] = ()
    workload_entries: tuple[Resource, ...] = ()
    outbound_traffic_policy: str = "ALLOW_ANY"  # Istio's MeshConfig: ALLOW_ANY or REGISTRY_ONLY
    gateways: tuple[Resource, ...] = ()  # Istio Gateways, oldest first; served by `kind: gateway` workloads
    h2_upgrade_policy: str = "DO_NOT_UPGRADE"  # Istio's MeshConfig default: HTTP/1.1 stays HTTP/1.1 between sidecars
    rate_limit_policies: tuple[Resource, ...] = ()  # lattice.dev RateLimitPolicies, oldest first
    authorization_policies: tuple[Resource, ...] = ()  # oldest first
    extension_providers: tuple[
        ExtensionProvider, ...
    ] = ()  # MeshConfig extensionProviders (`lattice server --mesh-config`)
    request_authentications: tuple[Resource, ...] = ()  # oldest first
    # JWKS text per RequestAuthentication jwksUri, as last fetched by the control plane, and why
    # the last fetch of a URI failed (mesh/request_authn.py; the translator stays free of IO).
    jwks: Mapping[str, str] = field(default_factory=dict)
    jwks_errors: Mapping[str, str] = field(default_factory=dict)
    http_routes: tuple[Resource, ...] = ()  # Gateway API routes attached to Services (mesh/gateway_api.py)
    grpc_routes: tuple[Resource, ...] = ()
    # Creation time per (kind, namespace, name): VirtualServices and Gateway API routes compete for a host by age.
    created: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    telemetries: tuple[Resource, ...] = ()  # Telemetry resources, oldest first (mesh/telemetry.py)
    traffic_extensions: tuple[Resource, ...] = ()  # TrafficExtensions and WasmPlugins (mesh/extensions.py)
    wasm_plugins: tuple[Resource, ...] = ()
    # Digest per Wasm module (url, pinned sha256) the control plane holds, and why one it does not
    # hold could not be fetched (server/modules.py; the translator stays free of IO).
    wasm_modules: Mapping[tuple[str, str], str] = field(default_factory=dict)
    wasm_module_errors: Mapping[tuple[str, str], str] = field(default_factory=dict)
    mesh_telemetry: MeshTelemetry = field(
        default_factory=MeshTelemetry
    )  # MeshConfig's telemetry part (`--mesh-config`)
    # MeshConfig's pathNormalization and numTrustedProxies (`--mesh-config`; mesh/http_policy.py).
    http_policy: HttpPolicy = field(default_factory=HttpPolicy)
    # Gateway API Gateways, GatewayClasses and ReferenceGrants, oldest first (mesh/k8s_gateway.py).
    k8s_gateways: tuple[Resource, ...] = ()
    gateway_classes: tuple[Resource, ...] = ()
    reference_grants: tuple[Resource, ...] = ()
    # (service, namespace, port, protocol) whose last workload left lately (registry.departed()).
    departed: tuple[tuple[str, str, int, str], ...] = ()
    # TLS secrets by (namespace, name), decrypted by the control plane (server/secrets.py) for the
    # gateways whose servers name them (mesh/credentials.py).
    tls_credentials: Mapping[tuple[str, str], TlsCredential] = field(default_factory=dict, repr=False)
    sidecars: tuple[Resource, ...] = ()  # Istio Sidecars, oldest first (mesh/sidecar_scope.py)
    tls_routes: tuple[Resource, ...] = ()  # Gateway API TLSRoutes and TCPRoutes (mesh/k8s_gateway.py)
    tcp_routes: tuple[Resource, ...] = ()
    services: tuple[Service, ...] = field(init=False)
    _endpoints: Mapping[str, tuple[Workload, ...]] = field(init=False, repr=False)
    _vs_by_host: Mapping[str, tuple[Resource, ...]] = field(init=False, repr=False)  # oldest first
    _dr_by_host: Mapping[str, Resource] = field(init=False, repr=False)
    _inbound_mtls: Mapping[str, str] = field(init=False, repr=False)
    _entry_hosts: frozenset[str] = field(init=False, repr=False)
    _entry_problems: tuple[str, ...] = field(init=False, repr=False)
    _route_tables: tuple[gateway_api.RouteTable, ...] = field(init=False, repr=False)
    _route_problems: tuple[str, ...] = field(init=False, repr=False)
    _extensions: tuple[extensions.Extension, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        endpoints: dict[str, list[Workload]] = defaultdict(list)
        services: dict[tuple[str, int], Service] = {}
        for w in sorted(self.workloads, key=lambda w: w.id):
            if w.kind == "gateway":  # serves Gateways at the edge; no inbound listener to send mesh traffic to
                continue
            host = fqdn(w.service, w.namespace, self.domain)
            endpoints[host].append(w)
            services.setdefault((host, w.port), Service(w.service, w.namespace, w.port, w.protocol, host))
        # Gateway proxies are services too (mesh/gateway_service.py), unless a workload has the name.
        edge, edge_endpoints = gateway_services(self.workloads, self.gateways, self.domain)
        edge_endpoints = {h: e for h, e in edge_endpoints.items() if h not in endpoints}
        services.update({(s.hostname, s.port): s for s in edge if s.hostname in edge_endpoints})
        entries = self._entries(set(endpoints) | set(edge_endpoints))
        services.update({(s.hostname, s.port): s for s in entries.services})
        object.__setattr__(self, "services", tuple(services[k] for k in sorted(services)))
        merged = {h: tuple(ws) for h, ws in endpoints.items()} | dict(entries.endpoints) | edge_endpoints
        object.__setattr__(self, "_endpoints", MappingProxyType(merged))
        # Sidecars apply only VirtualServices bound to the mesh (no gateways, or `mesh` named).
        mesh_vs = tuple(r for r in self.virtual_services if binds_mesh(r.spec.gateways))
        tables, problems = gateway_api.route_tables(self.http_routes + self.grpc_routes, self.created, self.domain)
        object.__setattr__(self, "_route_tables", tables)
        object.__setattr__(self, "_route_problems", problems)
        routing = gateway_api.by_precedence(mesh_vs, tables, self.created)
        object.__setattr__(self, "_vs_by_host", MappingProxyType(self._all_by_host(routing, "hosts")))
        object.__setattr__(self, "_dr_by_host", MappingProxyType(self._first_by_host(self.destination_rules, "host")))
        # Once per snapshot: every proxy's endpoints read each destination's mode.
        modes = {w.id: mtls_mode(self.peer_authentications, w, w.port, self.root_namespace) for w in self.workloads}
        object.__setattr__(self, "_inbound_mtls", MappingProxyType(modes))
        all_extensions = extensions.extensions(self.traffic_extensions, self.wasm_plugins, self.created)
        object.__setattr__(self, "_extensions", all_extensions)

    def _entries(self, taken: set[str]):
        entries = entry_registry(self.service_entries, self.workload_entries, taken)
        object.__setattr__(self, "_entry_hosts", frozenset(s.hostname for s in entries.services))
        object.__setattr__(self, "_entry_problems", entries.problems)
        return entries

    def resolve_host(self, host: str, namespace: str) -> str:
        """The service a host written in `namespace` means: a ServiceEntry host with a dot as written
        (Istio takes those literally), otherwise its FQDN (Istio expands a dotless name even then)."""
        literal = host.lower().rstrip(".")
        return literal if "." in literal and literal in self._entry_hosts else fqdn(host, namespace, self.domain)

    def visible_services(self, namespace: str) -> list[Service]:
        """The services a proxy in `namespace` may reach: all, less ServiceEntries not exported to it."""
        return [s for s in self.services if s.source == "registry" or visible(s, namespace)]

    def services_for(self, proxy: Workload) -> list[Service]:
        """The services `proxy` gets config for: those visible to its namespace, narrowed by the
        egress hosts of the Sidecar that applies to it (mesh/sidecar_scope.py)."""
        scope = sidecar_scope.sidecar_for(self.sidecars, proxy, self.root_namespace)
        visible_here = self.visible_services(proxy.namespace)
        if scope is None:
            return visible_here
        return [s for s in visible_here if scope.spec.allows(scope.namespace, s.namespace, s.hostname)]

    def outbound_policy_for(self, proxy: Workload) -> str:
        """ALLOW_ANY or REGISTRY_ONLY: the applying Sidecar's outboundTrafficPolicy, else the mesh's."""
        scope = sidecar_scope.sidecar_for(self.sidecars, proxy, self.root_namespace)
        if scope is not None and scope.spec.outbound_traffic_policy is not None:
            return scope.spec.outbound_traffic_policy.mode
        return self.outbound_traffic_policy

    def accepts_mesh_tls(self, endpoint) -> bool:
        """Auto mTLS: a workload whose PeerAuthentication accepts mTLS; a ServiceEntry endpoint
        marked for it (mesh/service_entry.py says when)."""
        mode = self._inbound_mtls.get(endpoint.id)
        return mode != "DISABLE" if mode is not None else endpoint.mesh_tls

    def _all_by_host(self, resources: tuple[Resource, ...], attr: str) -> dict[str, tuple[Resource, ...]]:
        # Oldest first, as callers pass them: the first one visible to a proxy wins (Istio's rule).
        index: dict[str, list[Resource]] = defaultdict(list)
        for r in resources:
            for h in r.spec.hosts:
                index[self.resolve_host(h, r.namespace)].append(r)
        return {h: tuple(rs) for h, rs in index.items()}

    def _first_by_host(self, resources: tuple[Resource, ...], attr: str) -> dict[str, Resource]:
        # Istio: when several resources claim one host, the oldest wins; callers pass them oldest first.
        index: dict[str, Resource] = {}
        for r in resources:
            hosts = getattr(r.spec, attr)
            for h in [hosts] if isinstance(hosts, str) else hosts:
                index.setdefault(self.resolve_host(h, r.namespace), r)
        return index

    def memo(self, key: tuple, build: Callable[[], T]) -> T:
        """A piece many proxies share (a service's clusters, a cluster's endpoints for callers
        alike), `key` naming everything it depends on. A snapshot holds no state, so it builds the
        piece every time; a caller translating many proxies passes a view that keeps pieces for
        the snapshot's life instead (`SharedPieces`; the pusher's, `mesh.reads.TracedSnapshot`)."""
        return build()

    @property
    def gateway_api(self) -> k8s_gateway.GatewayApiConfig:
        """The Gateway API's Gateways and the routes attached to them, as Istio Gateways and
        gateway-bound VirtualServices, with their status (mesh/k8s_gateway.py)."""
        return self.memo(
            ("gateway-api",),
            lambda: k8s_gateway.convert(
                self.gateway_classes,
                self.k8s_gateways,
                self.http_routes + self.grpc_routes,
                self.reference_grants,
                self.workloads,
                self.created,
                self.domain,
                frozenset(self.tls_credentials),
                self.tls_routes + self.tcp_routes,
            ),
        )

    @property
    def edge_gateways(self) -> tuple[Resource, ...]:
        """Every Gateway gateway proxies serve: Istio's, then those converted from the Gateway API."""
        return self.gateways + self.gateway_api.gateways

    @property
    def edge_virtual_services(self) -> tuple[Resource, ...]:
        """Every VirtualService that may bind to a gateway: stored ones, then converted routes."""
        return self.virtual_services + self.gateway_api.virtual_services

    def absent_services(self) -> tuple[Service, ...]:
        """Mesh names no workload serves now (mesh/absent.py): answered 503, never passed through."""
        return self.memo(
            ("absent-services",),
            lambda: absent_services(
                (s.hostname for s in self.services),
                self.departed,
                [*self._vs_by_host, *self._dr_by_host],
                self.domain,
            ),
        )

    def endpoints(self, hostname: str) -> tuple[Workload, ...]:
        return self._endpoints.get(hostname, ())

    def service_ports(self, hostname: str) -> list[int]:
        return [s.port for s in self.services if s.hostname == hostname]

    def virtual_service_for(self, hostname: str, namespace: str | None = None) -> Resource | None:
        """The VirtualService routing `hostname` for a proxy in `namespace` (all proxies when None):
        the oldest one exported to that namespace."""
        for r in self._vs_by_host.get(hostname, ()):
            if namespace is None or r.spec.exported_to(r.namespace, namespace):
                return r
        return None

    def destination_rule_for(self, hostname: str) -> Resource | None:
        return self._dr_by_host.get(hostname)

    def inbound_mtls(self, workload: Workload) -> str:
        """STRICT, PERMISSIVE or DISABLE for traffic arriving at `workload` on its service port."""
        return self._inbound_mtls[workload.id]

    def rate_limit_policies_for(self, workload: Workload) -> tuple[Resource, ...]:
        """The RateLimitPolicies `workload`'s sidecar enforces (precedence in `mesh.rate_limits`)."""
        return rate_limits.policies_for(self.rate_limit_policies, workload, self.root_namespace)

    def authorization_policies_for(self, workload: Workload) -> tuple[Resource, ...]:
        """Every AuthorizationPolicy `workload`'s sidecar enforces, oldest first (`mesh.authz`)."""
        return authz.policies_for(self.authorization_policies, workload, self.root_namespace)

    def request_authentications_for(self, workload: Workload) -> tuple[Resource, ...]:
        """Every RequestAuthentication `workload`'s sidecar enforces: all that match, combined
        (`mesh.request_authn`)."""
        return request_authn.policies_for(self.request_authentications, workload, self.root_namespace)

    def extensions_for(self, workload: Workload) -> tuple[extensions.Extension, ...]:
        """The TrafficExtensions and WasmPlugins `workload`'s proxy runs, in filter order (`mesh.extensions`)."""
        return extensions.for_proxy(self._extensions, workload, self.root_namespace)

    def identity(self, workload: Workload) -> str:
        return f"spiffe://{self.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}"

    def workload(self, proxy_id: str) -> Workload | None:
        return next((w for w in self.workloads if w.id == proxy_id), None)

    def conflicts(self) -> list[str]:
        """Resources that lost a host to an older one (shown by `lattice status`)."""
        out = []
        vs_winners = gateway_api.mesh_wide_winners(self._vs_by_host)
        for resources, index, attr in (
            (self.virtual_services, vs_winners, "hosts"),
            (self.destination_rules, self._dr_by_host, "host"),
        ):
            for r in resources:
                hosts = getattr(r.spec, attr)
                for h in [hosts] if isinstance(hosts, str) else hosts:
                    winner = index.get(self.resolve_host(h, r.namespace))
                    if winner is not None and winner is not r:
                        out.append(
                            f"{r.kind} {r.namespace}/{r.name}: host {h} is already claimed by {winner.kind} "
                            f"{winner.namespace}/{winner.name}; ignored for that host"
                        )
        out += gateway_api.table_conflicts(self._route_tables, vs_winners)
        out += request_authn.jwks_problems(self.request_authentications, self.jwks, self.jwks_errors)
        out += extensions.module_problems(self._extensions, self.wasm_modules, self.wasm_module_errors)
        out += credentials.gateway_problems(
            self.edge_gateways,
            self.workloads,
            self.tls_credentials,
            lambda proxy, gw: k8s_gateway.serves(proxy.labels, gw, proxy.namespace),
        )
        return out + list(self._entry_problems) + list(self._route_problems)


class SharedPieces:
    """A snapshot as the translator sees it when many proxies are translated from it: `memo`
    builds each piece once and hands the same object to every caller of its key. Owned by its
    caller, dropped with it; the snapshot itself stays as it was built. Callers must not mutate
    what `memo` returns."""

    __slots__ = ("_snapshot", "_pieces")

    def __init__(self, snapshot: MeshSnapshot) -> None:
        self._snapshot = snapshot
        self._pieces: dict = {}

    def __getattr__(self, name: str):
        return getattr(self._snapshot, name)

    def memo(self, key: tuple, build: Callable[[], T]) -> T:
        try:
            return self._pieces[key]
        except KeyError:
            value = self._pieces[key] = build()
            return value
