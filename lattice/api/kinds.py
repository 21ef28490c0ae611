"""The kinds Lattice knows: API group, accepted versions, names the CLI accepts for each.

A kind is identified by its group and its name together: Istio's `Gateway`
(networking.istio.io) and the Gateway API's `Gateway` (gateway.networking.k8s.io) are two kinds.
Each has a `key`, the name it is stored and listed under: its Kind alone while no other group uses
that Kind, `Kind.group` for the one that came second (so resources stored before stay where they
were). A bare name the two share (`gateway`, `gateways`) means the first, Istio's, as it always
has; `gateways.gateway.networking.k8s.io`, `Gateway.gateway.networking.k8s.io` or the Gateway
API's short name `gtw` name the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from lattice.api import gateway_api_gateway as k8s_gateway
from lattice.api.authorization import AuthorizationPolicySpec
from lattice.api.destination_rule import DestinationRuleSpec
from lattice.api.extensions import TrafficExtensionSpec, WasmPluginSpec
from lattice.api.gateway import GatewaySpec
from lattice.api.gateway_api import GRPCRouteSpec, HTTPRouteSpec
from lattice.api.networking import VirtualServiceSpec
from lattice.api.ratelimit import RateLimitPolicySpec
from lattice.api.request_authn import RequestAuthenticationSpec
from lattice.api.security import PeerAuthenticationSpec
from lattice.api.gateway_api_l4 import TCPRouteSpec, TLSRouteSpec
from lattice.api.sidecar import SidecarSpec
from lattice.api.service_entry import ServiceEntrySpec, WorkloadEntrySpec
from lattice.api.telemetry import TelemetrySpec


@dataclass(frozen=True)
class KindInfo:
    kind: str
    group: str
    versions: tuple[str, ...]
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    # Stored under `Kind.group`, because an older kind of another group already has the name `Kind`.
    qualified: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.group}" if self.qualified else self.kind

    def names(self) -> tuple[str, ...]:
        """Every name (lower case) the CLI and REST API accept for this kind."""
        bare = (self.kind.lower(), self.plural, *self.short_names)
        return (*bare, f"{self.plural}.{self.group}", f"{self.kind.lower()}.{self.group}")

    @property
    def preferred_api_version(self) -> str:
        return f"{self.group}/{self.versions[-1]}"

    def accepts(self, api_version: str) -> bool:
        group, _, version = api_version.rpartition("/")
        return group == self.group and version in self.versions


_ISTIO_VERSIONS = ("v1alpha3", "v1beta1", "v1")

KINDS: dict[str, KindInfo] = {
    k.key: k
    for k in (
        KindInfo(
            "VirtualService", "networking.istio.io", _ISTIO_VERSIONS, "virtualservices", ("vs",), VirtualServiceSpec
        ),
        KindInfo(
            "DestinationRule", "networking.istio.io", _ISTIO_VERSIONS, "destinationrules", ("dr",), DestinationRuleSpec
        ),
        KindInfo("Gateway", "networking.istio.io", _ISTIO_VERSIONS, "gateways", ("gw",), GatewaySpec),
        KindInfo("Sidecar", "networking.istio.io", _ISTIO_VERSIONS, "sidecars", (), SidecarSpec),
        KindInfo("ServiceEntry", "networking.istio.io", _ISTIO_VERSIONS, "serviceentries", ("se",), ServiceEntrySpec),
        KindInfo(
            "WorkloadEntry", "networking.istio.io", _ISTIO_VERSIONS, "workloadentries", ("we",), WorkloadEntrySpec
        ),
        KindInfo(
            "PeerAuthentication",
            "security.istio.io",
            ("v1beta1", "v1"),
            "peerauthentications",
            ("pa",),
            PeerAuthenticationSpec,
        ),
        KindInfo(
            "AuthorizationPolicy",
            "security.istio.io",
            ("v1beta1", "v1"),
            "authorizationpolicies",
            ("ap",),
            AuthorizationPolicySpec,
        ),
        KindInfo(
            "RequestAuthentication",
            "security.istio.io",
            ("v1beta1", "v1"),
            "requestauthentications",
            ("ra",),
            RequestAuthenticationSpec,
        ),
        KindInfo("Telemetry", "telemetry.istio.io", ("v1alpha1", "v1"), "telemetries", (), TelemetrySpec),
        KindInfo("HTTPRoute", "gateway.networking.k8s.io", ("v1beta1", "v1"), "httproutes", (), HTTPRouteSpec),
        KindInfo("GRPCRoute", "gateway.networking.k8s.io", ("v1alpha2", "v1"), "grpcroutes", (), GRPCRouteSpec),
        KindInfo("TLSRoute", "gateway.networking.k8s.io", ("v1alpha2", "v1alpha3"), "tlsroutes", (), TLSRouteSpec),
        KindInfo("TCPRoute", "gateway.networking.k8s.io", ("v1alpha2",), "tcproutes", (), TCPRouteSpec),
        KindInfo(
            "Gateway",
            k8s_gateway.GROUP,
            ("v1beta1", "v1"),
            "gateways",
            ("gtw",),
            k8s_gateway.GatewaySpec,
            qualified=True,
        ),
        KindInfo(
            "GatewayClass",
            k8s_gateway.GROUP,
            ("v1beta1", "v1"),
            "gatewayclasses",
            ("gc",),
            k8s_gateway.GatewayClassSpec,
        ),
        KindInfo(
            "ReferenceGrant",
            k8s_gateway.GROUP,
            ("v1alpha2", "v1beta1", "v1"),
            "referencegrants",
            ("refgrant",),
            k8s_gateway.ReferenceGrantSpec,
        ),
        KindInfo("RateLimitPolicy", "lattice.dev", ("v1",), "ratelimitpolicies", ("rlp",), RateLimitPolicySpec),
        KindInfo(
            "TrafficExtension", "extensions.istio.io", ("v1alpha1",), "trafficextensions", ("te",), TrafficExtensionSpec
        ),
        KindInfo("WasmPlugin", "extensions.istio.io", ("v1alpha1",), "wasmplugins", ("wp",), WasmPluginSpec),
    )
}


_BY_GROUP: dict[tuple[str, str], KindInfo] = {(k.group, k.kind): k for k in KINDS.values()}


class UnknownKindError(LookupError):
    """A resource type name that Lattice does not know."""


def kind_for(name: str) -> KindInfo:
    """The kind a user means by `name`: kind, plural, singular or short name, any case, optionally
    qualified by its group (`gateways.gateway.networking.k8s.io`). A bare name two groups share
    means the kind listed first (Istio's)."""
    wanted = name.lower()
    for info in KINDS.values():
        if wanted in info.names() or wanted == info.key.lower():
            return info
    known = ", ".join(sorted(_display(i) for i in KINDS.values()))
    raise UnknownKindError(f"unknown resource type {name!r}; known types: {known}")


def kind_of(api_version: str, kind: str) -> KindInfo | None:
    """The kind a document means by its `apiVersion` and `kind`, or None."""
    return _BY_GROUP.get((api_version.rpartition("/")[0], kind))


def kinds_named(kind: str) -> list[KindInfo]:
    """Every known kind called `kind`, whatever its group (for error messages)."""
    return [k for k in KINDS.values() if k.kind == kind]


def _display(info: KindInfo) -> str:
    return f"{info.plural}.{info.group}" if info.qualified else info.plural
