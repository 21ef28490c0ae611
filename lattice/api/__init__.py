"""Resource schemas and validation: the mesh's configuration language.

Parts:
- `meta`       — the Kubernetes-shaped envelope (apiVersion, kind, metadata) every resource shares.
- `networking` — Istio's `networking.istio.io` schemas (VirtualService, DestinationRule with TLS origination).
- `service_entry` — Istio's ServiceEntry and WorkloadEntry.
- `security`   — Istio's `security.istio.io` schemas (PeerAuthentication).
- `request_authn` — Istio's RequestAuthentication (JWT rules; JWKS and URL checks).
- `authorization` — Istio's AuthorizationPolicy (rules, conditions, dry-run annotation).
- `telemetry`  — Istio's `telemetry.istio.io` Telemetry (metrics, access logs, tracing per workload).
- `telemetry_expr` — the expressions a Telemetry tag override may use: parsed at apply, evaluated by the agent.
- `otlp`       — OTLP trace messages (what Envoy exports and the control plane keeps), declared field for field.
- `mesh_config` — the MeshConfig file (`lattice server --mesh-config`): extensionProviders and telemetry defaults.
- `gateway_api` — Kubernetes Gateway API HTTPRoute and GRPCRoute, attached to Services (GAMMA) or Gateways.
- `gateway_api_gateway` — the Gateway API's Gateway, GatewayClass and ReferenceGrant.
- `gateway_api_l4` — the Gateway API's TLSRoute and TCPRoute (attached to Gateways' TLS and TCP listeners).
- `sidecar`    — Istio's Sidecar (egress hosts, outboundTrafficPolicy; ingress refused with why).
- `tls_secret` — a TLS secret's material checked (PEM, key matches certificate) and described without its key.
- `ratelimit`  — Lattice's `lattice.dev/v1` RateLimitPolicy (local token buckets).
- `kinds`      — the table of known kinds, keyed by group and kind: accepted versions, plural and short names.
- `documents`  — YAML/JSON documents in, validated `Resource`s out.
- `errors`     — `ValidationError`, which names the document and the path of each bad field.

Rules: this package imports nothing from the rest of Lattice. An invalid resource is rejected with
the path of the offending field and why; a field Lattice does not implement is rejected by name,
never silently ignored.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """The package's names load their modules when first asked for: a sidecar agent that uses one
    leaf of this package (otlp, the registration record) starts without every kind's schema and
    the YAML parser."""
    if name in ("Resource", "parse_documents", "validate_object"):
        from lattice.api import documents

        return getattr(documents, name)
    if name in ("FieldError", "ValidationError"):
        from lattice.api import errors

        return getattr(errors, name)
    if name in ("KINDS", "KindInfo", "UnknownKindError", "kind_for"):
        from lattice.api import kinds

        return getattr(kinds, name)
    raise AttributeError(f"module 'lattice.api' has no attribute {name!r}")


__all__ = [
    "KINDS",
    "FieldError",
    "KindInfo",
    "Resource",
    "UnknownKindError",
    "ValidationError",
    "kind_for",
    "parse_documents",
    "validate_object",
]
