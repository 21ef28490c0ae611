"""Istio `networking.istio.io` schemas (v1alpha3, v1beta1 and v1 share one schema).

Field names are Istio's (camelCase). Only what Lattice implements is modelled; anything else is an
"unsupported field" error at apply time (see `meta.Spec`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from lattice.api.durations import parse_duration
from lattice.api.meta import Spec


class IstioSpec(Spec):
    model_config = {**Spec.model_config, "alias_generator": to_camel}


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
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex {self.regex!r} does not compile: {e}") from None
        return self


def _check_duration(v: str | None, minimum: float = 0.001) -> str | None:
    if v is not None and parse_duration(v) < minimum:
        raise ValueError(f"must be at least {minimum * 1000:g}ms")
    return v


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
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False


class HTTPRouteDestination(IstioSpec):
    destination: Destination
    weight: int | None = Field(default=None, ge=0)
    headers: Headers | None = None


class HTTPRetry(IstioSpec):
    attempts: int = Field(ge=0)
    per_try_timeout: str | None = None
    retry_on: str | None = None

    _per_try = field_validator("per_try_timeout")(_check_duration)


class Delay(IstioSpec):
    fixed_delay: str
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated Istio field, still accepted

    _fixed = field_validator("fixed_delay")(_check_duration)


class Abort(IstioSpec):
    http_status: int = Field(ge=200, le=599)
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated Istio field, still accepted


class HTTPFaultInjection(IstioSpec):
    delay: Delay | None = None
    abort: Abort | None = None


class HTTPRoute(IstioSpec):
    name: str | None = None
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(min_length=1)
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    headers: Headers | None = None

    _timeout = field_validator("timeout")(lambda v: _check_duration(v, 0.0))

    @model_validator(mode="after")
    def _weights(self) -> HTTPRoute:
        if len(self.route) > 1 and sum(d.weight or 0 for d in self.route) == 0:
            raise ValueError("with several destinations, give each a weight (they should add up to 100)")
        return self


class VirtualServiceSpec(IstioSpec):
    hosts: list[str] = Field(min_length=1)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)

    @field_validator("gateways")
    @classmethod
    def _mesh_only(cls, v: list[str]) -> list[str]:
        other = [g for g in v if g != "mesh"]
        if other:
            raise ValueError(f"binding to gateways {other} is not supported yet; only 'mesh' (sidecar routing) is")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if not h or h != h.strip() or "/" in h:
                raise ValueError(f"host {h!r} is not a host name")
        return v
