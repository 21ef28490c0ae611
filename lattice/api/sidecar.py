"""Istio's `Sidecar` (networking.istio.io): what one workload's proxy may call, and how it treats
hosts outside the registry.

Supported: `workloadSelector.labels`; `egress[].hosts` (`namespace/dnsName`, namespace `*`, `.`
or `~`, dnsName `*`, `*.suffix` or a name) on an egress listener without `port`, `bind` or
`captureMode`; `outboundTrafficPolicy.mode` ALLOW_ANY or REGISTRY_ONLY. Refused by name, with why:
`ingress` (a sidecar's inbound listener is the service port `lattice run --port` registers,
forwarded to `--app-port`), egress `port`/`bind`/`captureMode` (one outbound listener per proxy),
`outboundTrafficPolicy.egressProxy`, `inboundConnectionPool`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from lattice.api.networking import IstioSpec

_NAMESPACE = re.compile(r"^(\*|\.|~|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
_DNS = re.compile(r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$")


class SidecarSelector(IstioSpec):
    labels: dict[str, str] = Field(default_factory=dict)


class EgressListener(IstioSpec):
    hosts: list[str] = Field(min_length=1, max_length=256)
    port: dict | None = None
    bind: str | None = None
    capture_mode: str | None = None

    @field_validator("hosts")
    @classmethod
    def _namespaced(cls, v: list[str]) -> list[str]:
        for host in v:
            namespace, slash, name = host.partition("/")
            if not slash or not _NAMESPACE.match(namespace) or not _DNS.match(name):
                raise ValueError(
                    f"{host!r} is not namespace/dnsName (namespace: a name, '*', '.' or '~'; dnsName: a host, "
                    "'*' or '*.suffix'), e.g. ./*, istio-system/*, */reviews.default.svc.cluster.local"
                )
        return v

    @field_validator("port", "bind", "capture_mode")
    @classmethod
    def _one_listener(cls, v):
        if v is not None:
            raise ValueError(
                "egress port, bind and captureMode describe extra outbound listeners, which Lattice does not "
                "make (each proxy has one outbound listener); give hosts only"
            )
        return v


class OutboundTrafficPolicy(IstioSpec):
    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"
    egress_proxy: dict | None = None

    @field_validator("egress_proxy")
    @classmethod
    def _no_egress_proxy(cls, v):
        if v is not None:
            raise ValueError("egressProxy is not supported; route external hosts to an egress gateway instead")
        return v


class SidecarSpec(IstioSpec):
    workload_selector: SidecarSelector | None = None
    egress: list[EgressListener] = Field(default_factory=list, max_length=1)
    ingress: list[dict] = Field(default_factory=list)
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_connection_pool: dict | None = None

    @field_validator("ingress")
    @classmethod
    def _no_ingress(cls, v: list[dict]) -> list[dict]:
        if v:
            raise ValueError(
                "ingress listeners are not supported: a sidecar's inbound listener serves the port `lattice run "
                "--port` registers and forwards to the app's --app-port; set those instead"
            )
        return v

    @field_validator("inbound_connection_pool")
    @classmethod
    def _no_pool(cls, v):
        if v is not None:
            raise ValueError("inboundConnectionPool is not supported; use a DestinationRule's connectionPool")
        return v

    @property
    def match_labels(self) -> dict[str, str]:
        return self.workload_selector.labels if self.workload_selector else {}

    def allows(self, own_namespace: str, service_namespace: str, hostname: str) -> bool:
        """Whether egress.hosts lets the proxy see `hostname` of `service_namespace` (all, without egress)."""
        if not self.egress:
            return True
        return any(_matches(h, own_namespace, service_namespace, hostname) for h in self.egress[0].hosts)


def _matches(host: str, own_namespace: str, service_namespace: str, hostname: str) -> bool:
    namespace, _, name = host.partition("/")
    if namespace == "~" or (namespace == "." and service_namespace != own_namespace):
        return False
    if namespace not in ("*", ".") and namespace != service_namespace:
        return False
    if name == "*":
        return True
    if name.startswith("*."):
        return hostname.endswith(name[1:])
    return hostname == name
