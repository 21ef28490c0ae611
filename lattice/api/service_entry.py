"""Istio `ServiceEntry` and `WorkloadEntry`: services and endpoints the registry does not know.

A ServiceEntry adds hosts to the mesh (an external API, a VM, a database); a WorkloadEntry is one
endpoint without a sidecar that a ServiceEntry's `workloadSelector` picks up by its labels. Field
names are Istio's; checks follow Istio's own validation, and what Lattice cannot carry out (CIDR
ranges, unix sockets, UDP) is refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from lattice.api.meta import DNS1123_LABEL, DNS1123_SUBDOMAIN
from lattice.api.networking import IstioSpec

# Istio's protocol names (matched without regard to case) and the name Lattice's services use.
PROTOCOLS = {
    "HTTP": "http",
    "HTTP2": "http2",
    "GRPC": "grpc",
    "GRPC-WEB": "grpc-web",
    "HTTPS": "https",
    "TLS": "tls",
    "TCP": "tcp",
    "MONGO": "mongo",
    "MYSQL": "mysql",
    "REDIS": "redis",
}
_REFUSED_PROTOCOLS = {
    "UDP": "Lattice's sidecars proxy TCP and HTTP only, not UDP",
    "HTTP_PROXY": "Lattice's outbound listener is already the HTTP proxy; declare the upstream's own protocol (HTTP)",
}
_HTTP_OR_TLS = {"http", "http2", "grpc", "grpc-web", "https", "tls"}
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_host_name(value: str) -> bool:
    return len(value) <= 253 and DNS1123_SUBDOMAIN.match(value.lower()) is not None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not a Kubernetes label name")
        if "*" in value:
            raise ValueError(f"label {key}: wildcards are not supported in label values")
    return labels


class ServicePort(IstioSpec):
    number: int = Field(ge=1, le=65535)
    protocol: str = "HTTP"  # Istio sniffs an absent protocol; Lattice's outbound proxy speaks HTTP
    name: str
    target_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        upper = v.upper()
        if upper in _REFUSED_PROTOCOLS:
            raise ValueError(f"protocol {v} is not supported: {_REFUSED_PROTOCOLS[upper]}")
        if upper not in PROTOCOLS:
            raise ValueError(f"unknown protocol {v!r}; use one of {', '.join(PROTOCOLS)}")
        return upper

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError(f"port name {v!r} must be a DNS label: lowercase letters, digits and '-'")
        return v

    @property
    def lattice_protocol(self) -> str:
        return PROTOCOLS[self.protocol]


class WorkloadEntrySpec(IstioSpec):
    """One endpoint: inline in a ServiceEntry's `endpoints`, or a WorkloadEntry resource."""

    address: str = Field(min_length=1)
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0, le=4294967295)
    service_account: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v.startswith("unix://"):
            raise ValueError(
                "unix domain socket endpoints are not supported: Lattice's sidecars reach endpoints over TCP"
            )
        if "*" in v:
            raise ValueError(f"address {v!r} must not contain a wildcard")
        if not is_ip(v) and not _is_host_name(v):
            raise ValueError(f"address {v!r} is neither an IP address nor a host name")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: dict[str, int]) -> dict[str, int]:
        for name, number in v.items():
            if not DNS1123_LABEL.match(name):
                raise ValueError(f"port name {name!r} must be a DNS label naming a ServiceEntry port")
            if not 1 <= number <= 65535:
                raise ValueError(f"port {name}: {number} is not between 1 and 65535")
        return v

    _labels = field_validator("labels")(_check_labels)

    @field_validator("locality")
    @classmethod
    def _locality(cls, v: str | None) -> str | None:
        if v is not None and (len(v.split("/")) > 3 or "" in v.split("/")):
            raise ValueError(f"locality {v!r} must be region, region/zone or region/zone/subzone")
        return v

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, v: str | None) -> str | None:
        if v is not None and not DNS1123_SUBDOMAIN.match(v):
            raise ValueError(f"serviceAccount {v!r} must be lowercase letters, digits, '-' and '.'")
        return v


class WorkloadSelector(IstioSpec):
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(_check_labels)


class ServiceEntrySpec(IstioSpec):
    # Field order matters: later validators read earlier fields (pydantic validates in order).
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = Field(default_factory=list)
    ports: list[ServicePort] = Field(min_length=1)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    endpoints: list[WorkloadEntrySpec] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = Field(default="NONE", validate_default=True)
    export_to: list[str] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for i, host in enumerate(v):
            if host == "*":
                raise ValueError("'*' would claim every host; name the hosts, or use a wildcard such as *.example.com")
            bare = host[2:] if host.startswith("*.") else host
            if not is_ip(host) and (not _is_host_name(bare) or "*" in bare):
                raise ValueError(
                    f"hosts[{i}] {host!r} is not a host name (a wildcard may only lead, as in *.example.com)"
                )
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for i, address in enumerate(v):
            if "/" in address:
                raise ValueError(
                    f"addresses[{i}] {address!r}: CIDR ranges are not supported; Lattice's outbound proxy routes "
                    "by the "
                    "requested host, and a range is not one; list the IP addresses instead"
                )
            if not is_ip(address):
                raise ValueError(f"addresses[{i}] {address!r} is not an IP address")
        return v

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, v: list[ServicePort]) -> list[ServicePort]:
        for attr in ("number", "name"):
            seen = [getattr(p, attr) for p in v]
            dupes = sorted({str(x) for x in seen if seen.count(x) > 1})
            if dupes:
                raise ValueError(f"each port {attr} may appear once; repeated: {', '.join(dupes)}")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoint_ports(cls, v: list[WorkloadEntrySpec], info: ValidationInfo) -> list[WorkloadEntrySpec]:
        names = {p.name for p in info.data.get("ports", ())}
        for i, endpoint in enumerate(v):
            unknown = sorted(set(endpoint.ports) - names)
            if unknown and names:
                raise ValueError(f"[{i}].ports names {', '.join(unknown)}, which spec.ports does not define")
        return v

    @field_validator("workload_selector")
    @classmethod
    def _selector(cls, v: WorkloadSelector | None, info: ValidationInfo) -> WorkloadSelector | None:
        if v is not None and info.data.get("endpoints"):
            raise ValueError("set workloadSelector or endpoints, not both")
        return v

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: str, info: ValidationInfo) -> str:
        problems = _resolution_problems(v, info.data)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("export_to")
    @classmethod
    def _export(cls, v: list[str]) -> list[str]:
        for ns in v:
            if ns not in ("*", ".", "~") and not DNS1123_LABEL.match(ns):
                raise ValueError(f"{ns!r} is not '*', '.', '~' or a namespace name")
        for alone in ("*", "~"):
            if alone in v and len(v) > 1:
                raise ValueError(f"{alone!r} must be the only value")
        if len(set(v)) != len(v):
            raise ValueError("each value may appear once")
        return v


def _resolution_problems(resolution: str, data: dict) -> list[str]:
    hosts, ports, endpoints = data.get("hosts") or [], data.get("ports") or [], data.get("endpoints") or []
    problems = []
    if resolution == "NONE":
        if endpoints or data.get("workload_selector") is not None:
            problems.append(
                "NONE forwards to the host the client asked for, so endpoints and workloadSelector would be "
                "unused; use STATIC or DNS"
            )
        if any(p.target_port for p in ports):
            problems.append(
                "NONE forwards to the port the client asked for, so targetPort would be unused; use STATIC or DNS"
            )
    if resolution == "STATIC":
        named = [f"endpoints[{i}] {e.address!r}" for i, e in enumerate(endpoints) if not is_ip(e.address)]
        if named:
            problems.append(f"STATIC endpoints are IP addresses; {', '.join(named)} is a host name (use DNS)")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints and data.get("workload_selector") is None:
        wild = [h for h in hosts if h.startswith("*")]
        if wild:
            problems.append(
                f"{resolution} without endpoints resolves the hosts themselves; {', '.join(wild)} cannot be resolved"
            )
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        problems.append("DNS_ROUND_ROBIN connects to one name at a time; give at most one endpoint (or use DNS)")
    if resolution != "NONE" and len(hosts) > 1 and any(p.lattice_protocol not in _HTTP_OR_TLS for p in ports):
        problems.append(
            "several hosts with a TCP port: nothing in plain TCP says which host a connection is for; use NONE or "
            "one host per ServiceEntry"
        )
    return problems


def exported_to(export_to: list[str] | tuple[str, ...], own_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: empty or `*` everywhere, `.` its own namespace, `~` nowhere, else the names listed."""
    if not export_to or "*" in export_to:
        return True
    return namespace in export_to or ("." in export_to and namespace == own_namespace)
