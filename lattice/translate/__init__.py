"""The translator: pure, sans-IO. `(MeshSnapshot, Workload) -> Resources`.

Parts, one per xDS type plus shared pieces:
- `names`     — cluster/listener/route names (Istio's `outbound|9080|v1|reviews.default.svc.cluster.local`).
- `protos`    — small constructors for the Envoy messages we use (durations, config sources, Any).
- `cds`, `eds`, `lds`, `rds` — clusters, endpoints, listeners, route tables.
- `http_filters` — the one ordered list of HTTP filters (phases) for sidecars and gateways alike.
- `tls`       — mutual TLS between sidecars (SDS secret names, auto mTLS, DestinationRule `tls`).
- `routes`    — one VirtualService HTTP rule into Envoy routes (matches, splits, faults, retries).
- `policy`    — DestinationRule traffic policy for a cluster (precedence; load balancing, pools, outliers, locality).
- `ratelimit` — RateLimitPolicy limits as the inbound local rate limit filter.
- `silence`   — bounds on silent connections on every listener (handshake / first bytes, idle).
- `proxy_auth` — the outbound listener's credential in proxy mode (407 without it; the secret stays with the agent).
- `jwt`       — RequestAuthentication as the inbound jwt_authn filter (Istio's layout).
- `authz`     — AuthorizationPolicy as inbound RBAC filters (`rbac_configs`: the one compiled form).
- `ext_authz` — CUSTOM policies: ext_authz to the mesh config's extension provider, and its cluster.
- `tracing`   — the tracer on every connection manager (embedded collector, OpenTelemetry, Zipkin), and an external
collector's cluster.
- `telemetry` — access logs on every connection manager (to the agent for metrics; files), and who is at each end.
- `extensions` — TrafficExtensions and WasmPlugins: Wasm and Lua filters whose config is discovered (ECDS).
- `resources` — `Resources`: the output, sorted by name, type by type; `translate_type`, one type of it.

Rules: no awaits, no clock, no globals, no IO; the same input always yields byte-identical output.
Every function takes what it needs and returns new messages.
"""

from typing import Any

from lattice.translate.agent_names import CERT_SECRET, ROOT_SECRET, SDS_CLUSTER
from lattice.translate.type_urls import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET, TYPE_ORDER


def __getattr__(name: str) -> Any:
    """`translate` and `Resources` load the whole translator when first asked for: a sidecar that
    only names a type URL or a secret starts without it."""
    if name in ("translate", "Resources"):
        from lattice.translate import resources

        return getattr(resources, name)
    raise AttributeError(f"module 'lattice.translate' has no attribute {name!r}")


__all__ = [
    "CERT_SECRET",
    "CLUSTER",
    "ENDPOINT",
    "EXTENSION_CONFIG",
    "LISTENER",
    "ROOT_SECRET",
    "ROUTE",
    "SDS_CLUSTER",
    "SECRET",
    "TYPE_ORDER",
    "Resources",
    "translate",
]
