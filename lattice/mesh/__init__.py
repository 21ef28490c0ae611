"""One frozen, indexed snapshot of the mesh: config and registry at one instant.

Parts:
- `workload` — frozen `Workload`, `Service`, `Upstream`: the leaf every policy module selects by.
- `model`    — the frozen `MeshSnapshot` (indexes built once, lookups lock-free).
- `hosts`    — Kubernetes-style host names: short names resolved in a namespace, FQDNs, aliases.
- `rate_limits` — which RateLimitPolicies a workload enforces (workload > namespace > mesh).
- `request_authn` — which RequestAuthentications a workload enforces (all that match), JWKS problems.
- `authz`    — which AuthorizationPolicies a workload enforces (all that select it; root selectors mesh-wide).
- `gateway_api` — HTTPRoutes and GRPCRoutes as ordered VirtualService tables, and their precedence.
- `k8s_gateway` — Gateway API Gateways (and their routes) as Istio Gateways and gateway-bound
  VirtualServices, with their status.
- `telemetry` — what telemetry a workload reports (Telemetry resources over MeshConfig defaults);
  latency histogram buckets shared by sidecars and the control plane.
- `service_entry` — ServiceEntries and the WorkloadEntries they select, as services and endpoints.
- `sidecar_scope` — which Istio Sidecar applies to a proxy (selector > namespace > root namespace).
- `credentials` — TLS secrets gateways name (credentialName), where they resolve, what is missing.
- `reads`    — what a computation read of a snapshot and a proxy (`TracedSnapshot`), and which of
               those reads a new snapshot changed (`SnapshotReads`).

Rules: nothing here does IO or reads a clock; a snapshot never changes after it is built, so the
translator can cache on it and every proxy sees the same world.
"""

from typing import Any

from lattice.mesh.hosts import fqdn, host_aliases


def __getattr__(name: str) -> Any:
    """The snapshot's names load the model (and every policy module) when first asked for: a
    sidecar agent reading a telemetry rule or a protocol name starts without them."""
    if name in ("MeshSnapshot", "Service", "Workload"):
        from lattice.mesh import model

        return getattr(model, name)
    raise AttributeError(f"module 'lattice.mesh' has no attribute {name!r}")


__all__ = ["MeshSnapshot", "Service", "Workload", "fqdn", "host_aliases"]
