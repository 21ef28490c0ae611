"""Istio's standard metrics, kept by the agent from Envoy's access log stream.

Names, labels and buckets are Istio's, so its Grafana dashboards and Kiali-style queries work on a
Lattice mesh unchanged. One `IstioMetrics` per sidecar; `render()` gives Prometheus text, which
the agent's `/stats/prometheus` appends to Envoy's own statistics (one scrape target per workload).
A workload's Telemetry resources may switch metrics off or relabel them (`MetricRule`s, read from
the listeners the agent relays to Envoy).
"""

from __future__ import annotations

import bisect
from typing import Iterable

from lattice.agent.access_log import UNKNOWN, Request
from lattice.mesh import telemetry as t
from lattice.api import telemetry_expr
from lattice.mesh.telemetry import MetricRule, TagOverride, Telemetry

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
TCP_DROPPED = ("response_code", "grpc_response_status")  # Istio's TCP metrics have no response labels
DURATION_BUCKETS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)
HELP = {
    t.REQUEST_COUNT: ("counter", "Requests, by both ends and the response."),
    t.REQUEST_DURATION: ("histogram", "Request duration in milliseconds, first byte received to last byte sent."),
    t.REQUEST_SIZE: ("histogram", "Request size in bytes, headers and body."),
    t.RESPONSE_SIZE: ("histogram", "Response size in bytes, headers and body."),
    t.TCP_SENT: ("counter", "Bytes sent to the downstream during TCP connections."),
    t.TCP_RECEIVED: ("counter", "Bytes received from the downstream during TCP connections."),
    t.TCP_OPENED: ("counter", "TCP connections opened."),
    t.TCP_CLOSED: ("counter", "TCP connections closed."),
}
_PLAIN = (True, {}, {})  # a metric no rule touches
CLUSTER = "Kubernetes"  # Istio's default cluster id, which its dashboards' source_cluster/destination_cluster carry


class _Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple) -> None:
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.sum += value
        self.count += 1


class IstioMetrics:
    def __init__(self, trust_domain_cluster: str = CLUSTER) -> None:
        self.cluster = trust_domain_cluster
        self._counters: dict[str, dict[tuple, float]] = {
            m: {} for m in (t.REQUEST_COUNT, t.TCP_SENT, t.TCP_RECEIVED, t.TCP_OPENED, t.TCP_CLOSED)
        }
        self._histograms: dict[str, dict[tuple, _Histogram]] = {
            m: {} for m in (t.REQUEST_DURATION, t.REQUEST_SIZE, t.RESPONSE_SIZE)
        }
        self.telemetry = Telemetry(tracing=None)
        self._overrides: dict[tuple[str, str], tuple[bool, dict[str, TagOverride], dict]] = {}
        self._touched: set[str] = set()  # reporters some rule applies to (else the fast path)
        self._base: dict[
            tuple, tuple[dict, tuple]
        ] = {}  # labels per distinct (ends, service, response), as dict and as key

    def set_rules(self, rules: Iterable[MetricRule]) -> None:
        """The workload's metric rules (from its Telemetry); counts kept so far stay."""
        self.telemetry = Telemetry(metrics=tuple(rules), tracing=None)
        self._overrides = {}
        self._touched = {
            reporter
            for reporter in ("source", "destination")
            if any(rule.applies(m, reporter) for rule in self.telemetry.metrics for m in t.METRICS)
        }
        for metric in t.METRICS:
            for reporter in ("source", "destination"):
                overrides = self.telemetry.tag_overrides(metric, reporter)
                parsed = {name: telemetry_expr.parse(o.value) for name, o in overrides.items() if not o.remove}
                self._overrides[(metric, reporter)] = (
                    self.telemetry.metric_enabled(metric, reporter),
                    overrides,
                    parsed,
                )

    def observe(self, request: Request) -> None:
        r = request
        signature = (r.reporter, r.source, r.destination, r.service, r.protocol, r.code, r.grpc_status, r.flags, r.mtls)
        base = self._base.get(signature)
        if base is None:
            if len(self._base) > 10000:  # label sets are few; a flood of new peers must not grow this forever
                self._base.clear()
            labels = self._labels(request)
            if r.protocol == "tcp":
                for name in TCP_DROPPED:
                    labels.pop(name)
            base = self._base[signature] = (labels, tuple(labels.items()))
        if r.protocol == "tcp":
            self._tcp(request, base)
            return
        if r.reporter not in self._touched:  # no rule for this side: one key for all four metrics
            key = base[1]
            counters = self._counters[t.REQUEST_COUNT]
            counters[key] = counters.get(key, 0) + 1
            for metric, buckets, value in (
                (t.REQUEST_DURATION, DURATION_BUCKETS, r.duration_ms),
                (t.REQUEST_SIZE, SIZE_BUCKETS, r.request_bytes),
                (t.RESPONSE_SIZE, SIZE_BUCKETS, r.response_bytes),
            ):
                histogram = self._histograms[metric].get(key)
                if histogram is None:
                    histogram = self._histograms[metric][key] = _Histogram(buckets)
                histogram.observe(value)
            return
        self._count(t.REQUEST_COUNT, request, base, 1)
        self._observe(t.REQUEST_DURATION, request, base, request.duration_ms, DURATION_BUCKETS)
        self._observe(t.REQUEST_SIZE, request, base, request.request_bytes, SIZE_BUCKETS)
        self._observe(t.RESPONSE_SIZE, request, base, request.response_bytes, SIZE_BUCKETS)

    def _tcp(self, request: Request, base: tuple) -> None:
        if request.opened:
            self._count(t.TCP_OPENED, request, base, 1)
        if request.closed:
            self._count(t.TCP_CLOSED, request, base, 1)
        if request.sent:
            self._count(t.TCP_SENT, request, base, request.sent)
        if request.received:
            self._count(t.TCP_RECEIVED, request, base, request.received)

    def _labels(self, r: Request) -> dict:
        src, dst = r.source, r.destination
        service = r.service or UNKNOWN
        parts = service.split(".")
        return {
            "reporter": r.reporter,
            "source_workload": src.workload,
            "source_workload_namespace": src.namespace,
            "source_principal": src.principal,
            "source_app": src.app,
            "source_version": src.version,
            "source_cluster": self.cluster if src.workload != UNKNOWN else UNKNOWN,
            "destination_workload": dst.workload,
            "destination_workload_namespace": dst.namespace,
            "destination_principal": dst.principal,
            "destination_app": dst.app,
            "destination_version": dst.version,
            "destination_service": service,
            "destination_service_name": parts[0] if service != UNKNOWN else UNKNOWN,
            "destination_service_namespace": parts[1]
            if len(parts) > 2 and parts[2] == "svc"
            else (dst.namespace if service != UNKNOWN else UNKNOWN),
            "destination_cluster": self.cluster if dst.workload != UNKNOWN else UNKNOWN,
            "request_protocol": r.protocol,
            "response_code": str(r.code),
            "grpc_response_status": r.grpc_status,
            "response_flags": r.flags,
            "connection_security_policy": ("mutual_tls" if r.mtls else "none")
            if r.reporter == "destination"
            else UNKNOWN,
        }

    def _key(self, metric: str, request: Request, base: tuple) -> tuple | None:
        """The series key: the base labels as they are, or as the workload's overrides change them."""
        enabled, overrides, parsed = self._overrides.get((metric, request.reporter), _PLAIN)
        if not enabled:
            return None
        if not overrides:
            return base[1]
        labels = dict(base[0])
        record = None
        for name, override in overrides.items():
            if override.remove:
                labels.pop(name, None)
            else:
                record = record or _record(request)
                labels[name] = telemetry_expr.evaluate(parsed[name], record)
        return tuple(labels.items())

    def _count(self, metric: str, request: Request, base: tuple, amount: float) -> None:
        key = self._key(metric, request, base)
        if key is not None:
            counters = self._counters[metric]
            counters[key] = counters.get(key, 0) + amount

    def _observe(self, metric: str, request: Request, base: tuple, value: float, buckets: tuple) -> None:
        key = self._key(metric, request, base)
        if key is not None:
            histograms = self._histograms[metric]
            histogram = histograms.get(key)
            if histogram is None:
                histogram = histograms[key] = _Histogram(buckets)
            histogram.observe(value)

    def render(self) -> str:
        lines: list[str] = []
        for metric in t.METRICS:
            kind, help_text = HELP[metric]
            series = self._counters.get(metric) if kind == "counter" else self._histograms.get(metric)
            if not series:
                continue
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            for key, value in series.items():
                labels = _format(key)
                if kind == "counter":
                    lines.append(f"{metric}{{{labels}}} {_number(value)}")
                    continue
                running = 0
                for bound, count in zip(value.buckets, value.counts, strict=False):
                    running += count
                    lines.append(f'{metric}_bucket{{{labels},le="{_number(bound)}"}} {running}')
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {value.count}')
                lines.append(f"{metric}_sum{{{labels}}} {_number(value.sum)}")
                lines.append(f"{metric}_count{{{labels}}} {value.count}")
        return "\n".join(lines) + "\n" if lines else ""


def _record(r: Request) -> dict:
    """What a tag override's expression may read of a request (api/telemetry_expr.py)."""
    return {
        "method": r.method,
        "path": r.path,
        "host": r.authority,
        "scheme": "http",
        "protocol": r.protocol,
        "response_code": r.code,
        "source_principal": r.source.principal,
        "destination_principal": r.destination.principal,
        "upstream_address": "",
        "source_address": "",
        "destination_port": "",
        "headers": {},
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format(key: tuple) -> str:
    return ",".join(f'{name}="{_escape(str(value))}"' for name, value in key)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def rules_from_metadata(rules: list[dict]) -> list[MetricRule]:
    """The listener metadata's rules (translate/telemetry.rules_metadata) back into MetricRules."""
    out = []
    for rule in rules:
        tags = tuple(TagOverride(**tag) for tag in rule.pop("tags", ()))
        out.append(MetricRule(**rule, tags=tags))
    return out
