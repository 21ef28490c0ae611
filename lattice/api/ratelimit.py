"""Lattice's `lattice.dev/v1` RateLimitPolicy: token-bucket limits the destination's sidecar enforces.

Istio leaves rate limiting to EnvoyFilter patches; here it is a small typed API. A policy selects
workloads the way PeerAuthentication does (`selector.matchLabels` in the policy's namespace; no
selector means namespace-wide, or mesh-wide in the root namespace) and lists limits:

    limits:
    - name: per-client-writes        # optional; unique within the policy
      requests: 10                   # tokens added per `per`
      per: 1m                        # refill period, 50ms..24h
      burst: 20                      # bucket size (default: `requests`)
      match:                         # optional; all given conditions must hold
        path: {prefix: /api/}        # exact / prefix / regex, on the path without the query
        methods: [POST, PUT]
        headers: {x-tenant: {exact: acme}}
      by: {clientIdentity: true}     # optional: one bucket per caller (or `header: x-user`)

Which policies apply to a workload, and how they combine, is decided in `lattice.mesh.rate_limits`;
the Envoy filter is built in `lattice.translate.ratelimit`.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from lattice.api.durations import parse_duration
from lattice.api.meta import DNS1123_LABEL
from lattice.api.networking import IstioSpec, StringMatch
from lattice.api.security import WorkloadSelector

# Envoy keeps token counts in uint32.
MAX_TOKENS = 2**32 - 1
# Envoy refuses a descriptor bucket that refills more often than every 50ms.
MIN_PERIOD_SECONDS = 0.05
# Local buckets live as long as the sidecar's listener; a longer window is a quota, not a rate.
MAX_PERIOD_SECONDS = 24 * 3600.0
# RFC 9110 token, lower case only (HTTP/2 lower-cases names; matching is on the lowered form) and
# without '_', which the sidecar refuses in header names, so a limit on one could never apply.
HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^`|~-]+$")
METHOD = re.compile(r"^[A-Z][A-Z0-9-]*$")


def check_header_name(name: str) -> str:
    if not isinstance(name, str) or not HEADER_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a header name Lattice can match: use lower-case letters, digits and '-' "
            "(no ':' pseudo-headers, no '_', which the sidecar rejects)"
        )
    return name


class RequestMatch(IstioSpec):
    """Which requests a limit counts; every condition given must hold, none given means all."""

    path: StringMatch | None = None
    methods: list[str] = Field(default_factory=list)
    headers: dict[str, StringMatch] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, v: StringMatch | None) -> StringMatch | None:
        literal = None if v is None else (v.exact if v.exact is not None else v.prefix)
        if literal is not None and (not literal.startswith("/") or "?" in literal):
            raise ValueError(
                f"{literal!r} must start with '/' and hold no '?': the path is matched without its query string"
            )
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if not METHOD.match(m)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: methods are HTTP method names in upper case, e.g. GET")
        if len(set(v)) != len(v):
            raise ValueError("a method is listed more than once")
        return v

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name in v:
            check_header_name(name)
        return v


class RateLimitKey(IstioSpec):
    """What splits one limit into separate buckets: the caller's identity or a request header."""

    client_identity: bool = False
    header: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return v if v is None else check_header_name(v)

    @model_validator(mode="after")
    def _one_of(self) -> RateLimitKey:
        if self.client_identity == (self.header is not None):
            raise ValueError("set exactly one of clientIdentity: true or header: <name>")
        return self


class Limit(IstioSpec):
    name: str | None = None
    requests: int = Field(strict=True)
    per: str
    burst: int | None = Field(default=None, strict=True)
    match: RequestMatch | None = None
    by: RateLimitKey | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not DNS1123_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a name: use lower-case letters, digits and '-', starting and ending alphanumeric"
            )
        return v

    @field_validator("requests", "burst")
    @classmethod
    def _tokens(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v <= MAX_TOKENS:
            raise ValueError(
                f"must be between 1 and {MAX_TOKENS}; to refuse requests outright use an AuthorizationPolicy"
            )
        return v

    @field_validator("per")
    @classmethod
    def _per(cls, v: str) -> str:
        seconds = parse_duration(v)
        millis = seconds * 1000
        if abs(millis - round(millis)) > 1e-6:
            raise ValueError(f"{v!r} is not a whole number of milliseconds")
        if not MIN_PERIOD_SECONDS <= seconds <= MAX_PERIOD_SECONDS:
            raise ValueError(
                f"{v!r} is out of range: Envoy refills buckets at most every 50ms, and Lattice allows at most 24h"
            )
        return v

    @property
    def period_ms(self) -> int:
        return round(parse_duration(self.per) * 1000)

    @property
    def bucket_size(self) -> int:
        return self.burst if self.burst is not None else self.requests


class RateLimitPolicySpec(IstioSpec):
    selector: WorkloadSelector | None = None
    limits: list[Limit]

    @property
    def match_labels(self) -> dict[str, str]:
        """The selector's labels; empty means the policy is namespace- or mesh-wide."""
        return self.selector.match_labels if self.selector else {}

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: list[Limit]) -> list[Limit]:
        if not v:
            raise ValueError("a RateLimitPolicy needs at least one limit")
        names = [limit.name for limit in v if limit.name is not None]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"limit name(s) {', '.join(repeated)} used more than once")
        return v
