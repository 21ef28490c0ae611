"""Istio's standard metrics, as Prometheus text, from Envoy's own counts of them.

Names, labels and buckets are Istio's, so its Grafana dashboards and Kiali-style queries work on a
Lattice mesh unchanged. Envoy counts every request (translate/istio_stats.py); `IstioMetrics.render`
turns one read of Envoy's stats (agent/envoy_stats.py) into Istio's series when Prometheus
scrapes, series by series: several Envoy series that name the same Istio series (a caller's
claimed workload that is not believed, a removed label) are summed. A workload's Telemetry may
switch metrics off (Envoy then counts nothing for them) and relabel them: UPSERT values are
Envoy tags, REMOVE is applied here (`MetricRule`s, read from the listeners the agent relays).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from lattice.agent import envoy_stats
from lattice.agent.access_log import UNKNOWN, Peer
from lattice.mesh import telemetry as t
from lattice.mesh.telemetry import MetricRule, TagOverride, Telemetry
from lattice.translate import agent_names as s

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
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
CLUSTER = "Kubernetes"  # Istio's default cluster id, which its dashboards' source_cluster/destination_cluster carry
TCP_METRICS = frozenset(s.TCP_STATS)
# Each Istio metric: the Envoy stats it is read from (the first present wins), and what it reads.
SOURCES = {
    t.REQUEST_COUNT: ((s.COUNT_AND_DURATION, s.COUNT), "count"),
    t.REQUEST_DURATION: ((s.COUNT_AND_DURATION, s.DURATION), "ms"),
    t.REQUEST_SIZE: ((s.REQUEST_BYTES,), "bytes"),
    t.RESPONSE_SIZE: ((s.RESPONSE_BYTES,), "bytes"),
    t.TCP_SENT: ((s.TCP_SENT,), "counter"),
    t.TCP_RECEIVED: ((s.TCP_RECEIVED,), "counter"),
    t.TCP_OPENED: ((s.TCP_OPENED,), "counter"),
    t.TCP_CLOSED: ((s.TCP_CLOSED,), "counter"),
}


class IstioMetrics:
    def __init__(self, cluster: str = CLUSTER) -> None:
        self.cluster = cluster
        self.telemetry = Telemetry(tracing=None)
        self._removed: dict[tuple[str, str], tuple[str, ...]] = {}
        self._upserted: dict[tuple[str, str], frozenset[str]] = {}

    def set_rules(self, rules: Iterable[MetricRule]) -> None:
        """The workload's metric rules (from its Telemetry): which labels each metric drops."""
        self.telemetry = Telemetry(metrics=tuple(rules), tracing=None)
        self._removed, self._upserted = {}, {}
        for metric in t.METRICS:
            for reporter in ("source", "destination"):
                overrides = self.telemetry.tag_overrides(metric, reporter)
                self._removed[(metric, reporter)] = tuple(name for name, o in overrides.items() if o.remove)
                # The labels a series' `~ov_` tags may set: those the Telemetry upserts. A tag value a
                # caller chose (its peer header, its content-type) cannot add another by imitating
                # the tag syntax.
                self._upserted[(metric, reporter)] = frozenset(name for name, o in overrides.items() if not o.remove)

    def render(self, reading: envoy_stats.Reading) -> str:
        lines: list[str] = []
        known = _known_callers(reading)
        for metric in t.METRICS:
            stats, kind = SOURCES[metric]
            series = self._series(reading, metric, stats, kind, known)
            if not series:
                continue
            prometheus_kind, help_text = HELP[metric]
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {prometheus_kind}"]
            for key, value in series.items():
                labels = _format(key)
                if prometheus_kind == "counter":
                    lines.append(f"{metric}{{{labels}}} {_number(value)}")
                    continue
                buckets = DURATION_BUCKETS if kind == "ms" else SIZE_BUCKETS
                scale = 1 / 1000 if kind == "ms" else 1
                for bound, running in _cumulative(value, buckets, scale):
                    lines.append(f'{metric}_bucket{{{labels},le="{_number(bound)}"}} {running}')
                count = sum(c for _, _, c in value)
                total = sum(envoy_stats.mid(lower, width) * c for lower, width, c in value) * scale
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"{metric}_sum{{{labels}}} {_number(round(total, 6))}")
                lines.append(f"{metric}_count{{{labels}}} {count}")
        return "\n".join(lines) + "\n" if lines else ""

    def _series(self, reading: envoy_stats.Reading, metric: str, stats: tuple, kind: str, known: dict) -> dict:
        """Istio's series of one metric: label tuple -> count, or merged histogram bins."""
        tcp = metric in TCP_METRICS
        source: dict = reading.counters if kind == "counter" else reading.histograms  # by `kind`
        name = next((n for n in stats if any(stat == n for stat, _ in source)), None)
        out: dict[tuple, Any] = {}  # counts (counter, count) or merged bins (histogram), by `kind`
        for (stat, tags), value in source.items():
            if stat != name:
                continue
            e = envoy_stats.ends(tags, "tcp" if tcp else "")
            if tcp and e.reporter == "destination" and e.source.workload == UNKNOWN:
                e = _named(e, known)
            if not self.telemetry.metric_enabled(metric, e.reporter):
                continue
            labels = self._labels(e)
            if tcp:
                for dropped in TCP_DROPPED:
                    labels.pop(dropped)
            for removed in self._removed.get((metric, e.reporter), ()):
                labels.pop(removed, None)
            upserted = self._upserted.get((metric, e.reporter), frozenset())
            labels.update((k, v) for k, v in envoy_stats.overrides(tags).items() if k in upserted)
            key = tuple(labels.items())
            if kind == "counter":
                out[key] = out.get(key, 0) + value
            elif kind == "count":
                out[key] = out.get(key, 0) + sum(c for _, _, c in value)
            else:
                out[key] = _merge(out.get(key, ()), value)
        return out

    def _labels(self, e: envoy_stats.Ends) -> dict:
        src, dst, service = e.source, e.destination, e.service
        parts = service.split(".")
        return {
            "reporter": e.reporter,
            "source_workload": src.workload,
            "source_workload_namespace": src.namespace,
            "source_principal": src.principal,
            "source_app": src.app,
            "source_version": src.version,
            "source_canonical_service": src.canonical_service,
            "source_canonical_revision": src.canonical_revision,
            "source_cluster": self.cluster if src.workload != UNKNOWN else UNKNOWN,
            "destination_workload": dst.workload,
            "destination_workload_namespace": dst.namespace,
            "destination_principal": dst.principal,
            "destination_app": dst.app,
            "destination_version": dst.version,
            "destination_canonical_service": dst.canonical_service,
            "destination_canonical_revision": dst.canonical_revision,
            "destination_service": service,
            "destination_service_name": parts[0] if service != UNKNOWN else UNKNOWN,
            "destination_service_namespace": parts[1]
            if len(parts) > 2 and parts[2] == "svc"
            else (dst.namespace if service != UNKNOWN else UNKNOWN),
            "destination_cluster": self.cluster if dst.workload != UNKNOWN else UNKNOWN,
            "request_protocol": e.protocol,
            "response_code": str(e.code),
            "grpc_response_status": e.grpc,
            "response_flags": e.flags,
            "connection_security_policy": e.policy if e.reporter == "destination" else UNKNOWN,
        }


def _known_callers(reading: envoy_stats.Reading) -> dict[str, Peer | None]:
    """Principal -> the one workload known to hold it (from the believed callers and the answering
    endpoints in this reading), for TCP callers, whose sidecars send no header; None if several."""
    out: dict[str, Peer | None] = {}
    for stat, tags in reading.histograms:
        if stat not in (s.COUNT_AND_DURATION, s.COUNT, s.DURATION):
            continue
        e = envoy_stats.ends(tags)
        for peer in (e.source, e.destination):
            if peer.workload != UNKNOWN and peer.principal != UNKNOWN:
                seen = out.setdefault(peer.principal, peer)
                if seen is not None and seen != peer:
                    out[peer.principal] = None
    return out


def _named(e: envoy_stats.Ends, known: dict) -> envoy_stats.Ends:
    """A TCP caller named from its principal, when one workload is known to hold it."""
    peer = known.get(e.source.principal)
    return e if peer is None else replace(e, source=peer)


def _merge(a: envoy_stats.Bins, b: envoy_stats.Bins) -> envoy_stats.Bins:
    if not a:
        return b
    merged: dict[tuple[float, float], int] = {}
    for lower, width, count in (*a, *b):
        merged[(lower, width)] = merged.get((lower, width), 0) + count
    return tuple((lower, width, count) for (lower, width), count in merged.items())


def _cumulative(bins: envoy_stats.Bins, buckets: tuple, scale: float):
    """Counts at or below each bucket bound: a bin counts once its whole width is under the bound
    (Istio's bounds are two significant digits, as Envoy's bins are, so none straddles one)."""
    uppers = sorted(((lower + width) * scale, count) for lower, width, count in bins)
    running, i = 0, 0
    for bound in buckets:
        while i < len(uppers) and uppers[i][0] <= bound * (1 + 1e-9):
            running += uppers[i][1]
            i += 1
        yield bound, running


_OURS = f"envoy_{s.PREFIX}_"


def envoy_text(text: str) -> str:
    """Envoy's Prometheus text without the raw series Istio's metrics are named from."""
    if _OURS not in text:
        return text
    kept = [line for line in text.splitlines() if _OURS not in line[:80]]
    return "\n".join(kept) + "\n" if kept else ""


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
