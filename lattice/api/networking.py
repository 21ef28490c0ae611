"""Istio `networking.istio.io` schemas (v1alpha3, v1beta1 and v1 share one schema).

Field names are Istio's (camelCase). Only what Lattice implements is modelled; anything else is an
"unsupported field" error at apply time (see `meta.Spec`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.durations import parse_duration
from lattice.api.meta import DNS1123_LABEL, Spec


class IstioSpec(Spec):
    model_config = {**Spec.model_config, "alias_generator": to_camel}


# What Python's `re` accepts and RE2 (Envoy's regex engine) does not: look-around, back-references,
# atomic groups, possessive quantifiers, conditionals, \Z, repetition counts over 1000. Checked here
# so such a pattern is refused at apply time, not NACKed by every proxy later.
_NOT_RE2_ESCAPES = ((re.compile(r"\\[1-9]"), "a back-reference"), (re.compile(r"\\Z"), "\\Z (use $ or \\z)"))
_NOT_RE2_SYNTAX = (
    (re.compile(r"\(\?<?[=!]"), "look-around"),
    (re.compile(r"\(\?P="), "a back-reference"),
    (re.compile(r"\(\?>"), "an atomic group"),
    (re.compile(r"[*+?}]\+"), "a possessive quantifier"),
    (re.compile(r"\(\?\("), "a conditional"),
)
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_ESCAPED = re.compile(r"\\.")


def check_regex(pattern: str) -> str:
    """`pattern` if Envoy (RE2) will accept it; ValueError naming the problem otherwise."""
    unescaped = _ESCAPED.sub("x", pattern)  # `\+` or `\(` are literals, not syntax
    problems = [what for construct, what in _NOT_RE2_ESCAPES if construct.search(pattern.replace("\\\\", ""))]
    problems += [what for construct, what in _NOT_RE2_SYNTAX if construct.search(unescaped)]
    if problems:
        raise ValueError(f"regex {pattern!r} uses {problems[0]}, which RE2 (Envoy's regex engine) does not support")
    if any(int(n) > 1000 for m in _REPEAT.finditer(unescaped) for n in m.groups() if n):
        raise ValueError(
            f"regex {pattern!r} repeats more than 1000 times, which RE2 (Envoy's regex engine) does not allow"
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"regex {pattern!r} does not compile: {e}") from None
    return pattern


class StringMatch(IstioSpec):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of exact, prefix or regex (got {', '.join(given) or 'none'})")
        if self.regex is not None:
            check_regex(self.regex)
        return self


def _check_duration(v: str | None, minimum: float = 0.001) -> str | None:
    if v is not None and parse_duration(v) < minimum:
        raise ValueError(f"must be at least {minimum * 1000:g}ms")
    return v


def _gateway_names(v: list[str]) -> list[str]:
    """`mesh` (every sidecar) or an Istio Gateway as `name` or `namespace/name`."""
    for g in v:
        ns, _, name = g.rpartition("/")
        if g != "mesh" and not (DNS1123_LABEL.match(name) and (not ns or DNS1123_LABEL.match(ns))):
            raise ValueError(f"{g!r} is not 'mesh' or a Gateway as name or namespace/name")
    return v


def binds_mesh(gateways: list[str]) -> bool:
    """Istio: rules with no gateways apply to sidecars; naming gateways leaves sidecars out unless
    `mesh` is named too."""
    return not gateways or "mesh" in gateways


class Percent(IstioSpec):
    value: float = Field(ge=0, le=100)


class PortSelector(IstioSpec):
    number: int = Field(ge=1, le=65535)


class Destination(IstioSpec):
    host: str = Field(min_length=1)
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(IstioSpec):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class Headers(IstioSpec):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(IstioSpec):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False
    port: int | None = Field(default=None, ge=1, le=65535)
    source_labels: dict[str, str] = Field(default_factory=dict)
    source_namespace: str | None = None
    gateways: list[str] = Field(default_factory=list)
    stat_prefix: str | None = None

    _gateways = field_validator("gateways")(_gateway_names)

    @field_validator("headers", "without_headers")
    @classmethod
    def _header_names(cls, v: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name in v:
            if not name or name != name.strip() or ":" in name.lstrip(":")[1:]:
                raise ValueError(f"{name!r} is not a header name")
        return v


class HTTPRouteDestination(IstioSpec):
    destination: Destination
    weight: int | None = Field(default=None, ge=0)
    headers: Headers | None = None


class HTTPRetry(IstioSpec):
    attempts: int = Field(ge=0)
    per_try_timeout: str | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None

    _per_try = field_validator("per_try_timeout")(_check_duration)

    @field_validator("retry_on")
    @classmethod
    def _conditions(cls, v: str | None) -> str | None:
        if v is None:
            return v
        unknown = [c for c in (p.strip() for p in v.split(",")) if c and not c.isdigit() and c not in RETRY_CONDITIONS]
        if unknown:
            raise ValueError(
                f"unknown retry condition(s) {', '.join(unknown)}; use HTTP status codes or "
                f"{', '.join(sorted(RETRY_CONDITIONS))}"
            )
        return v


# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on conditions (what Istio passes through).
RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


class Delay(IstioSpec):
    fixed_delay: str
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated Istio field, still accepted

    _fixed = field_validator("fixed_delay")(_check_duration)


GRPC_STATUS = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


class Abort(IstioSpec):
    http_status: int | None = Field(default=None, ge=200, le=599)
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated Istio field, still accepted

    @field_validator("grpc_status")
    @classmethod
    def _grpc(cls, v: str | None) -> str | None:
        if v is not None and v not in GRPC_STATUS:
            raise ValueError(f"{v!r} is not a gRPC status name; use one of {', '.join(GRPC_STATUS)}")
        return v

    @field_validator("http2_error")
    @classmethod
    def _no_http2_error(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "http2Error is not supported (Istio does not implement it either); abort with httpStatus or grpcStatus"
            )
        return v

    @model_validator(mode="after")
    def _one_status(self) -> Abort:
        if (self.http_status is None) == (self.grpc_status is None):
            raise ValueError("set exactly one of httpStatus or grpcStatus")
        return self


class HTTPFaultInjection(IstioSpec):
    delay: Delay | None = None
    abort: Abort | None = None

    @model_validator(mode="after")
    def _something(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("set delay, abort or both")
        return self


# A redirect `uri` starting with this replaces only the matched prefix (Envoy's prefix_rewrite):
# Istio's own marker, which its Gateway API conversion writes for RequestRedirect ReplacePrefixMatch.
PREFIX_REDIRECT = "%PREFIX()%"


class HTTPRedirect(IstioSpec):
    uri: str | None = None
    authority: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: int = 301

    @field_validator("redirect_code")
    @classmethod
    def _code(cls, v: int) -> int:
        if v not in REDIRECT_CODES:
            raise ValueError(
                f"{v} is not a redirect status Envoy can send; use one of {', '.join(map(str, REDIRECT_CODES))}"
            )
        return v

    @model_validator(mode="after")
    def _port_once(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("set port or derivePort, not both")
        return self


REDIRECT_CODES = (301, 302, 303, 307, 308)


class DirectResponseBody(IstioSpec):
    string: str | None = None
    bytes: str | None = None  # base64, as Istio's proto JSON writes bytes

    @model_validator(mode="after")
    def _one(self) -> DirectResponseBody:
        if (self.string is None) == (self.bytes is None):
            raise ValueError("set exactly one of string or bytes")
        if self.bytes is not None:
            try:
                base64.b64decode(self.bytes, validate=True)
            except (ValueError, binascii.Error):
                raise ValueError("bytes must be base64") from None
        return self


class HTTPDirectResponse(IstioSpec):
    status: int = Field(ge=200, le=599)
    body: DirectResponseBody | None = None


class RegexRewrite(IstioSpec):
    match: str = Field(min_length=1)
    rewrite: str

    _match = field_validator("match")(lambda v: check_regex(v))


class HTTPRewrite(IstioSpec):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _one_uri(self) -> HTTPRewrite:
        if self.uri is not None and self.uri_regex_rewrite is not None:
            raise ValueError("set uri or uriRegexRewrite, not both")
        return self


class HTTPMirrorPolicy(IstioSpec):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(IstioSpec):
    allow_origins: list[StringMatch] = Field(default_factory=list)
    allow_origin: list[str] = Field(default_factory=list)  # deprecated Istio field: exact origins
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: str | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None

    _max_age = field_validator("max_age")(lambda v: _check_duration(v, 0.0))


class Delegate(IstioSpec):
    name: str
    namespace: str | None = None


class HTTPRoute(IstioSpec):
    name: str | None = None
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = Field(default_factory=list)
    mirror_percentage: Percent | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)  # deprecated Istio field, still accepted
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    _timeout = field_validator("timeout")(lambda v: _check_duration(v, 0.0))

    @field_validator("delegate")
    @classmethod
    def _no_delegate(cls, v: Delegate | None) -> Delegate | None:
        if v is not None:
            raise ValueError(
                "delegate (VirtualService chaining) is not supported; put the delegated rules in this VirtualService"
            )
        return v

    @model_validator(mode="after")
    def _one_action(self) -> HTTPRoute:
        actions = [
            n
            for n, v in (("route", self.route), ("redirect", self.redirect), ("directResponse", self.direct_response))
            if v
        ]
        if len(actions) != 1:
            raise ValueError(
                f"a rule needs exactly one of route, redirect or directResponse (got {', '.join(actions) or 'none'})"
            )
        if self.rewrite is not None and self.redirect is not None:
            raise ValueError(
                "rewrite and redirect cannot both be set: a redirect answers the client, nothing is forwarded to "
                "rewrite"
            )
        if self.mirror is not None and self.mirrors:
            raise ValueError("set mirror or mirrors, not both")
        if (self.mirror_percentage is not None or self.mirror_percent is not None) and self.mirror is None:
            raise ValueError("mirrorPercentage applies to `mirror`; with `mirrors`, give each its own percentage")
        if len(self.route) > 1 and sum(d.weight or 0 for d in self.route) == 0:
            raise ValueError("with several destinations, give each a weight (they should add up to 100)")
        return self


class L4MatchAttributes(IstioSpec):
    destination_subnets: list[str] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535)
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str | None = None

    _gateways = field_validator("gateways")(_gateway_names)

    @field_validator("destination_subnets")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        for subnet in v:
            try:
                ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                raise ValueError(f"{subnet!r} is not an IP address or CIDR block") from None
        return v


class TLSMatchAttributes(L4MatchAttributes):
    sni_hosts: list[str] = Field(min_length=1)


class RouteDestination(IstioSpec):
    destination: Destination
    weight: int | None = Field(default=None, ge=0)


def _l4_weights(route: list[RouteDestination]) -> list[RouteDestination]:
    if len(route) > 1 and sum(d.weight or 0 for d in route) == 0:
        raise ValueError("with several destinations, give each a weight (they should add up to 100)")
    return route


class TCPRoute(IstioSpec):
    match: list[L4MatchAttributes] = Field(default_factory=list)
    route: list[RouteDestination] = Field(min_length=1)

    _weights = field_validator("route")(_l4_weights)


class TLSRoute(IstioSpec):
    match: list[TLSMatchAttributes] = Field(min_length=1)
    route: list[RouteDestination] = Field(min_length=1)

    _weights = field_validator("route")(_l4_weights)


class VirtualServiceSpec(IstioSpec):
    hosts: list[str] = Field(min_length=1)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)
    tls: list[TLSRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)

    _gateways = field_validator("gateways")(_gateway_names)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if not h or h != h.strip() or "/" in h:
                raise ValueError(f"host {h!r} is not a host name")
        return v

    @model_validator(mode="after")
    def _star_only_on_gateways(self) -> VirtualServiceSpec:
        if "*" in self.hosts and binds_mesh(self.gateways):
            raise ValueError(
                "hosts: '*' would capture every destination of every sidecar; name the hosts, or bind the "
                "VirtualService to a Gateway"
            )
        return self

    @field_validator("export_to")
    @classmethod
    def _export(cls, v: list[str]) -> list[str]:
        for ns in v:
            if ns not in ("*", ".") and not DNS1123_LABEL.match(ns):
                raise ValueError(f"{ns!r} is not '*', '.' or a namespace name")
        if "*" in v and len(v) > 1:
            raise ValueError("'*' already exports to every namespace; list nothing else with it")
        return v

    def exported_to(self, own_namespace: str, namespace: str) -> bool:
        """Whether a proxy in `namespace` sees this VirtualService (Istio's exportTo; empty means everywhere)."""
        if not self.export_to or "*" in self.export_to:
            return True
        return namespace in self.export_to or ("." in self.export_to and namespace == own_namespace)
