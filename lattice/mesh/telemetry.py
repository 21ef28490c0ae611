"""What telemetry one proxy produces: metrics, access logs and tracing, resolved for that workload.

The translator reads only `Telemetry` (never the resources it came from): which metrics each side
reports and with which tag overrides, which access logs to write where, and where spans go at what
sampling rate. `telemetry_for` resolves it from the mesh defaults (`MeshTelemetry`, from MeshConfig:
`lattice server --mesh-config`) and the Telemetry resources that select the workload.

Istio's rules. Three scopes: the root namespace's Telemetry without selector (mesh), the
workload's namespace's Telemetry without selector (namespace), and one in the workload's namespace
whose `selector` matches its labels or whose `targetRefs` name its Service (workload). Several at
one scope: the oldest applies. Then, section by section:
- metrics: overrides accumulate, mesh first, so a more specific rule wins where they overlap; an
  override that does not set `disabled` leaves the metric as the less specific rules left it;
- tracing: each field comes from the most specific rule that sets it (provider, else
  `defaultProviders.tracing`, else the embedded collector `lattice`; sampling, else
  `defaultConfig.tracing.sampling`); custom tags merge; `disableSpanReporting` per side;
  `enableTracing: false` turns tracing off whatever the resources say;
- access logs, per side (client, server): the most specific scope with a rule for that side
  decides it; a rule naming no provider uses the providers the previous rule named, or the
  defaults (`envoy` when `accessLogFile` is set, plus `defaultProviders.accessLogging`), which are
  also what a side gets when no Telemetry configures it.
A provider the mesh config does not declare (and that is not built in: `envoy`, `prometheus`,
`lattice`) turns its part off; `lattice analyze` warns about it (`provider_problems`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol, TypeVar

from lattice.api.constants import PROMETHEUS
from lattice.mesh.workload import Workload

if TYPE_CHECKING:  # the schemas are only read here, never built: a sidecar agent loads no pydantic for them
    from lattice.api import Resource
    from lattice.api.mesh_config import MeshConfig
    from lattice.api.telemetry import MetricsOverrides, TelemetrySpec

T = TypeVar("T")

# Istio's metric names (the Telemetry API's `metric` enum maps onto these).
REQUEST_COUNT = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_SIZE = "istio_request_bytes"
RESPONSE_SIZE = "istio_response_bytes"
TCP_SENT = "istio_tcp_sent_bytes_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_CLOSED = "istio_tcp_connections_closed_total"
METRICS = (REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE, TCP_SENT, TCP_RECEIVED, TCP_OPENED, TCP_CLOSED)

EMBEDDED = ""  # the tracing provider name of the control plane's own collector
DEFAULT_SAMPLING = 1.0  # percent of requests traced when nothing says otherwise (Istio's default)
# Providers that always exist: the embedded collector and the file access log at accessLogFile
# (and `prometheus`, the only metrics provider).
LATTICE = "lattice"
ENVOY = "envoy"
SIDES = ("CLIENT", "SERVER")
# The Telemetry API's metric names; None is every metric.
METRIC_NAMES = {
    "ALL_METRICS": None,
    "REQUEST_COUNT": REQUEST_COUNT,
    "REQUEST_DURATION": REQUEST_DURATION,
    "REQUEST_SIZE": REQUEST_SIZE,
    "RESPONSE_SIZE": RESPONSE_SIZE,
    "TCP_OPENED_CONNECTIONS": TCP_OPENED,
    "TCP_CLOSED_CONNECTIONS": TCP_CLOSED,
    "TCP_SENT_BYTES": TCP_SENT,
    "TCP_RECEIVED_BYTES": TCP_RECEIVED,
}
_SIDE = {"source": "CLIENT", "destination": "SERVER"}


@dataclass(frozen=True)
class TagOverride:
    """One label of one metric: removed, or set to an expression's value (api/telemetry_expr.py)."""

    name: str
    remove: bool = False
    value: str = ""  # the expression, when not removed


@dataclass(frozen=True)
class MetricRule:
    """Istio's MetricsOverrides: for `metric` (None: all) on `mode`'s side, off or relabelled."""

    metric: str | None
    mode: str = "CLIENT_AND_SERVER"  # CLIENT (reporter=source), SERVER (reporter=destination) or both
    disabled: bool | None = False  # None: leaves the metric on or off as earlier rules left it
    tags: tuple[TagOverride, ...] = ()

    def applies(self, metric: str, reporter: str) -> bool:
        return (self.metric is None or self.metric == metric) and self.mode in (_SIDE[reporter], "CLIENT_AND_SERVER")


@dataclass(frozen=True)
class AccessLog:
    """One access log an Envoy writes itself: text lines (Istio's default format) or JSON lines."""

    path: str  # "/dev/stdout", or a file
    encoding: str = "TEXT"  # or JSON
    format: str = ""  # Envoy format string (TEXT), JSON object of fields (JSON), or "" for Istio's default
    filter: str = ""  # a CEL expression: only requests where it is true are logged
    mode: str = "CLIENT_AND_SERVER"  # which side logs
    provider: str = ""  # the extension provider it came from (ENVOY: accessLogFile's)

    def applies(self, reporter: str) -> bool:
        """Whether the `reporter` ("source": outbound, "destination": inbound) side writes it."""
        return self.mode in (_SIDE[reporter], "CLIENT_AND_SERVER")


@dataclass(frozen=True)
class Tracing:
    """Where spans go and how many requests are traced."""

    provider: str = EMBEDDED  # an extensionProvider's name, or EMBEDDED
    kind: str = "opentelemetry"  # or "zipkin" (B3 propagation)
    service: str = ""  # host of an external collector; "" for the embedded one
    port: int = 0
    path: str = ""  # zipkin's collector path
    sampling: float = DEFAULT_SAMPLING  # percent
    custom_tags: tuple[tuple[str, str, str], ...] = ()  # (tag, "literal"|"header"|"environment", value or header name)
    max_tag_length: int = 256
    mode: str = "CLIENT_AND_SERVER"  # which side reports spans: the other's are off (disableSpanReporting)
    custom_tag_defaults: tuple[tuple[str, str], ...] = ()  # (tag, value) when a header or environment tag is unset

    def applies(self, reporter: str) -> bool:
        """Whether the `reporter` ("source": outbound, "destination": inbound) side reports spans."""
        return self.mode in (_SIDE[reporter], "CLIENT_AND_SERVER")


@dataclass(frozen=True)
class Telemetry:
    """Everything one proxy reports."""

    metrics: tuple[MetricRule, ...] = ()  # later rules win over earlier ones (mesh, namespace, workload)
    access_logs: tuple[AccessLog, ...] = ()
    tracing: Tracing | None = field(default_factory=Tracing)  # None: no spans at all

    def metric_enabled(self, metric: str, reporter: str) -> bool:
        enabled = True
        for rule in self.metrics:
            if rule.applies(metric, reporter) and rule.disabled is not None:
                enabled = not rule.disabled
        return enabled

    def tag_overrides(self, metric: str, reporter: str) -> dict[str, TagOverride]:
        out: dict[str, TagOverride] = {}
        for rule in self.metrics:
            if rule.applies(metric, reporter):
                out.update({t.name: t for t in rule.tags})
        return out


DEFAULT = Telemetry()

# Latency histograms that sidecars fill and the control plane merges (`lattice stat`): bucket i
# holds (BASE * GROWTH**(i-1), BASE * GROWTH**i] milliseconds, so any percentile is within 10%.
GROWTH = 1.1
BASE = 0.01


_LOG_GROWTH = math.log(GROWTH)


def bucket_of(ms: float) -> int:
    return 0 if ms <= BASE else math.ceil(math.log(ms / BASE) / _LOG_GROWTH)


def bucket_bound(index: int) -> float:
    """The upper bound of bucket `index`, in milliseconds."""
    return BASE * GROWTH**index


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a {bucket: count} histogram, as its bucket's upper bound; None if empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(bucket_bound(index), 3)
    return round(bucket_bound(max(histogram)), 3)


@dataclass(frozen=True)
class MeshTelemetry:
    """MeshConfig's telemetry settings and providers (`lattice server --mesh-config`); the defaults
    are Istio's (TEXT access logs in its default format)."""

    access_log_file: str = ""  # "": no file log unless a Telemetry names `envoy` (then /dev/stdout)
    access_log_encoding: str = "TEXT"  # or JSON
    access_log_format: str = ""  # TEXT: an Envoy format string; JSON: a JSON object of fields; "": Istio's
    enable_tracing: bool = True
    sampling: float = DEFAULT_SAMPLING  # defaultConfig.tracing.sampling, percent
    default_tracing: tuple[str, ...] = ()  # defaultProviders.tracing; none: the embedded collector
    default_metrics: tuple[str, ...] = (PROMETHEUS,)  # defaultProviders.metrics; none: no metrics
    default_access_logging: tuple[str, ...] = ()  # defaultProviders.accessLogging
    tracers: tuple[Tracing, ...] = ()  # declared opentelemetry and zipkin providers (Tracing.provider: the name)
    access_loggers: tuple[AccessLog, ...] = ()  # declared envoyFileAccessLog providers (AccessLog.provider: the name)

    def tracer(self, name: str) -> Tracing | None:
        """Where provider `name` sends spans, before sampling and tags are set; None if unknown."""
        declared = next((t for t in self.tracers if t.provider == name), None)
        return declared or (Tracing() if name == LATTICE else None)

    def access_logger(self, name: str) -> AccessLog | None:
        """The log provider `name` writes (a declared one, or `envoy`: accessLogFile's); None if unknown."""
        declared = next((a for a in self.access_loggers if a.provider == name), None)
        if declared is not None or name != ENVOY:
            return declared
        return AccessLog(
            self.access_log_file or "/dev/stdout", self.access_log_encoding, self.access_log_format, provider=ENVOY
        )

    @property
    def default_access_logs(self) -> tuple[str, ...]:
        """The access log providers a side gets when no Telemetry configures it."""
        return tuple(dict.fromkeys(([ENVOY] if self.access_log_file else []) + list(self.default_access_logging)))


def mesh_telemetry(config: MeshConfig) -> MeshTelemetry:
    """The telemetry part of a MeshConfig, resolved once when the server starts."""
    defaults = config.default_providers
    tracers, loggers = [], []
    for p in config.extension_providers:
        collector = p.opentelemetry or p.zipkin
        if collector is not None:
            kind, path = ("zipkin", p.zipkin.path) if p.zipkin else ("opentelemetry", "")
            tracers.append(
                Tracing(
                    provider=p.name,
                    kind=kind,
                    service=collector.host,
                    port=collector.port,
                    path=path,
                    max_tag_length=collector.max_tag_length,
                )
            )
        elif p.envoy_file_access_log is not None:
            loggers.append(_file_logger(p.name, p.envoy_file_access_log))
    return MeshTelemetry(
        access_log_file=config.access_log_file,
        access_log_encoding=config.access_log_encoding,
        access_log_format=config.access_log_format,
        enable_tracing=config.enable_tracing,
        sampling=DEFAULT_SAMPLING if config.sampling is None else config.sampling,
        default_tracing=tuple(defaults.tracing) if defaults else (),
        default_metrics=(PROMETHEUS,) if defaults is None or defaults.metrics is None else tuple(defaults.metrics),
        default_access_logging=tuple(defaults.access_logging) if defaults else (),
        tracers=tuple(tracers),
        access_loggers=tuple(loggers),
    )


def _file_logger(name: str, spec) -> AccessLog:
    # No logFormat: Istio's default text format, as Istio writes it.
    fmt = spec.log_format
    if fmt is None:
        return AccessLog(spec.path, "TEXT", provider=name)
    if fmt.labels is not None:
        return AccessLog(spec.path, "JSON", json.dumps(fmt.labels), provider=name)
    return AccessLog(spec.path, "TEXT", fmt.text, provider=name)


# --- which Telemetry resources apply to a workload ----------------------------------------------


class Scopes(Protocol):
    """What resolving a workload's telemetry reads of a mesh snapshot (`MeshSnapshot` is one; this
    module sits below it, since the snapshot holds a `MeshTelemetry`)."""

    @property
    def telemetries(self) -> tuple[Resource, ...]: ...
    @property
    def root_namespace(self) -> str: ...
    @property
    def mesh_telemetry(self) -> MeshTelemetry: ...
    def memo(self, key: tuple, build: Callable[[], T]) -> T: ...


def telemetry_for(snapshot: Scopes, workload: Workload) -> Telemetry:
    """The telemetry `workload`'s proxy reports: mesh defaults, then Telemetry resources by scope.
    Workloads with the same resources in scope share one result per snapshot."""
    scopes = scopes_for(snapshot, workload)
    key = ("telemetry", *(r.key for r in scopes))
    return snapshot.memo(key, lambda: resolve(snapshot.mesh_telemetry, [r.spec for r in scopes]))


def scopes_for(snapshot: Scopes, workload: Workload) -> tuple[Resource, ...]:
    """The Telemetry resources that apply to `workload`, least specific first: mesh, namespace, workload."""
    index = snapshot.memo(("telemetry-by-namespace",), lambda: _by_namespace(snapshot.telemetries))
    root = snapshot.root_namespace
    own = index.get(workload.namespace, ())
    mesh = _oldest(r for r in index.get(root, ()) if not r.spec.scoped)
    namespace = None if workload.namespace == root else _oldest(r for r in own if not r.spec.scoped)
    selected = _oldest(r for r in own if _selects(r.spec, workload))
    return tuple(r for r in (mesh, namespace, selected) if r is not None)


def _by_namespace(resources: Iterable[Resource]) -> Mapping[str, tuple[Resource, ...]]:
    index: dict[str, list[Resource]] = defaultdict(list)
    for r in resources:  # oldest first, as the snapshot holds them
        index[r.namespace].append(r)
    return {ns: tuple(rs) for ns, rs in index.items()}


def _oldest(resources: Iterable[Resource]) -> Resource | None:
    return next(iter(resources), None)


def _selects(spec: TelemetrySpec, workload: Workload) -> bool:
    labels = spec.match_labels
    if labels:
        return all(workload.labels.get(k) == v for k, v in labels.items())
    return workload.service in spec.services


# --- how they combine -------------------------------------------------------------------------


def resolve(mesh: MeshTelemetry, specs: list[TelemetrySpec]) -> Telemetry:
    """The telemetry of `specs` (least specific first) over the mesh defaults."""
    return Telemetry(
        metrics=_metrics(mesh, specs), access_logs=_access_logs(mesh, specs), tracing=_tracing(mesh, specs)
    )


def _metrics(mesh: MeshTelemetry, specs: list[TelemetrySpec]) -> tuple[MetricRule, ...]:
    providers = mesh.default_metrics
    for spec in specs:
        for m in spec.metrics:
            providers = tuple(p.name for p in m.providers) or providers
    if PROMETHEUS not in providers:
        return (MetricRule(None, disabled=True),)
    return tuple(_rule(o) for spec in specs for m in spec.metrics for o in m.overrides)


def _rule(override: MetricsOverrides) -> MetricRule:
    tags = tuple(
        TagOverride(name, t.operation == "REMOVE", t.value or "") for name, t in sorted(override.tag_overrides.items())
    )
    return MetricRule(METRIC_NAMES[override.metric], override.mode, override.disabled, tags)


def _tracing(mesh: MeshTelemetry, specs: list[TelemetrySpec]) -> Tracing | None:
    provider = mesh.default_tracing[0] if mesh.default_tracing else LATTICE
    sampling, tags, off = mesh.sampling, {}, dict.fromkeys(SIDES, False)
    for rule in (rule for spec in specs for rule in spec.tracing):
        provider = rule.providers[0].name if rule.providers else provider
        sampling = sampling if rule.random_sampling_percentage is None else rule.random_sampling_percentage
        tags.update(rule.custom_tags)
        if rule.disable_span_reporting is not None:
            off.update(dict.fromkeys(_sides(rule.mode), rule.disable_span_reporting))
    base = mesh.tracer(provider)
    on = [side for side in SIDES if not off[side]]
    if not mesh.enable_tracing or base is None or not on:
        return None
    named = sorted(tags.items())
    return replace(
        base,
        sampling=sampling,
        mode=on[0] if len(on) == 1 else "CLIENT_AND_SERVER",
        custom_tags=tuple((name, tag.kind, _tag_value(tag)) for name, tag in named),
        custom_tag_defaults=tuple((name, _tag_default(tag)) for name, tag in named if _tag_default(tag)),
    )


def _tag_value(tag) -> str:
    return tag.literal.value if tag.literal else (tag.environment or tag.header).name


def _tag_default(tag) -> str:
    return "" if tag.literal else (tag.environment or tag.header).default_value


def _access_logs(mesh: MeshTelemetry, specs: list[TelemetrySpec]) -> tuple[AccessLog, ...]:
    chosen = {side: _side_logs(mesh, specs, side) for side in SIDES}
    out = []
    for name in dict.fromkeys([*chosen["CLIENT"], *chosen["SERVER"]]):
        base = mesh.access_logger(name)
        if base is None:
            continue
        client, server = chosen["CLIENT"].get(name), chosen["SERVER"].get(name)
        if client == server and client is not None:  # one of the two is set: `name` was chosen on a side
            out.append(replace(base, filter=client, mode="CLIENT_AND_SERVER"))
            continue
        out += [
            replace(base, filter=f, mode=side) for side, f in (("CLIENT", client), ("SERVER", server)) if f is not None
        ]
    return tuple(out)


def _side_logs(mesh: MeshTelemetry, specs: list[TelemetrySpec], side: str) -> dict[str, str]:
    """Provider name -> filter ("" for none) of the logs `side` writes."""
    parent = mesh.default_access_logs
    chosen: dict[str, str | None] = dict.fromkeys(parent, "")
    for spec in specs:
        scope: dict[str, str | None] = {}
        for rule in spec.access_logging:
            parent = tuple(p.name for p in rule.providers) or parent
            if side in _sides(rule.mode):
                expression = rule.filter.expression if rule.filter else ""
                scope.update(dict.fromkeys(parent, None if rule.disabled else expression))
        if any(side in _sides(rule.mode) for rule in spec.access_logging):
            chosen = scope  # the most specific scope that configures this side decides it
    return {name: f for name, f in chosen.items() if f is not None}


def _sides(mode: str) -> tuple[str, ...]:
    return SIDES if mode == "CLIENT_AND_SERVER" else (mode,)


# --- what `lattice analyze` warns about ---------------------------------------------------------


def provider_problems(mesh: MeshTelemetry, spec: TelemetrySpec) -> list[tuple[str, str]]:
    """(field path, message) for each provider `spec` names that the mesh config does not have,
    and for tracing configured while the mesh config turns tracing off."""
    out = []
    tracers = ", ".join([LATTICE, *(t.provider for t in mesh.tracers)])
    loggers = ", ".join([ENVOY, *(a.provider for a in mesh.access_loggers)])
    for i, rule in enumerate(spec.tracing):
        for j, p in enumerate(rule.providers):
            if mesh.tracer(p.name) is None:
                out.append(
                    (
                        f"spec.tracing[{i}].providers[{j}].name",
                        f"no tracing provider {p.name!r} in the mesh config (known: {tracers}); the workloads this "
                        "selects send no spans",
                    )
                )
    if spec.tracing and not mesh.enable_tracing:
        out.append(
            ("spec.tracing", "the mesh config sets enableTracing: false, so this tracing configuration has no effect")
        )
    for i, log_rule in enumerate(spec.access_logging):
        for j, p in enumerate(log_rule.providers):
            if mesh.access_logger(p.name) is None:
                out.append(
                    (
                        f"spec.accessLogging[{i}].providers[{j}].name",
                        f"no access log provider {p.name!r} in the mesh config (known: {loggers}); that log is not "
                        "written",
                    )
                )
    return out
