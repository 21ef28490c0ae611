"""SPIFFE IDs in Lattice's one shape: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
# The DNS name in the control plane's own certificate; agents verify the server against it, so a
# workload certificate (URI SAN only, see ca.py `sign`) can never pass for the control plane.
CONTROL_PLANE_NAME = "lattice-control-plane"
SHAPE = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
# Limits and character sets from the SPIFFE ID specification, section 2.
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SpiffeId:
    """A workload identity; every instance is valid, so str() always parses back."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        _check_segment("namespace", self.namespace)
        _check_segment("service account", self.service_account)
        if len(str(self).encode()) > MAX_ID_BYTES:
            raise ValueError(f"SPIFFE ID {str(self)[:80]!r}… is longer than {MAX_ID_BYTES} bytes")

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        try:
            return cls(*_split(uri))
        except ValueError as exc:
            raise ValueError(f"not a Lattice SPIFFE ID {uri!r:.120}: {exc}; expected {SHAPE}") from None


def check_trust_domain(value: str) -> str:
    """Return `value` if it is a valid SPIFFE trust domain, else raise ValueError saying why."""
    if not isinstance(value, str) or not value:
        raise ValueError("the trust domain is empty")
    if len(value) > MAX_TRUST_DOMAIN:
        raise ValueError(f"the trust domain is longer than {MAX_TRUST_DOMAIN} characters")
    if value != value.lower():
        raise ValueError(f"trust domain {value!r} has uppercase letters; SPIFFE trust domains are lowercase")
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(f"trust domain {value!r} may contain only a-z, 0-9, '.', '-' and '_' (no port or user)")
    return value


def _check_segment(label: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the {label} is empty")
    if value in (".", ".."):
        raise ValueError(f"the {label} may not be {value!r}")
    if not _SEGMENT.fullmatch(value):
        raise ValueError(f"{label} {value!r} may contain only letters, digits, '.', '-' and '_'")


def _split(uri: str) -> tuple[str, str, str]:
    if not isinstance(uri, str):
        raise ValueError(f"it is a {type(uri).__name__}, not a string")
    if not uri.startswith(SCHEME):
        raise ValueError("the scheme must be 'spiffe://' (lowercase)")
    if "?" in uri or "#" in uri:
        raise ValueError("a query or fragment is not allowed")
    trust_domain, _, path = uri[len(SCHEME) :].partition("/")
    check_trust_domain(trust_domain)
    if not path:
        raise ValueError("the path is missing")
    segments = path.split("/")
    if "" in segments:
        raise ValueError("the path has an empty segment")
    if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
        raise ValueError(f"the path is '/{path}'")
    return trust_domain, segments[1], segments[3]
