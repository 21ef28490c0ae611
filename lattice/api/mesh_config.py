"""The part of Istio's MeshConfig that `lattice server --mesh-config FILE` reads.

- `extensionProviders`: external authorizers (envoyExtAuthzHttp, envoyExtAuthzGrpc) that
  AuthorizationPolicies with action CUSTOM name; trace collectors (opentelemetry, zipkin), file
  access logs (envoyFileAccessLog) and `prometheus`, which Telemetry resources name.
- Telemetry defaults: `accessLogFile`, `accessLogEncoding`, `accessLogFormat`, `enableTracing`,
  `defaultProviders`, `defaultConfig.tracing.sampling` (resolved in `lattice.mesh.telemetry`).

Field names and defaults are Istio's (`accessLogEncoding` TEXT, in Istio's default text format;
`accessLogEncoding: JSON` gives Istio's default JSON fields). Other fields are refused by name
rather than ignored: Lattice's equivalents of the rest of MeshConfig are `lattice server` options.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from lattice.api.durations import parse_duration
from lattice.api.errors import FieldError, ValidationError
from lattice.api.networking import IstioSpec

# HTTP status codes Envoy's HttpStatus enum names (what Istio accepts for statusOnError).
_STATUS_CODES = frozenset(
    {
        100,
        200,
        201,
        202,
        203,
        204,
        205,
        206,
        207,
        208,
        226,
        300,
        301,
        302,
        303,
        304,
        305,
        307,
        308,
        400,
        401,
        402,
        403,
        404,
        405,
        406,
        407,
        408,
        409,
        410,
        411,
        412,
        413,
        414,
        415,
        416,
        417,
        421,
        422,
        423,
        424,
        426,
        428,
        429,
        431,
        500,
        501,
        502,
        503,
        504,
        505,
        506,
        507,
        508,
        510,
        511,
    }
)
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


def _check_host(v: str) -> str:
    if not _HOST.match(v):
        raise ValueError(f"{v!r} is not a host name, [<namespace>/]<hostname>, or an IP address")
    return v


class Collector(IstioSpec):
    """Where a trace provider sends spans: what opentelemetry and zipkin share."""

    service: str
    port: int = Field(ge=1, le=65535)
    max_tag_length: int = Field(default=256, ge=1)

    _service = field_validator("service")(_check_host)

    @property
    def host(self) -> str:
        """The host name without Istio's optional `<namespace>/` qualifier."""
        return self.service.rpartition("/")[2]


class OpenTelemetryProvider(Collector):
    http: Any = None
    resource_detectors: Any = None
    dynatrace_sampler: Any = None

    @field_validator("http")
    @classmethod
    def _no_http(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "OTLP over HTTP is not supported: Lattice's proxies export spans over OTLP/gRPC to service:port; "
                "remove `http`"
            )
        return v

    @field_validator("resource_detectors", "dynatrace_sampler")
    @classmethod
    def _not_supported(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "not supported: spans carry the proxy's service name and Istio's canonical service tags; sampling "
                "is `randomSamplingPercentage`"
            )
        return v


class ZipkinProvider(Collector):
    path: str = "/api/v2/spans"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must begin with '/', found {v!r}")
        return v


class LogFormat(IstioSpec):
    text: str | None = None
    labels: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> LogFormat:
        if (self.text is None) == (self.labels is None):
            raise ValueError(
                "set exactly one of text (an Envoy format string) or labels (JSON keys and their Envoy command "
                "operators)"
            )
        return self


class EnvoyFileAccessLog(IstioSpec):
    path: str
    log_format: LogFormat | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_log_path(v)


class PrometheusProvider(IstioSpec):
    pass


def check_log_path(v: str) -> str:
    """An absolute file path such as /dev/stdout: proxies run in their own directories, so a relative
    one would scatter logs."""
    if not v.startswith("/"):
        raise ValueError(f"{v!r} is not an absolute path; write e.g. /dev/stdout or /var/log/lattice/access.log")
    return v


# Istio's other provider kinds, each refused by name.
_UNSUPPORTED_KINDS = (
    "envoy_otel_als",
    "envoy_http_als",
    "envoy_tcp_als",
    "skywalking",
    "datadog",
    "stackdriver",
    "lightstep",
    "sds",
    "opencensus",
)
_KINDS = (
    "envoy_ext_authz_http",
    "envoy_ext_authz_grpc",
    "opentelemetry",
    "zipkin",
    "envoy_file_access_log",
    "prometheus",
)
RESERVED_PROVIDERS = ("lattice",)  # the control plane's own trace collector


class ExtensionProvider(IstioSpec):
    name: str = Field(min_length=1)
    envoy_ext_authz_http: ExtAuthzHttp | None = None
    envoy_ext_authz_grpc: ExtAuthzGrpc | None = None
    opentelemetry: OpenTelemetryProvider | None = None
    zipkin: ZipkinProvider | None = None
    envoy_file_access_log: EnvoyFileAccessLog | None = None
    prometheus: PrometheusProvider | None = None
    envoy_otel_als: Any = None
    envoy_http_als: Any = None
    envoy_tcp_als: Any = None
    skywalking: Any = None
    datadog: Any = None
    stackdriver: Any = None
    lightstep: Any = None
    sds: Any = None
    opencensus: Any = None

    @field_validator(*_UNSUPPORTED_KINDS)
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "this provider kind is not supported; Lattice supports envoyExtAuthzHttp, envoyExtAuthzGrpc, "
                "opentelemetry, zipkin, envoyFileAccessLog and prometheus"
            )
        return v

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_PROVIDERS:
            raise ValueError(f"{v!r} is the name of the control plane's own trace collector; choose another name")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ExtensionProvider:
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of envoyExtAuthzHttp or envoyExtAuthzGrpc (external authorizers), opentelemetry or "
                "zipkin (tracing), envoyFileAccessLog (access logs) or prometheus (metrics)"
            )
        if self.prometheus is not None and self.name != "prometheus":
            raise ValueError(
                f"a prometheus provider must be named 'prometheus' (the name Telemetry metrics use), not {self.name!r}"
            )
        return self

    @property
    def authorizer(self) -> ExtAuthzProvider | None:
        """The external authorizer, for envoyExtAuthzHttp and envoyExtAuthzGrpc providers."""
        return self.envoy_ext_authz_http or self.envoy_ext_authz_grpc


class DefaultProviders(IstioSpec):
    tracing: list[str] = Field(default_factory=list)
    metrics: list[str] | None = None  # unset: prometheus, as Istio's default mesh config
    access_logging: list[str] = Field(default_factory=list)

    @field_validator("tracing")
    @classmethod
    def _one_tracer(cls, v: list[str]) -> list[str]:
        if len(v) > 1:
            raise ValueError("at most one tracing provider: spans of one request go to one collector")
        return v

    @field_validator("metrics")
    @classmethod
    def _prometheus(cls, v: list[str] | None) -> list[str] | None:
        others = [name for name in v or () if name != "prometheus"]
        if others:
            raise ValueError(
                f"metrics provider {', '.join(map(repr, others))} is not supported: Lattice's sidecars expose "
                "metrics for Prometheus only (`prometheus`)"
            )
        return v


class ProxyTracing(IstioSpec):
    sampling: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)


class GatewayTopology(IstioSpec):
    # Proxies in front of a gateway that append X-Forwarded-For: the client is that many hops
    # from the right of the header (0: the TCP peer, and X-Forwarded-For is believed by no one).
    num_trusted_proxies: int = Field(default=0, ge=0, le=32)


class ProxyConfig(IstioSpec):
    tracing: ProxyTracing | None = None
    gateway_topology: GatewayTopology | None = None


class PathNormalization(IstioSpec):
    # Istio's modes, and DEFAULT: Lattice's own, stricter than any of them (translate/paths.py).
    normalization: Literal["DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"] = "DEFAULT"


class MeshConfig(IstioSpec):
    access_log_file: str = ""
    access_log_encoding: Literal["TEXT", "JSON"] = "TEXT"
    access_log_format: str = ""
    enable_tracing: bool = True
    default_providers: DefaultProviders | None = None
    default_config: ProxyConfig | None = None
    extension_providers: list[ExtensionProvider] = Field(default_factory=list)
    path_normalization: PathNormalization | None = None

    @field_validator("access_log_file")
    @classmethod
    def _log_file(cls, v: str) -> str:
        return check_log_path(v) if v else v

    @field_validator("access_log_format")
    @classmethod
    def _log_format(cls, v: str, info: ValidationInfo) -> str:
        if v and info.data.get("access_log_encoding") == "JSON":
            json_labels(v)
        return v

    @property
    def access_log_labels(self) -> dict[str, str]:
        """JSON encoding: accessLogFormat's keys and Envoy command operators (none: Istio's default fields)."""
        return (
            json_labels(self.access_log_format) if self.access_log_encoding == "JSON" and self.access_log_format else {}
        )

    @property
    def sampling(self) -> float | None:
        return self.default_config.tracing.sampling if self.default_config and self.default_config.tracing else None

    @field_validator("extension_providers")
    @classmethod
    def _unique(cls, v: list[ExtensionProvider]) -> list[ExtensionProvider]:
        names = [p.name for p in v]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"extension provider names must be unique; repeated: {', '.join(duplicates)}")
        return v


def json_labels(text: str) -> dict[str, str]:
    """accessLogFormat with JSON encoding, as Istio reads it: a JSON object of field names and Envoy
    command operators, e.g. {"path": "%REQ(:PATH)%"}."""
    try:
        labels = json.loads(text)
    except ValueError:
        labels = None
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(
            'with accessLogEncoding JSON, accessLogFormat must be a JSON object of field names and Envoy command '
            'operators, e.g. {"path": "%REQ(:PATH)%"}'
        )
    return labels


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


def _message(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        return "unknown field, or a MeshConfig field Lattice does not read (use the `lattice server` options)"
    if err["type"] == "extra_forbidden":
        return "unknown field, or one Lattice does not support"
    return err["msg"].removeprefix("Value error, ")
