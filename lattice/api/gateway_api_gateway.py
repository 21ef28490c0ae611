"""Kubernetes Gateway API infrastructure kinds: `GatewayClass`, `Gateway` and `ReferenceGrant`.

Field names and defaults are `gateway.networking.k8s.io/v1`'s (ReferenceGrant's `v1beta1`).
- A `GatewayClass` names the controller that serves its Gateways; Lattice's is
  `lattice.dev/gateway-controller`, and a class naming another controller is stored but served by
  nobody (its Gateways say so in their status), as in Kubernetes.
- A `Gateway` lists listeners (port, protocol, hostname, allowed routes); `lattice gateway
  --gateway-class NAME` serves the Gateways of class NAME (`mesh/k8s_gateway.py` turns them into the
  servers the gateway translator already serves).
- A `ReferenceGrant` in a namespace lets routes of another namespace refer to its objects
  (Services as backends); without one such a reference is refused, as the spec says.

Listeners speak HTTP, or HTTPS terminated with the one certificate a `certificateRefs` entry names:
a secret kept by the control plane (`lattice secret create tls`), in the Gateway's namespace or, with
a ReferenceGrant, another. Refused by name, with why: TLS, TCP and UDP listeners (they need
TLSRoute and TCPRoute, not implemented: use an Istio Gateway for those), TLS `Passthrough`,
`options` and `frontendValidation`, `addresses` (the gateway's
address is where `lattice gateway` runs), `infrastructure` and a class's `parametersRef` (nothing
is deployed on a Gateway's behalf), `allowedRoutes.namespaces.from: Selector` (no Namespace objects
to carry labels).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lattice.api.gateway_api import GatewayApiSpec
from lattice.api.meta import DNS1123_LABEL

CONTROLLER_NAME = "lattice.dev/gateway-controller"
GROUP = "gateway.networking.k8s.io"
# Route kinds each listener protocol admits by default (the spec's "supportedKinds").
ROUTE_KINDS_BY_PROTOCOL = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
}
_LISTENER_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONTROLLER = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$"
)


class GatewayClassSpec(GatewayApiSpec):
    controller_name: str = Field(min_length=1, max_length=253)
    description: str | None = Field(default=None, max_length=64)
    parameters_ref: dict | None = None

    @field_validator("controller_name")
    @classmethod
    def _domain_prefixed(cls, v: str) -> str:
        if not _CONTROLLER.match(v):
            raise ValueError(f"{v!r} is not a domain-prefixed path such as {CONTROLLER_NAME!r}")
        return v

    @field_validator("parameters_ref")
    @classmethod
    def _no_parameters(cls, v: dict | None) -> dict | None:
        if v is not None:
            raise ValueError(
                "parametersRef is not supported: a Lattice gateway takes its settings from `lattice gateway` flags"
            )
        return v


class SecretObjectReference(GatewayApiSpec):
    group: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None


class ListenerTLSConfig(GatewayApiSpec):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list, max_length=64)
    options: dict[str, str] = Field(default_factory=dict)
    frontend_validation: dict | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ListenerTLSConfig:
        problems = []
        if len(self.certificate_refs) > 1:
            problems.append("certificateRefs: give exactly one (a secret made with `lattice secret create tls`)")
        for ref in self.certificate_refs:
            if (ref.group or "") not in ("", "core") or (ref.kind or "Secret") != "Secret":
                problems.append(f"certificateRefs: {ref.name} must be a Secret (group \"\"), not {ref.kind}")
        if self.options:
            problems.append("options are implementation-specific and Lattice defines none; remove them")
        if self.frontend_validation is not None:
            problems.append("frontendValidation (client certificates) is not supported; use an Istio Gateway MUTUAL")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RouteNamespaces(GatewayApiSpec):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: dict | None = None

    @model_validator(mode="after")
    def _no_selector(self) -> RouteNamespaces:
        if self.from_ == "Selector" or self.selector is not None:
            raise ValueError(
                "from: Selector is not supported: universal mode has no Namespace objects to carry labels; "
                "use Same or All"
            )
        return self


class RouteGroupKind(GatewayApiSpec):
    group: str | None = GROUP
    kind: str


class AllowedRoutes(GatewayApiSpec):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] = Field(default_factory=list, max_length=8)


class Listener(GatewayApiSpec):
    name: str = Field(min_length=1, max_length=253)
    hostname: str | None = Field(default=None, max_length=253)
    port: int = Field(ge=1, le=65535)
    protocol: str
    tls: ListenerTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _LISTENER_HOST.match(v):
            raise ValueError(f"{v!r} is not a host name (optionally starting with '*.')")
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in ROUTE_KINDS_BY_PROTOCOL:
            raise ValueError(
                f"protocol {v!r} is not served by Lattice's Gateway API gateways; use HTTP, HTTPS, TLS or TCP"
            )
        return v

    @model_validator(mode="after")
    def _tls_for_https(self) -> Listener:
        if self.protocol == "HTTPS" and (
            self.tls is None or self.tls.mode != "Terminate" or not self.tls.certificate_refs
        ):
            raise ValueError(
                "an HTTPS listener terminates TLS: tls.mode Terminate with certificateRefs naming its secret"
            )
        if self.protocol == "TLS" and (self.tls is None or self.tls.mode != "Passthrough" or self.tls.certificate_refs):
            raise ValueError(
                "a TLS listener passes TLS through to the TLSRoute's backends: tls.mode Passthrough, no "
                "certificateRefs (to terminate, use an HTTPS listener)"
            )
        if self.protocol in ("HTTP", "TCP") and self.tls is not None:
            raise ValueError(f"a {self.protocol} listener takes no tls")
        return self

    def route_kinds(self) -> tuple[str, ...]:
        """The route kinds that may attach: those named in allowedRoutes.kinds that the protocol
        supports, else every kind the protocol supports."""
        supported = ROUTE_KINDS_BY_PROTOCOL[self.protocol]
        if not self.allowed_routes.kinds:
            return supported
        return tuple(k.kind for k in self.allowed_routes.kinds if k.kind in supported and (k.group or GROUP) == GROUP)


class GatewaySpec(GatewayApiSpec):
    gateway_class_name: str = Field(min_length=1, max_length=253)
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    addresses: list[dict] = Field(default_factory=list)
    infrastructure: dict | None = None

    @field_validator("addresses")
    @classmethod
    def _no_addresses(cls, v: list[dict]) -> list[dict]:
        if v:
            raise ValueError("addresses is not supported: a Lattice gateway serves at the address it runs on")
        return v

    @field_validator("infrastructure")
    @classmethod
    def _no_infrastructure(cls, v: dict | None) -> dict | None:
        if v is not None:
            raise ValueError("infrastructure is not supported: Lattice deploys nothing for a Gateway")
        return v

    @field_validator("listeners")
    @classmethod
    def _distinct(cls, v: list[Listener]) -> list[Listener]:
        names, keys = set(), set()
        for listener in v:
            if listener.name in names:
                raise ValueError(f"listener name {listener.name!r} is used twice")
            key = (listener.port, listener.protocol, listener.hostname)
            if key in keys:
                raise ValueError(
                    f"two listeners on port {listener.port} share protocol {listener.protocol} and hostname "
                    f"{listener.hostname or '(any)'}"
                )
            names.add(listener.name)
            keys.add(key)
        return v


class ReferenceGrantFrom(GatewayApiSpec):
    group: str
    kind: str
    namespace: str

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError(f"{v!r} is not a namespace name")
        return v


class ReferenceGrantTo(GatewayApiSpec):
    group: str
    kind: str
    name: str | None = None


class ReferenceGrantSpec(GatewayApiSpec):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)

    def allows(
        self, from_group: str, from_kind: str, from_namespace: str, to_group: str, to_kind: str, name: str
    ) -> bool:
        """Whether this grant lets a `from_kind` in `from_namespace` refer to `to_kind` `name` here."""
        source = any(
            f.group == from_group and f.kind == from_kind and f.namespace == from_namespace for f in self.from_
        )
        target = any(
            t.group in (to_group, "core" if to_group == "" else to_group)
            and t.kind == to_kind
            and t.name in (None, name)
            for t in self.to
        )
        return source and target
