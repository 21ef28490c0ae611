"""The Gateway API's TLSRoute and TCPRoute (`gateway.networking.k8s.io/v1alpha2`), attached to a
Gateway's TLS (Passthrough) or TCP listener: SNI routing and plain TCP forwarding at the edge.

`mesh/k8s_gateway.py` turns them into the gateway-bound VirtualService `tls` and `tcp` routes the
gateway translator serves. Parents must be Gateways (mesh TCP routing is VirtualService `tcp`);
backends are Services with a port; `weight` splits connections. One rule per route (without
matches, a second rule could never be chosen).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from lattice.api.gateway_api import BackendObjectReference, GatewayApiSpec, ParentReference, _check_hostnames


class L4BackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)


class L4RouteRule(GatewayApiSpec):
    name: str | None = None
    backend_refs: list[L4BackendRef] = Field(min_length=1, max_length=16)


def _gateway_parents(v: list[ParentReference]) -> list[ParentReference]:
    if any(p.is_service for p in v):
        raise ValueError("a TLSRoute or TCPRoute attaches to a Gateway; for mesh TCP routing use VirtualService tcp")
    return v


class TLSRouteSpec(GatewayApiSpec):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)

    _hostnames = field_validator("hostnames")(_check_hostnames)
    _parents = field_validator("parent_refs")(_gateway_parents)


class TCPRouteSpec(GatewayApiSpec):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)

    _parents = field_validator("parent_refs")(_gateway_parents)
