"""Istio `DestinationRule`: subsets and the traffic policy applied to a destination's connections.

Field names are Istio's; anything Lattice does not implement is refused at apply time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.networking import IstioSpec, PortSelector


class ClientTLSSettings(IstioSpec):
    """How a sidecar originates TLS to a destination. Certificate fields are file paths on the client's host."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None

    @field_validator("credential_name")
    @classmethod
    def _no_secrets(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "credentialName names a Kubernetes secret, which Lattice does not read in universal mode; "
                "give clientCertificate, privateKey and caCertificates file paths"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClientTLSSettings:
        problems = self._mode_problems()
        if self.insecure_skip_verify:
            checks = [f for f in ("ca_certificates", "subject_alt_names") if getattr(self, f)]
            if checks:
                problems.append(f"insecureSkipVerify turns off the server-certificate check that {_names(checks)} configure; set one or the other")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _mode_problems(self) -> list[str]:
        if self.mode == "MUTUAL":
            missing = [f for f in ("client_certificate", "private_key") if not getattr(self, f)]
            return [f"MUTUAL presents a client certificate: set {_names(missing)}"] if missing else []
        if self.mode == "SIMPLE":
            given = self._given("client_certificate", "private_key")
            return [f"SIMPLE presents no client certificate, so {_names(given)} would be unused; use MUTUAL to send one"] if given else []
        own_certs = ("client_certificate", "private_key", "ca_certificates", "credential_name", "ca_crl")
        if self.mode == "ISTIO_MUTUAL":
            given = self._given(*own_certs)
            return [f"ISTIO_MUTUAL uses the mesh's own certificates, issued by Lattice; remove {_names(given)} (or use MUTUAL to present your own)"] if given else []
        given = self._given(*own_certs, "subject_alt_names", "sni", "insecure_skip_verify")
        return [f"DISABLE sends plaintext, so {_names(given)} would be unused; remove them"] if given else []

    def _given(self, *fields: str) -> list[str]:
        return [f for f in fields if getattr(self, f) not in (None, "", [])]


def _names(fields: list[str]) -> str:
    return ", ".join(to_camel(f) for f in fields)


class PortTrafficPolicy(IstioSpec):
    port: PortSelector
    tls: ClientTLSSettings | None = None


class TrafficPolicy(IstioSpec):
    # Only TLS origination so far; loadBalancer, connectionPool, outlierDetection… are refused by name.
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)

    @field_validator("port_level_settings")
    @classmethod
    def _unique_ports(cls, v: list[PortTrafficPolicy]) -> list[PortTrafficPolicy]:
        ports = [p.port.number for p in v]
        dupes = sorted({n for n in ports if ports.count(n) > 1})
        if dupes:
            raise ValueError(f"each port may appear once; repeated: {', '.join(map(str, dupes))}")
        return v


class Subset(IstioSpec):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(IstioSpec):
    host: str = Field(min_length=1)
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)

    @field_validator("subsets")
    @classmethod
    def _unique(cls, v: list[Subset]) -> list[Subset]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"subset names must be unique; repeated: {', '.join(dupes)}")
        return v
