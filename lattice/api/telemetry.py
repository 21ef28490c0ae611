"""Istio `telemetry.istio.io` Telemetry (v1alpha1 and v1 share one schema): which metrics, access
logs and traces the selected workloads' sidecars produce.

Field names are Istio's (camelCase); anything not modelled here is refused by name (see `meta.Spec`).
Checks follow Istio's validation (a tag override needs a value to UPSERT and none to REMOVE;
sampling is a percentage) and add Lattice's limits, each refused with its reason: metrics go to
Prometheus only, gRPC message counts and custom metrics do not exist, a tag override's value is an
expression of `lattice.api.telemetry_expr`'s subset, a tracing rule names at most one provider.
Provider names are not checked against the mesh config here (resources are validated without it);
`lattice analyze` warns about unknown ones. Which resources apply to a workload and how they
combine is decided in `lattice.mesh.telemetry`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lattice.api.errors import FieldError
from lattice.api.networking import IstioSpec
from lattice.api.constants import PROMETHEUS
from lattice.api.security import WorkloadSelector
from lattice.api.telemetry_expr import parse as parse_expression

WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
# The Telemetry API's metric names that Lattice's sidecars report (each maps to an istio_* metric).
METRICS = (
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
)
_GRPC_METRICS = ("GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES")
# Istio's standard metric labels: what a tag override may REMOVE (UPSERT may also add a new one).
STANDARD_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_CORE_GROUPS = ("", "core")


class ProviderRef(IstioSpec):
    name: str = Field(min_length=1)


class WorkloadModeSelector(IstioSpec):
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class TelemetryTargetReference(IstioSpec):
    """A Service whose workloads' sidecars the Telemetry configures (Istio's PolicyTargetReference)."""

    group: str = ""
    kind: str
    name: str = Field(min_length=1)
    namespace: str | None = None

    @model_validator(mode="after")
    def _a_service(self) -> TelemetryTargetReference:
        if self.group not in _CORE_GROUPS or self.kind != "Service":
            raise ValueError(
                f"target {self.group or 'core'}/{self.kind} is not supported: Lattice attaches a Telemetry to the "
                "sidecars of a Service (group: \"\", kind: Service); Istio attaches to a Gateway or ServiceEntry "
                "only on Gateway API gateways and waypoint proxies, which Lattice does not run"
            )
        return self


# Tracing


class LiteralTag(IstioSpec):
    value: str


class EnvironmentTag(IstioSpec):
    name: str = Field(min_length=1)
    default_value: str = ""


class HeaderTag(IstioSpec):
    name: str = Field(min_length=1)
    default_value: str = ""

    @field_validator("name")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _HEADER.match(v):
            raise ValueError(f"{v!r} is not a header name")
        return v


class CustomTag(IstioSpec):
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: HeaderTag | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> CustomTag:
        given = [k for k in ("literal", "environment", "header") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of literal, environment or header (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return "literal" if self.literal else "environment" if self.environment else "header"


class Tracing(IstioSpec):
    match: WorkloadModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    random_sampling_percentage: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    disable_span_reporting: bool | None = None
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict)
    # Envoy samples on the x-request-id's hash by default, so a request is traced at every hop or at none.
    use_request_id_for_trace_sampling: bool | None = None

    @field_validator("providers")
    @classmethod
    def _one_provider(cls, v: list[ProviderRef]) -> list[ProviderRef]:
        if len(v) > 1:
            raise ValueError(
                "at most one provider per tracing rule (as in Istio): spans of one request go to one collector"
            )
        return v

    @field_validator("custom_tags")
    @classmethod
    def _tag_names(cls, v: dict[str, CustomTag]) -> dict[str, CustomTag]:
        if any(not name for name in v):
            raise ValueError("a custom tag name must be a non-empty string")
        return v

    @field_validator("use_request_id_for_trace_sampling")
    @classmethod
    def _request_id(cls, v: bool | None) -> bool | None:
        if v is False:
            raise ValueError(
                "false is not supported: Lattice's sidecars always sample on x-request-id (Envoy's default), so a "
                "request is traced at all its hops or none"
            )
        return v

    @model_validator(mode="after")
    def _one_side(self) -> Tracing:
        # Both sides of a proxy trace with one provider and one rate; a rule for one side can
        # only switch that side's spans off or on.
        if self.mode != "CLIENT_AND_SERVER":
            extra = [
                f
                for f, v in (
                    ("providers", self.providers),
                    ("randomSamplingPercentage", self.random_sampling_percentage),
                    ("customTags", self.custom_tags),
                )
                if v
            ]
            if extra:
                raise ValueError(
                    f"a tracing rule for one side (match.mode {self.mode}) may only set disableSpanReporting; move "
                    f"{', '.join(extra)} to a rule for CLIENT_AND_SERVER"
                )
        return self

    @property
    def mode(self) -> str:
        return self.match.mode if self.match else "CLIENT_AND_SERVER"


# Metrics


class MetricSelector(IstioSpec):
    metric: str = "ALL_METRICS"
    custom_metric: Any = None
    mode: WorkloadMode = "CLIENT_AND_SERVER"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v in _GRPC_METRICS:
            raise ValueError(f"{v} is not supported: Lattice's sidecars do not count gRPC messages, only requests")
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; use one of {', '.join(METRICS)}")
        return v

    @field_validator("custom_metric")
    @classmethod
    def _no_custom(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "custom metrics are not supported: overrides apply to Istio's standard metrics (set `metric`)"
            )
        return v


class TagOverride(IstioSpec):
    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str | None = None

    @model_validator(mode="after")
    def _value(self) -> TagOverride:
        if self.operation == "UPSERT":
            if not self.value:
                raise ValueError("value must be set when operation is UPSERT")
            parse_expression(self.value)
        elif self.value:
            raise ValueError("value must not be set when operation is REMOVE")
        return self


class MetricsOverrides(IstioSpec):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)

    @field_validator("tag_overrides")
    @classmethod
    def _labels(cls, v: dict[str, TagOverride]) -> dict[str, TagOverride]:
        for name, override in v.items():
            if not _LABEL.match(name) or name.startswith("__"):
                raise ValueError(
                    f"{name!r} is not a Prometheus label name: letters, digits and '_', not starting with a digit "
                    "or '__'"
                )
            if override.operation == "REMOVE" and name not in STANDARD_LABELS:
                raise ValueError(
                    f"cannot REMOVE {name!r}: it is not one of Istio's standard labels ({', '.join(STANDARD_LABELS)})"
                )
        return v

    @property
    def metric(self) -> str:
        return self.match.metric if self.match else "ALL_METRICS"

    @property
    def mode(self) -> str:
        return self.match.mode if self.match else "CLIENT_AND_SERVER"


class Metrics(IstioSpec):
    providers: list[ProviderRef] = Field(default_factory=list)
    overrides: list[MetricsOverrides] = Field(default_factory=list)
    reporting_interval: Any = None

    @field_validator("providers")
    @classmethod
    def _prometheus(cls, v: list[ProviderRef]) -> list[ProviderRef]:
        others = [p.name for p in v if p.name != PROMETHEUS]
        if others:
            raise ValueError(
                f"metrics provider {', '.join(map(repr, others))} is not supported: Lattice's sidecars expose "
                "Istio's metrics for Prometheus only (provider `prometheus`)"
            )
        return v

    @field_validator("reporting_interval")
    @classmethod
    def _no_interval(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "not supported: a sidecar's metrics are counted as traffic flows and read when Prometheus scrapes; "
                "there is no reporting period to set"
            )
        return v


# Access logging


class AccessLogFilter(IstioSpec):
    expression: str = Field(min_length=1)

    @field_validator("expression")
    @classmethod
    def _balanced(cls, v: str) -> str:
        return check_cel_shape(v)


class AccessLogging(IstioSpec):
    match: WorkloadModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    disabled: bool | None = None
    filter: AccessLogFilter | None = None

    @property
    def mode(self) -> str:
        return self.match.mode if self.match else "CLIENT_AND_SERVER"


def check_cel_shape(expr: str) -> str:
    """Catch what would make Envoy refuse a CEL filter (and so the whole listener) before it is
    stored: unclosed quotes and unbalanced brackets. Envoy parses the rest."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote = ""
    escaped = False
    for ch in expr:
        if escaped:
            escaped = False
        elif quote:
            escaped, quote = ch == "\\", "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in closing and (not stack or stack.pop() != closing[ch]):
            raise ValueError(f"CEL expression {expr!r} has an unmatched {ch!r}")
    if quote:
        raise ValueError(f"CEL expression {expr!r} has an unclosed string")
    if stack:
        raise ValueError(f"CEL expression {expr!r} has an unclosed {stack[-1]!r}")
    return expr


class TelemetrySpec(IstioSpec):
    selector: WorkloadSelector | None = None
    target_ref: TelemetryTargetReference | None = None
    target_refs: list[TelemetryTargetReference] = Field(default_factory=list)
    tracing: list[Tracing] = Field(default_factory=list)
    metrics: list[Metrics] = Field(default_factory=list)
    access_logging: list[AccessLogging] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way_to_select(self) -> TelemetrySpec:
        if self.target_ref is not None and self.target_refs:
            raise ValueError("set targetRef or targetRefs, not both")
        if self.selector is not None and self.targets:
            raise ValueError("set selector or targetRef(s), not both (as in Istio)")
        return self

    @property
    def match_labels(self) -> dict[str, str]:
        """The selector's labels; empty (and no targets) means namespace- or mesh-wide."""
        return self.selector.match_labels if self.selector else {}

    @property
    def targets(self) -> list[TelemetryTargetReference]:
        return [self.target_ref] if self.target_ref is not None else list(self.target_refs)

    @property
    def services(self) -> frozenset[str]:
        """Names of the Services whose workloads this Telemetry selects (by targetRef)."""
        return frozenset(t.name for t in self.targets)

    @property
    def scoped(self) -> bool:
        """Selects workloads (by labels or Service), rather than a whole namespace or the mesh."""
        return bool(self.match_labels or self.targets)

    @classmethod
    def metadata_errors(cls, metadata, spec: TelemetrySpec | None) -> list[FieldError]:
        """A targetRef names a Service of the Telemetry's own namespace (Istio refuses others too)."""
        if spec is None:
            return []
        field = "targetRef" if spec.target_ref is not None else "targetRefs"
        return [
            FieldError(
                f"spec.{field}" + ("" if spec.target_ref is not None else f"[{i}]") + ".namespace",
                f"must be the Telemetry's own namespace {metadata.namespace!r} or left out",
            )
            for i, t in enumerate(spec.targets)
            if t.namespace not in (None, metadata.namespace)
        ]
