"""The kinds Lattice knows: API group, accepted versions, names the CLI accepts for each."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from lattice.api.authorization import AuthorizationPolicySpec
from lattice.api.destination_rule import DestinationRuleSpec
from lattice.api.extensions import TrafficExtensionSpec, WasmPluginSpec
from lattice.api.gateway import GatewaySpec
from lattice.api.gateway_api import GRPCRouteSpec, HTTPRouteSpec
from lattice.api.networking import VirtualServiceSpec
from lattice.api.ratelimit import RateLimitPolicySpec
from lattice.api.request_authn import RequestAuthenticationSpec
from lattice.api.security import PeerAuthenticationSpec
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

    @property
    def preferred_api_version(self) -> str:
        return f"{self.group}/{self.versions[-1]}"

    def accepts(self, api_version: str) -> bool:
        group, _, version = api_version.rpartition("/")
        return group == self.group and version in self.versions


_ISTIO_VERSIONS = ("v1alpha3", "v1beta1", "v1")

KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo(
            "VirtualService", "networking.istio.io", _ISTIO_VERSIONS, "virtualservices", ("vs",), VirtualServiceSpec
        ),
        KindInfo(
            "DestinationRule", "networking.istio.io", _ISTIO_VERSIONS, "destinationrules", ("dr",), DestinationRuleSpec
        ),
        KindInfo("Gateway", "networking.istio.io", _ISTIO_VERSIONS, "gateways", ("gw",), GatewaySpec),
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
        KindInfo("RateLimitPolicy", "lattice.dev", ("v1",), "ratelimitpolicies", ("rlp",), RateLimitPolicySpec),
        KindInfo(
            "TrafficExtension", "extensions.istio.io", ("v1alpha1",), "trafficextensions", ("te",), TrafficExtensionSpec
        ),
        KindInfo("WasmPlugin", "extensions.istio.io", ("v1alpha1",), "wasmplugins", ("wp",), WasmPluginSpec),
    )
}


class UnknownKindError(LookupError):
    """A resource type name that Lattice does not know."""


def kind_for(name: str) -> KindInfo:
    """The kind a user means by `name`: kind, plural, singular or short name, any case."""
    wanted = name.lower()
    for info in KINDS.values():
        if wanted in (info.kind.lower(), info.plural, *info.short_names):
            return info
    known = ", ".join(sorted(i.plural for i in KINDS.values()))
    raise UnknownKindError(f"unknown resource type {name!r}; known types: {known}")
