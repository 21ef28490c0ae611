"""Istio `Gateway`: the ports, protocols, hosts and TLS a gateway proxy serves at the mesh's edge.

Field names are Istio's. Certificates are file paths on the gateway's host, or `credentialName`: a
secret kept by the control plane (`lattice secret create tls`) and sent to the gateway over SDS. A
field Lattice does not implement is refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.meta import DNS1123_LABEL, DNS1123_SUBDOMAIN
from lattice.api.networking import IstioSpec

# Protocols a gateway server can speak, grouped by how the proxy handles them.
HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
PROTOCOLS = (*HTTP_PROTOCOLS, "HTTPS", "TCP", "TLS")
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
TERMINATING_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")
_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$")
_CIPHER = re.compile(r"^[A-Za-z0-9_\-\[\]| ]+$")


class GatewayPort(IstioSpec):
    number: int = Field(ge=1, le=65535)
    protocol: str
    name: str = Field(min_length=1)
    target_port: int | None = None

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        # Istio parses protocols case-insensitively.
        if v.upper() not in PROTOCOLS:
            raise ValueError(f"{v!r} is not a protocol Lattice gateways serve; use one of {', '.join(PROTOCOLS)}")
        return v.upper()

    @field_validator("target_port")
    @classmethod
    def _no_target_port(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError(
                "targetPort applies to ServiceEntry ports, not Gateway servers; the gateway proxy chooses "
                "its local port (`lattice gateway --listen PORT=LOCALPORT`)"
            )
        return v


class ServerTLSSettings(IstioSpec):
    https_redirect: bool = False
    mode: Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL", "AUTO_PASSTHROUGH"] | None = (
        None
    )
    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    credential_names: list[str] | None = None
    tls_certificates: list[dict] | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    verify_certificate_spki: list[str] = Field(default_factory=list)
    verify_certificate_hash: list[str] = Field(default_factory=list)
    min_protocol_version: Literal[TLS_VERSIONS] | None = None  # type: ignore[valid-type]
    max_protocol_version: Literal[TLS_VERSIONS] | None = None  # type: ignore[valid-type]
    cipher_suites: list[str] = Field(default_factory=list)

    @field_validator("mode")
    @classmethod
    def _no_auto_passthrough(cls, v: str | None) -> str | None:
        if v == "AUTO_PASSTHROUGH":
            raise ValueError(
                "AUTO_PASSTHROUGH routes by cluster names encoded in SNI between networks (Istio's multi-network "
                "east-west gateway), which Lattice does not implement; use PASSTHROUGH with VirtualService tls routes"
            )
        return v

    @field_validator("credential_name")
    @classmethod
    def _secret_name(cls, v: str | None) -> str | None:
        if v is not None and not DNS1123_SUBDOMAIN.match(v):
            raise ValueError(
                f"{v!r} is not a secret name: credentialName names a secret made with `lattice secret create tls "
                "NAME` in the gateway's namespace (a DNS-1123 name)"
            )
        return v

    @field_validator("credential_names")
    @classmethod
    def _one_secret(cls, v):
        if v is not None:
            raise ValueError(
                "credentialNames (an RSA and an ECDSA certificate side by side) is not supported; give one "
                "credentialName"
            )
        return v

    @field_validator("tls_certificates")
    @classmethod
    def _one_certificate(cls, v):
        if v is not None:
            raise ValueError(
                "tlsCertificates (several server certificates) is not supported; give one serverCertificate and "
                "privateKey"
            )
        return v

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not _CIPHER.match(c)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))} is not a cipher suite name (OpenSSL/BoringSSL names, e.g. "
                "ECDHE-RSA-AES128-GCM-SHA256)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ServerTLSSettings:
        problems = self._mode_problems()
        order = list(TLS_VERSIONS)
        low, high = self.min_protocol_version, self.max_protocol_version
        if low not in (None, "TLS_AUTO") and high not in (None, "TLS_AUTO") and order.index(low) > order.index(high):
            problems.append(f"minProtocolVersion {low} is above maxProtocolVersion {high}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _mode_problems(self) -> list[str]:
        checks = (
            "ca_certificates",
            "ca_crl",
            "subject_alt_names",
            "verify_certificate_spki",
            "verify_certificate_hash",
        )
        files = ("server_certificate", "private_key")
        if self.credential_name:
            return self._credential_problems(files)
        if self.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
            missing = [f for f in (*files, "ca_certificates") if not getattr(self, f)]
            return (
                [f"{self.mode} terminates TLS and checks client certificates: set {_names(missing)}"] if missing else []
            )
        if self.mode == "SIMPLE":
            missing, given = [f for f in files if not getattr(self, f)], self._given(*checks)
            out = [f"SIMPLE terminates TLS with your certificate: set {_names(missing)}"] if missing else []
            return out + (
                [
                    f"SIMPLE asks no client certificate, so {_names(given)} would be unused; use MUTUAL or "
                    "OPTIONAL_MUTUAL"
                ]
                if given
                else []
            )
        if self.mode == "ISTIO_MUTUAL":
            given = self._given(*files, "ca_certificates", "ca_crl")
            return (
                [
                    f"ISTIO_MUTUAL uses the gateway's mesh certificate, issued by Lattice; remove {_names(given)} "
                    "(or use MUTUAL)"
                ]
                if given
                else []
            )
        if self.mode == "PASSTHROUGH":
            given = self._given(*files, *checks, "min_protocol_version", "max_protocol_version", "cipher_suites")
            return (
                [f"PASSTHROUGH forwards TLS unopened, so {_names(given)} would be unused; remove them"] if given else []
            )
        given = self._given(*files, *checks, "min_protocol_version", "max_protocol_version", "cipher_suites")
        return [f"no TLS mode is set, so {_names(given)} would be unused; set mode"] if given else []

    def _credential_problems(self, files: tuple[str, ...]) -> list[str]:
        """credentialName brings the certificate, key and (MUTUAL) client CAs from the secret store."""
        if self.mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
            return [f"credentialName serves a certificate for mode SIMPLE, MUTUAL or OPTIONAL_MUTUAL, not {self.mode}"]
        given = self._given(*files, "ca_certificates")
        if given:
            return [f"credentialName brings the certificate, key and CA from the secret; remove {_names(given)}"]
        return []

    def _given(self, *fields: str) -> list[str]:
        return [f for f in fields if getattr(self, f) not in (None, "", [])]


def _names(fields: list[str]) -> str:
    return ", ".join(to_camel(f) for f in fields)


class Server(IstioSpec):
    port: GatewayPort
    hosts: list[str] = Field(min_length=1)
    tls: ServerTLSSettings | None = None
    name: str | None = None
    bind: str | None = None
    default_endpoint: str | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            ns, _, host = h.rpartition("/")
            if ns and ns not in ("*", ".") and not DNS1123_LABEL.match(ns):
                raise ValueError(f"{h!r}: namespace {ns!r} is not '*', '.' or a namespace name")
            if not _HOST.match(host):
                raise ValueError(f"{h!r} is not [namespace/]host with host '*', '*.domain' or a DNS name")
        return v

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("unix://"):
            raise ValueError("binding to a Unix domain socket is not supported; give an IP address")
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        return v

    @field_validator("default_endpoint")
    @classmethod
    def _no_default_endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "defaultEndpoint is for Sidecar ingress listeners, not Gateway servers; route with a "
                "VirtualService bound to this Gateway"
            )
        return v

    @model_validator(mode="after")
    def _tls_fits_protocol(self) -> Server:
        problem = self._tls_problem()
        if problem:
            raise ValueError(problem)
        return self

    def _tls_problem(self) -> str | None:
        protocol, tls = self.port.protocol, self.tls
        if protocol in ("HTTPS", "TLS"):
            if tls is None:
                return (
                    f"protocol {protocol} needs tls (mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL or PASSTHROUGH)"
                )
            if tls.https_redirect:
                return (
                    "httpsRedirect applies to HTTP servers (it sends plaintext clients to HTTPS); this server "
                    "already speaks TLS"
                )
            return None
        if tls is not None and (tls.mode is not None or tls.model_fields_set - {"https_redirect"}):
            return (
                f"protocol {protocol} is plaintext: tls may only set httpsRedirect here; use protocol HTTPS or "
                "TLS to terminate TLS"
            )
        if tls is not None and tls.https_redirect and protocol not in HTTP_PROTOCOLS:
            return "httpsRedirect applies to HTTP servers"
        return None

    @property
    def tls_mode(self) -> str | None:
        """The TLS mode this server runs: None for plaintext; Istio's default (PASSTHROUGH) when unset."""
        if self.port.protocol not in ("HTTPS", "TLS") or self.tls is None:  # validation: tls set for these
            return None
        return self.tls.mode or "PASSTHROUGH"

    @property
    def speaks_http(self) -> bool:
        """Whether requests are HTTP once any TLS is taken off (HTTP routes apply, not TCP/TLS ones)."""
        return self.port.protocol in HTTP_PROTOCOLS or (
            self.port.protocol == "HTTPS" and self.tls_mode != "PASSTHROUGH"
        )


class GatewaySpec(IstioSpec):
    selector: dict[str, str] = Field(default_factory=dict)
    servers: list[Server] = Field(min_length=1)

    @field_validator("servers")
    @classmethod
    def _servers_agree(cls, v: list[Server]) -> list[Server]:
        names = [s.name for s in v if s.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"server names must be unique; repeated: {', '.join(dupes)}")
        for i, a in enumerate(v):
            for j, b in enumerate(v[:i]):
                if (a.bind, a.port.number) == (b.bind, b.port.number) and _port_kind(a) != _port_kind(b):
                    raise ValueError(
                        f"servers[{j}] and servers[{i}] share port {a.port.number} but one is {_port_kind(b)} and "
                        f"the other {_port_kind(a)}; give them different ports"
                    )
        return v

    def selects(self, labels: dict[str, str]) -> bool:
        """Istio: a Gateway applies to every gateway proxy whose labels include its selector."""
        return all(labels.get(k) == v for k, v in self.selector.items())


def _port_kind(server: Server) -> str:
    """Servers sharing a port must agree on this: it decides the listener's shape."""
    if server.port.protocol in HTTP_PROTOCOLS:
        return "plaintext HTTP"
    if server.port.protocol == "TCP":
        return "TCP"
    return "TLS passthrough" if server.tls_mode == "PASSTHROUGH" else "TLS-terminating"


def split_host(host: str, gateway_namespace: str) -> tuple[str, str]:
    """A server host as (namespace whose VirtualServices may bind, host): `*` for any namespace."""
    ns, _, name = host.rpartition("/")
    if ns == ".":
        ns = gateway_namespace
    return ns or "*", name
