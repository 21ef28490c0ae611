"""Kubernetes Gateway API routes for mesh traffic (GAMMA): `HTTPRoute` and `GRPCRoute`.

Field names and defaults are `gateway.networking.k8s.io/v1`'s. A route attaches to a Service
(`parentRefs` with `group: ""`, `kind: Service`: mesh routing, applied by sidecars) or to a
Gateway API `Gateway` (served by `lattice gateway --gateway-class`); `hostnames` apply to Gateway
parents only. The CRD's defaults (a rule with no match matches every path, a backend's weight is 1,
a redirect answers 302) are applied where the routes are converted (`mesh/gateway_api.py`), so a
stored route reads back exactly as written. Fields Lattice does not implement are refused by name
with the reason, never ignored.
"""

from __future__ import annotations

import re
from typing import Literal, overload

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.meta import DNS1123_LABEL, DNS1123_SUBDOMAIN, Spec
from lattice.api.networking import check_regex

# Gateway API's Duration: up to four number-unit pairs, e.g. "1h", "500ms", "1m30s".
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_CORE_GROUPS = ("", "core")


class GatewayApiSpec(Spec):
    model_config = {**Spec.model_config, "alias_generator": to_camel}


def check_duration(v: str | None) -> str | None:
    if v is not None and not _DURATION.match(v):
        raise ValueError(f"{v!r} is not a Gateway API duration; write it like '10s', '500ms' or '1m30s'")
    return v


def _unique_names(items: list, what: str) -> list:
    """Gateway API compares header and parameter names case-insensitively; a name given twice
    would silently lose one entry, so it is refused instead."""
    seen = set()
    for item in items:
        if item.name.lower() in seen:
            raise ValueError(f"{what} {item.name!r} is listed twice")
        seen.add(item.name.lower())
    return items


class ParentReference(GatewayApiSpec):
    group: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str = Field(min_length=1, max_length=253)
    section_name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def is_service(self) -> bool:
        return self.kind == "Service"

    @model_validator(mode="after")
    def _a_service_or_gateway(self) -> ParentReference:
        # Unset group and kind mean a Gateway (the CRD's defaults).
        gateway = self.group in (None, "gateway.networking.k8s.io") and self.kind in (None, "Gateway")
        if not gateway and (self.group not in _CORE_GROUPS or self.kind != "Service"):
            raise ValueError(
                f"parent {self.group}/{self.kind} is not supported: a route attaches to a Gateway "
                '(gateway.networking.k8s.io) or, for mesh routing, to a Service (group: "", kind: Service)'
            )
        if self.is_service and self.section_name is not None:
            raise ValueError("sectionName is not supported for a Service parent; select the service port with `port`")
        if self.namespace is not None and not DNS1123_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a namespace name")
        return self


class PathMatch(GatewayApiSpec):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _value(self) -> PathMatch:
        if self.type == "RegularExpression":
            check_regex(self.value)
        elif not self.value.startswith("/"):
            raise ValueError(f"path {self.value!r} must start with '/'")
        elif (
            "//" in self.value or "/./" in self.value or "/../" in self.value or "#" in self.value or "?" in self.value
        ):
            raise ValueError(f"path {self.value!r} must not contain '//', '/./', '/../', '#' or '?'")
        return self


class ValueMatch(GatewayApiSpec):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=4096)

    @model_validator(mode="after")
    def _valid(self) -> ValueMatch:
        if not _HEADER_NAME.match(self.name):
            raise ValueError(f"{self.name!r} is not a header or parameter name")
        if self.type == "RegularExpression":
            check_regex(self.value)
        return self


class HTTPRouteMatch(GatewayApiSpec):
    path: PathMatch | None = None
    headers: list[ValueMatch] = Field(default_factory=list, max_length=16)
    query_params: list[ValueMatch] = Field(default_factory=list, max_length=16)
    method: Literal[_METHODS] | None = None  # type: ignore[valid-type]

    _headers = field_validator("headers")(lambda v: _unique_names(v, "header"))
    _query = field_validator("query_params")(lambda v: _unique_names(v, "query parameter"))


class HeaderValue(GatewayApiSpec):
    name: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=4096)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v):
            raise ValueError(f"{v!r} is not a header name")
        return v


class HeaderModifier(GatewayApiSpec):
    set: list[HeaderValue] = Field(default_factory=list, max_length=16)
    add: list[HeaderValue] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)

    _set = field_validator("set")(lambda v: _unique_names(v, "header"))
    _add = field_validator("add")(lambda v: _unique_names(v, "header"))


class PathModifier(GatewayApiSpec):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, max_length=1024)
    replace_prefix_match: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _matching_value(self) -> PathModifier:
        value = self.replace_full_path if self.type == "ReplaceFullPath" else self.replace_prefix_match
        other = self.replace_prefix_match if self.type == "ReplaceFullPath" else self.replace_full_path
        if value is None or other is not None:
            field = "replaceFullPath" if self.type == "ReplaceFullPath" else "replacePrefixMatch"
            raise ValueError(f"type {self.type} takes exactly {field}")
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/'")
        return self


class RequestRedirect(GatewayApiSpec):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    status_code: Literal[301, 302, 303, 307, 308] = 302

    _hostname = field_validator("hostname")(lambda v: _check_hostname(v))


class URLRewrite(GatewayApiSpec):
    hostname: str | None = None
    path: PathModifier | None = None

    _hostname = field_validator("hostname")(lambda v: _check_hostname(v))


def _check_hostname(v: str | None) -> str | None:
    if v is not None and not DNS1123_SUBDOMAIN.match(v):
        raise ValueError(f"{v!r} is not a host name")
    return v


class BackendObjectReference(GatewayApiSpec):
    group: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _a_service_port(self) -> BackendObjectReference:
        if self.group not in (None, *_CORE_GROUPS) or self.kind not in (None, "Service"):
            raise ValueError(
                f"backend {self.group or ''}/{self.kind} is not supported: Lattice routes to Services (group \"\", "
                "kind Service)"
            )
        if self.port is None:
            raise ValueError("port is required when the backend is a Service")
        if self.namespace is not None and not DNS1123_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a namespace name")
        return self


class Fraction(GatewayApiSpec):
    numerator: int = Field(ge=0)
    denominator: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _proper(self) -> Fraction:
        if self.numerator > self.denominator:
            raise ValueError("numerator must not exceed denominator")
        return self


class RequestMirror(GatewayApiSpec):
    backend_ref: BackendObjectReference
    percent: int | None = Field(default=None, ge=0, le=100)
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _one_share(self) -> RequestMirror:
        if self.percent is not None and self.fraction is not None:
            raise ValueError("set percent or fraction, not both")
        return self

    def share(self) -> float:
        """Percent of requests mirrored; all of them when neither share is given."""
        if self.fraction is not None:
            return 100.0 * self.fraction.numerator / self.fraction.denominator
        return 100.0 if self.percent is None else float(self.percent)


class LocalObjectReference(GatewayApiSpec):
    group: str
    kind: str
    name: str


class CORS(GatewayApiSpec):
    allow_origins: list[str] = Field(default_factory=list, max_length=64)
    allow_credentials: bool | None = None
    allow_methods: list[str] = Field(default_factory=list, max_length=9)
    allow_headers: list[str] = Field(default_factory=list, max_length=64)
    expose_headers: list[str] = Field(default_factory=list, max_length=64)
    max_age: int = Field(default=5, ge=1)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not re.match(r"^(https?)://(\*\.)?[A-Za-z0-9.\-]+(:[0-9]{1,5})?$", origin):
                raise ValueError(
                    f"origin {origin!r} must be '*' or scheme://host[:port], the host optionally starting with '*.'"
                )
        return v


FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "RequestMirror": "request_mirror",
    "CORS": "cors",
    "ExtensionRef": "extension_ref",
}


class HTTPRouteFilter(GatewayApiSpec):
    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "RequestMirror",
        "CORS",
        "ExtensionRef",
    ]
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None
    cors: CORS | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _config_matches_type(self) -> HTTPRouteFilter:
        given = [t for t, f in FILTER_FIELDS.items() if getattr(self, f) is not None]
        if given != [self.type]:
            field = to_camel(FILTER_FIELDS[self.type])
            raise ValueError(
                f"a {self.type} filter takes exactly its `{field}` configuration (got "
                f"{', '.join(map(_camel_field, given)) or 'none'})"
            )
        if self.type == "ExtensionRef":
            raise ValueError(
                "ExtensionRef filters are not supported: Lattice has no filter extensions; use the built-in filter "
                "types"
            )
        return self


def _camel_field(kind: str) -> str:
    return to_camel(FILTER_FIELDS[kind])


def _check_filters(filters: list, allowed: tuple[str, ...], where: str) -> list:
    """Each filter type at most once (RequestMirror may repeat), redirect and rewrite exclusive."""
    types = [f.type for f in filters]
    for t in types:
        if t not in allowed:
            raise ValueError(f"{t} is not supported {where}; use {', '.join(allowed)}")
        if t != "RequestMirror" and types.count(t) > 1:
            raise ValueError(f"{t} may appear only once")
    if "RequestRedirect" in types and "URLRewrite" in types:
        raise ValueError(
            "RequestRedirect and URLRewrite cannot both be set: a redirect answers the client, nothing is "
            "forwarded to rewrite"
        )
    return filters


_RULE_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "CORS",
)
_BACKEND_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")


class HTTPBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)

    _filters = field_validator("filters")(
        lambda v: _check_filters(
            v, _BACKEND_FILTERS, "on a backendRef (Lattice applies only header filters per backend)"
        )
    )


class HTTPRouteTimeouts(GatewayApiSpec):
    request: str | None = None
    backend_request: str | None = None

    _durations = field_validator("request", "backend_request")(lambda v: check_duration(v))


class HTTPRouteRetry(GatewayApiSpec):
    codes: list[int] = Field(default_factory=list)
    attempts: int | None = Field(default=None, ge=0)
    backoff: str | None = None

    @field_validator("codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 400 <= c <= 599]
        if bad:
            raise ValueError(f"retriable codes must be 400-599 (got {', '.join(map(str, bad))})")
        return v

    @field_validator("backoff")
    @classmethod
    def _no_backoff(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "backoff is not supported: Lattice retries with Envoy's exponential backoff from 25ms; remove backoff"
            )
        return v


def _no_session_persistence(v: object) -> object:
    if v is not None:
        raise ValueError(
            "sessionPersistence is not supported; use a DestinationRule consistentHash load balancer for affinity"
        )
    return v


class HTTPRouteRule(GatewayApiSpec):
    name: str | None = Field(default=None, max_length=253)
    matches: list[HTTPRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list, max_length=16)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    session_persistence: dict | None = None

    _filters = field_validator("filters")(lambda v: _check_filters(v, _RULE_FILTERS, "on a rule"))
    _session = field_validator("session_persistence")(_no_session_persistence)

    @overload
    def filter(self, kind: Literal["URLRewrite"]) -> URLRewrite | None: ...
    @overload
    def filter(self, kind: Literal["RequestRedirect"]) -> RequestRedirect | None: ...
    @overload
    def filter(self, kind: Literal["CORS"]) -> CORS | None: ...
    @overload
    def filter(self, kind: str) -> object | None: ...

    def filter(self, kind: str) -> object | None:
        """The configuration of this rule's `kind` filter, if it has one."""
        return next((getattr(f, FILTER_FIELDS[kind]) for f in self.filters if f.type == kind), None)

    @model_validator(mode="after")
    def _prefix_rewrite_needs_prefix(self) -> HTTPRouteRule:
        for kind in ("URLRewrite", "RequestRedirect"):
            modifier = self.filter(kind)
            if modifier is not None and modifier.path is not None and modifier.path.type == "ReplacePrefixMatch":
                if any(m.path is not None and m.path.type != "PathPrefix" for m in self.matches):
                    raise ValueError(
                        f"{kind} with ReplacePrefixMatch needs every match of the rule to be a PathPrefix path match"
                    )
        return self


_ROUTE_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_hostnames(v: list[str]) -> list[str]:
    for h in v:
        if not _ROUTE_HOST.match(h):
            raise ValueError(f"hostname {h!r} is not a host name (optionally starting with '*.')")
    return v


def _hostnames_need_gateways(spec):
    if spec.hostnames and any(p.is_service for p in spec.parent_refs):
        raise ValueError(
            "hostnames has no effect on a route attached to a Service (the Service is the host); remove it, "
            "or attach the route to Gateways only"
        )
    return spec


class HTTPRouteSpec(GatewayApiSpec):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()], max_length=16)

    _hostnames = field_validator("hostnames")(_check_hostnames)
    _hostnames_parents = model_validator(mode="after")(_hostnames_need_gateways)


class GRPCMethodMatch(GatewayApiSpec):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(default=None, max_length=1024)
    method: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _something(self) -> GRPCMethodMatch:
        if self.service is None and self.method is None:
            raise ValueError("set service, method or both")
        if self.type == "RegularExpression":
            for v in (self.service, self.method):
                if v is not None:
                    check_regex(v)
        elif (
            self.service is not None
            and not re.match(r"^[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$", self.service)
        ) or (self.method is not None and not re.match(r"^[A-Za-z_][A-Za-z_0-9]*$", self.method)):
            raise ValueError("an Exact match needs a dotted service name and a method name (letters, digits, '_')")
        return self


class GRPCRouteMatch(GatewayApiSpec):
    method: GRPCMethodMatch | None = None
    headers: list[ValueMatch] = Field(default_factory=list, max_length=16)

    _headers = field_validator("headers")(lambda v: _unique_names(v, "header"))


_GRPC_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")


class GRPCRouteFilter(HTTPRouteFilter):
    @field_validator("type")
    @classmethod
    def _grpc_types(cls, v: str) -> str:
        if v not in (*_GRPC_FILTERS, "ExtensionRef"):
            raise ValueError(f"{v} is not a GRPCRoute filter; use {', '.join(_GRPC_FILTERS)}")
        return v


class GRPCBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)

    _filters = field_validator("filters")(
        lambda v: _check_filters(
            v, _BACKEND_FILTERS, "on a backendRef (Lattice applies only header filters per backend)"
        )
    )


class GRPCRouteRule(GatewayApiSpec):
    name: str | None = Field(default=None, max_length=253)
    matches: list[GRPCRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[GRPCBackendRef] = Field(default_factory=list, max_length=16)
    session_persistence: dict | None = None

    _filters = field_validator("filters")(lambda v: _check_filters(v, _GRPC_FILTERS, "on a GRPCRoute rule"))
    _session = field_validator("session_persistence")(_no_session_persistence)

    def filter(self, kind: str) -> object | None:
        return next((getattr(f, FILTER_FIELDS[kind]) for f in self.filters if f.type == kind), None)


class GRPCRouteSpec(GatewayApiSpec):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    rules: list[GRPCRouteRule] = Field(default_factory=lambda: [GRPCRouteRule()], max_length=16)

    _hostnames = field_validator("hostnames")(_check_hostnames)
    _hostnames_parents = model_validator(mode="after")(_hostnames_need_gateways)
