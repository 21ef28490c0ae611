"""The part of Istio's MeshConfig that `lattice server --mesh-config FILE` reads: `extensionProviders`,
the external authorizers that AuthorizationPolicies with action CUSTOM name.

Field names and defaults are Istio's (`MeshConfig.ExtensionProvider`). Other MeshConfig fields are
refused by name rather than ignored: Lattice's equivalents are `lattice server` options.
"""

from __future__ import annotations

import re
from typing import Any

import pydantic
import yaml
from pydantic import Field, field_validator, model_validator

from lattice.api.durations import parse_duration
from lattice.api.errors import FieldError, ValidationError
from lattice.api.networking import IstioSpec

# HTTP status codes Envoy's HttpStatus enum names (what Istio accepts for statusOnError).
_STATUS_CODES = frozenset({
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426, 428, 429, 431,
    500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})
_HOST = re.compile(r"^(?:[a-z0-9-]+/)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class ExtAuthzProvider(IstioSpec):
    """What envoyExtAuthzHttp and envoyExtAuthzGrpc share: where the authorizer is and what to do when it fails."""

    service: str
    port: int = Field(ge=1, le=65535)
    timeout: str | None = None
    fail_open: bool = False
    status_on_error: str | None = None

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not _HOST.match(v):
            raise ValueError(f"{v!r} is not a host name, [<namespace>/]<hostname>, or an IP address")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("must be longer than 0s")
        return v

    @field_validator("status_on_error")
    @classmethod
    def _status(cls, v: str | None) -> str | None:
        if v is not None and (not v.isdigit() or int(v) not in _STATUS_CODES):
            raise ValueError(f"unsupported statusOnError {v!r}: give an HTTP status code such as 403 or 503")
        return v

    @property
    def timeout_seconds(self) -> float:
        """Istio's default is 600s: long, so a DestinationRule timeout would be the one that acts."""
        return parse_duration(self.timeout) if self.timeout else 600.0

    @property
    def host(self) -> str:
        """The host name without Istio's optional `<namespace>/` qualifier."""
        return self.service.rpartition("/")[2]


class ExtAuthzHttp(ExtAuthzProvider):
    path_prefix: str = ""
    include_request_headers_in_check: list[str] = Field(default_factory=list)
    include_additional_headers_in_check: dict[str, str] = Field(default_factory=dict)
    headers_to_upstream_on_allow: list[str] = Field(default_factory=list)
    headers_to_downstream_on_deny: list[str] = Field(default_factory=list)
    headers_to_downstream_on_allow: list[str] = Field(default_factory=list)

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError(f"pathPrefix must begin with '/', found {v!r}")
        return v


class ExtAuthzGrpc(ExtAuthzProvider):
    pass


class ExtensionProvider(IstioSpec):
    name: str = Field(min_length=1)
    envoy_ext_authz_http: ExtAuthzHttp | None = None
    envoy_ext_authz_grpc: ExtAuthzGrpc | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ExtensionProvider:
        if (self.envoy_ext_authz_http is None) == (self.envoy_ext_authz_grpc is None):
            raise ValueError("set exactly one of envoyExtAuthzHttp or envoyExtAuthzGrpc (the provider kinds Lattice supports)")
        return self

    @property
    def authorizer(self) -> ExtAuthzProvider:
        return self.envoy_ext_authz_http or self.envoy_ext_authz_grpc


class MeshConfig(IstioSpec):
    extension_providers: list[ExtensionProvider] = Field(default_factory=list)

    @field_validator("extension_providers")
    @classmethod
    def _unique(cls, v: list[ExtensionProvider]) -> list[ExtensionProvider]:
        names = [p.name for p in v]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"extension provider names must be unique; repeated: {', '.join(duplicates)}")
        return v


def parse_mesh_config(text: str, source: str) -> MeshConfig:
    """A MeshConfig from YAML text (an empty file is an empty config), or ValidationError with field paths."""
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValidationError(source, [FieldError("", f"not valid YAML: {e}")]) from None
    try:
        return MeshConfig.model_validate(data)
    except pydantic.ValidationError as e:
        raise ValidationError(source, [FieldError(_path(err["loc"]), _message(err)) for err in e.errors()]) from None


def _path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field, or a MeshConfig field Lattice does not read (use the `lattice server` options)"
    return err["msg"].removeprefix("Value error, ")
