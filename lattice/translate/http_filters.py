"""The HTTP filters of every connection manager Lattice generates, in one explicit, ordered list.

`PHASES` is the order requests meet the filters in, for sidecars and gateways alike. Each phase
names the places it runs (`INBOUND`: a sidecar's service port; `OUTBOUND`: its outbound proxy
listener and `--upstream` ports; `GATEWAY`: a `lattice gateway`'s servers) and builds its filters
for one proxy (none: the phase has nothing to do there). `chain(snapshot, proxy, place, port)` is
the filters of every phase for that place, in list order; the router is always last.

Extensions (TrafficExtension, WasmPlugin: translate/extensions.py) are phases of the list too,
one per Istio phase (AUTHN, AUTHZ, STATS, and those of no phase), in front of the mesh's own
filters of that phase as Istio places them: on the SERVER side inbound, the CLIENT side outbound
and at a gateway, for the port the connection manager serves.

Why this order:
- the outbound listener's credential first (proxy mode): a local user without it meets no other
  filter (translate/proxy_auth.py);
- the path policy next: a path whose meaning differs between servers is refused (400) before
  anything reads it (translate/paths.py);
- the caller's workload (for metrics) leaves the headers before anything else reads them;
- authentication (JWT) before authorization, which reads who the caller is;
- authorization before rate limits: a request that is refused spends no one's tokens;
- CORS before faults (a preflight is answered before any fault or route), as Istio orders them;
- the dynamic forward proxy (passthrough to hosts outside the mesh) only where the app's own
  requests leave, never at the edge.
A new filter (a policy, an extension) is a new phase at its place in this list; nothing else
builds a filter chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.extensions import CLIENT, SERVER, http_at
from lattice.translate import authz, extensions, jwt, paths, proxy_auth, ratelimit, telemetry
from lattice.translate.cds import dns_cache
from lattice.translate.protos import pack

INBOUND, OUTBOUND, GATEWAY = "inbound", "outbound", "gateway"
FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"
DYNAMIC_FORWARD_PROXY = "envoy.filters.http.dynamic_forward_proxy"
ROUTER = "envoy.filters.http.router"

Build = Callable[[MeshSnapshot, Workload, str, "int | None"], list[hcm.HttpFilter]]


@dataclass(frozen=True)
class Phase:
    name: str
    places: frozenset[str]
    build: Build  # (snapshot, proxy, place, port) -> the phase's filters there


def _extensions(phase: str) -> Build:
    """The extensions of Istio phase `phase` selecting this proxy, for the side and port."""

    def build(snapshot: MeshSnapshot, proxy: Workload, place: str, port: int | None) -> list[hcm.HttpFilter]:
        side = SERVER if place == INBOUND else CLIENT
        return extensions.http_filters(
            http_at(snapshot.extensions_for(proxy), side, port, phase), snapshot.wasm_modules
        )

    return build


def _mesh(make: Callable[[MeshSnapshot, Workload], list[hcm.HttpFilter]]) -> Build:
    """A mesh filter that depends on the proxy alone, not on the place or port."""
    return lambda snapshot, proxy, place, port: make(snapshot, proxy)


def _filter(name: str, config) -> hcm.HttpFilter:
    return hcm.HttpFilter(name=name, typed_config=pack(config))


def _peer_metadata(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return telemetry.inbound_filters()


def _cors(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return [_filter(CORS, cors_pb2.Cors())]  # per-route policies (VirtualService corsPolicy) configure it


def _fault(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return [_filter(FAULT, fault_pb2.HTTPFault())]  # per-route faults (VirtualService fault) configure it


def _path_policy(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return paths.refusal_filters(snapshot.http_policy.path_normalization)


def _dynamic_forward_proxy(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return [_filter(DYNAMIC_FORWARD_PROXY, dfp.FilterConfig(dns_cache_config=dns_cache()))]


def _router(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    return [_filter(ROUTER, router_pb2.Router())]


_EVERYWHERE = frozenset({INBOUND, OUTBOUND, GATEWAY})
_EDGE = frozenset({INBOUND, GATEWAY})  # where a request from another machine arrives
PHASES: tuple[Phase, ...] = (
    Phase(
        "proxy-credential",
        frozenset({OUTBOUND}),
        lambda snapshot, proxy, place, port: proxy_auth.http_filters(proxy, port),
    ),
    Phase("path-policy", _EVERYWHERE, _mesh(_path_policy)),
    Phase("peer-metadata", frozenset({INBOUND}), _mesh(_peer_metadata)),
    Phase("AUTHN extensions", _EVERYWHERE, _extensions("AUTHN")),
    Phase("authentication", _EDGE, _mesh(jwt.inbound_filters)),
    Phase("AUTHZ extensions", _EVERYWHERE, _extensions("AUTHZ")),
    Phase("authorization", _EDGE, _mesh(authz.http_filters)),
    Phase("rate-limit", frozenset({INBOUND}), _mesh(ratelimit.inbound_filters)),
    Phase("cors", frozenset({OUTBOUND, GATEWAY}), _mesh(_cors)),
    Phase("fault", frozenset({OUTBOUND, GATEWAY}), _mesh(_fault)),
    Phase("STATS extensions", _EVERYWHERE, _extensions("STATS")),
    Phase("extensions of no phase", _EVERYWHERE, _extensions("UNSPECIFIED")),
    Phase("dynamic-forward-proxy", frozenset({OUTBOUND}), _mesh(_dynamic_forward_proxy)),
    Phase("router", _EVERYWHERE, _mesh(_router)),
)


def chain(snapshot: MeshSnapshot, proxy: Workload, place: str, port: int | None = None) -> list[hcm.HttpFilter]:
    """The HTTP filters of a connection manager at `place` for `proxy` serving `port` (None: the
    shared outbound listener, every destination), in PHASES order."""
    if place not in _EVERYWHERE:
        raise ValueError(f"no such place for HTTP filters: {place!r}")
    return [f for phase in PHASES if place in phase.places for f in phase.build(snapshot, proxy, place, port)]
