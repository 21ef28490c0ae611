"""The control plane's own metrics, served on `GET /metrics` in Prometheus' text format (0.0.4).

Parts:
- `Counter`, `Gauge`, `Histogram` — metric families with labels. `labels(...)` returns the child
  to update; children are kept, so an update is a dict lookup and an addition under a lock.
- `MetricRegistry` — the families in registration order, rendered for a scrape by `render()`.
- `ControlPlaneMetrics` — what the control plane exports, under Istio's names (pilot_*, citadel_*)
  wherever Istio has one, so existing dashboards work. The xDS status board, the pusher, the
  agents' API and the REST API report into it as things happen.

Rules: no client library, no dependency. Values the process already holds (connected proxies,
workloads, config, the root's expiry) are read at scrape time, never mirrored. Label values come
from bounded sets (xDS type, route pattern, status code), and nothing secret goes in one.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import logging
import math
import re
import threading
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Protocol

from lattice.server import process
from lattice.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE

log = logging.getLogger("lattice.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Istio's buckets for the same metrics, so dashboards built for Istio read ours alike.
CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)
PUSH_TIME_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)
CONFIG_SIZE_BUCKETS = (1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000)
# Prometheus clients' default buckets, for request durations.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Collect = Callable[[], "float | Mapping[tuple[str, ...], float] | None"]


class StatsSource(Protocol):
    """A component whose state a scrape reads: `stats()` names values in the component's own
    words (`connected_proxies`, `rejecting`, `workloads`, `config_resources`, `root_expires_at`);
    `ControlPlaneMetrics` alone knows which metric shows each. So this module needs none of them."""

    def stats(self) -> Mapping[str, Any]: ...


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, +Inf, -Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=False))


def _braced(text: str) -> str:
    return f"{{{text}}}" if text else ""


# --- families ---------------------------------------------------------------------------------


def _collected(found: float | Mapping[tuple[str, ...], float] | None, labelled: bool) -> dict[tuple[str, ...], float]:
    """A `collect()` answer as samples by label values: a mapping for a labelled family, one value otherwise."""
    if found is None:
        return {}
    if labelled != isinstance(found, Mapping):
        raise TypeError(f"collect() gave {type(found).__name__} for a {'' if labelled else 'un'}labelled family")
    return dict(found) if isinstance(found, Mapping) else {(): found}


class _Child(Protocol):
    """One label set's series in a family."""

    def render(self, name: str, out: list[str]) -> None: ...


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        for label in self.labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"{label!r} is not a valid label name for {name}")
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: object):
        """The child for these label values (in `labelnames` order), made on first use."""
        key = tuple(map(str, values))
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {len(key)} values")
            with self._lock:
                child = self._children.setdefault(key, self._child(_label_text(self.labelnames, key)))
        return child

    def _child(self, label_text: str):
        raise NotImplementedError

    def series(self) -> dict[str, tuple[str, ...]]:
        """The sample names this family writes, each with its label names."""
        return {self.name: self.labelnames}

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.render(self.name, out)


class _Value:
    __slots__ = ("_lock", "_labels", "_value")

    def __init__(self, lock: threading.Lock, label_text: str) -> None:
        self._lock, self._labels, self._value = lock, label_text, 0.0

    @property
    def value(self) -> float:
        return self._value

    def render(self, name: str, out: list[str]) -> None:
        out.append(f"{name}{_braced(self._labels)} {format_value(self._value)}")


class _CounterValue(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._value += amount


class _GaugeValue(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)


class Counter(_Family):
    kind = "counter"

    def _child(self, label_text: str) -> _CounterValue:
        return _CounterValue(self._lock, label_text)

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)


class Gauge(_Family):
    """A value set by the code, or, with `collect`, read when scraped: `collect()` returns the
    value (no labels) or a mapping of label values (a tuple, in `labelnames` order) to values."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), collect: Collect | None = None) -> None:
        super().__init__(name, help, labels)
        self.collect = collect

    def _child(self, label_text: str) -> _GaugeValue:
        return _GaugeValue(self._lock, label_text)

    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.labels().dec(amount)

    def render(self, out: list[str]) -> None:
        if self.collect is None:
            return super().render(out)
        try:
            samples = _collected(self.collect(), labelled=bool(self.labelnames))
        except Exception:  # a scrape must not fail for one unreadable value
            log.exception("cannot read %s", self.name)
            samples = {}
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for values, value in samples.items():
            out.append(
                f"{self.name}{_braced(_label_text(self.labelnames, tuple(map(str, values))))} {format_value(value)}"
            )


class ReadCounter(Gauge):
    """A counter the process keeps elsewhere (CPU seconds), read when scraped."""

    kind = "counter"


class _HistogramValue:
    __slots__ = ("_lock", "_labels", "_bounds", "_counts", "_sum")

    def __init__(self, lock: threading.Lock, label_text: str, bounds: tuple[float, ...]) -> None:
        self._lock, self._labels, self._bounds = lock, label_text, bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)  # buckets are `le`: a bound holds itself
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def sum(self) -> float:
        return self._sum

    def render(self, name: str, out: list[str]) -> None:
        with self._lock:
            counts, total = list(self._counts), self._sum
        prefix = f"{self._labels}," if self._labels else ""
        cumulative = 0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=False):
            cumulative += count
            out.append(f'{name}_bucket{{{prefix}le="{format_value(bound)}"}} {cumulative}')
        out.append(f"{name}_sum{_braced(self._labels)} {format_value(total)}")
        out.append(f"{name}_count{_braced(self._labels)} {cumulative}")


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()) -> None:
        super().__init__(name, help, labels)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty, got {tuple(buckets)}")
        self.buckets = bounds

    def _child(self, label_text: str) -> _HistogramValue:
        return _HistogramValue(self._lock, label_text, self.buckets)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def series(self) -> dict[str, tuple[str, ...]]:
        return {
            f"{self.name}_bucket": (*self.labelnames, "le"),
            f"{self.name}_sum": self.labelnames,
            f"{self.name}_count": self.labelnames,
        }


class MetricRegistry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Iterable[str] = (), collect: Collect | None = None) -> Gauge:
        return self._add(Gauge(name, help, labels, collect))

    def histogram(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()) -> Histogram:
        return self._add(Histogram(name, help, buckets, labels))

    def read_counter(self, name: str, help: str, collect: Collect) -> ReadCounter:
        return self._add(ReadCounter(name, help, (), collect))

    def _add(self, family):
        taken = {s for f in self._families.values() for s in (f.name, *f.series())}
        if taken & {family.name, *family.series()}:
            raise ValueError(f"a metric named {family.name} is already registered")
        if not family.labelnames and not (isinstance(family, Gauge) and family.collect):
            family.labels()  # an unlabeled metric is written from the start, at zero
        self._families[family.name] = family
        return family

    def names(self) -> list[str]:
        return list(self._families)

    def series(self) -> dict[str, tuple[str, ...]]:
        """Every sample name a scrape can show (a histogram's `_bucket`, `_sum`, `_count`), with
        its label names."""
        return {name: labels for f in self._families.values() for name, labels in f.series().items()}

    def render(self) -> str:
        out: list[str] = []
        for family in list(self._families.values()):
            family.render(out)
        return "\n".join(out) + "\n"


# --- the control plane's metrics -----------------------------------------------------------------

XDS_TYPES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
PARSE_REFUSALS = frozenset({"bad-pem", "too-large"})  # CsrRefused reasons: not a readable CSR
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# What asks for a push (Istio's pilot_push_triggers types for the same causes): a config resource,
# a workload's registration or health, a JWKS (key material) that changed.
PUSH_TRIGGERS = ("config", "endpoint", "secret")
_CHANGES_KEPT = 256  # change times of recent pushes, by mesh snapshot version


def xds_type(type_url: str) -> str:
    return XDS_TYPES.get(type_url, "other")  # "other": a client may subscribe to any type URL


class ControlPlaneMetrics:
    """The control plane's metrics. The status board calls `sent`, `rejected` and `converged`
    (`lattice.xds.status.XdsEvents`); the pusher calls `pushed`; `read_state` binds the gauges
    read at scrape time."""

    def __init__(self) -> None:
        r = self.registry = MetricRegistry()
        self._sent_series: dict[str, tuple] = {}  # type URL -> its pushes counter and size histogram
        self.proxies = r.gauge("pilot_xds", "Number of proxies connected to this control plane over ADS.")
        self.pushes = r.counter(
            "pilot_xds_pushes", "xDS responses sent to proxies, by type (cds, eds, lds, rds).", ["type"]
        )
        self.convergence = r.histogram(
            "pilot_proxy_convergence_time",
            "Seconds from the config or registry change that triggered a push to the proxy ACKing everything it "
            "was sent.",
            CONVERGENCE_BUCKETS,
        )
        self.push_time = r.histogram(
            "pilot_xds_push_time",
            "Seconds a push takes to compute: mesh snapshot and every proxy's config.",
            PUSH_TIME_BUCKETS,
        )
        self.rejects = r.counter(
            "pilot_total_xds_rejects", "xDS responses proxies rejected (NACKed), by type.", ["type"]
        )
        self.triggers = r.counter(
            "pilot_push_triggers", "Push requests, by what changed: config, endpoint or secret.", ["type"]
        )
        self.internal_errors = r.counter(
            "pilot_total_xds_internal_errors",
            "Pushes that failed inside the control plane (proxies kept their config).",
        )
        self.build = r.gauge(
            "istio_build", "The control plane's build: component and version (tag), always 1.", ["component", "tag"]
        )
        self.build.labels("pilot", _version()).set(1)
        process.register(r)
        self.rejecting = {
            kind: r.gauge(
                f"pilot_xds_{kind}_reject",
                f"Connected proxies whose last answer to {kind.upper()} is a rejection (NACK).",
            )
            for kind in ("cds", "eds", "lds", "rds")
        }
        self.config_size = r.histogram(
            "pilot_xds_config_size_bytes",
            "Bytes of resources in one xDS response, by type.",
            CONFIG_SIZE_BUCKETS,
            ["type"],
        )
        self.csrs = r.counter("citadel_server_csr_count", "Certificate signing requests received.")
        self.issued = r.counter("citadel_server_success_cert_issuance_count", "Certificates issued.")
        self.csr_parse_errors = r.counter(
            "citadel_server_csr_parsing_err_count", "CSRs refused because they could not be read."
        )
        self.csr_sign_errors = r.counter(
            "citadel_server_csr_sign_err_count",
            "Readable CSRs refused (key type, trust domain, names, CA flag, signature).",
        )
        self.authentication_failures = r.counter(
            "citadel_server_authentication_failure_count",
            "CSRs refused for their credential: missing or bad join token, or an identity that may not have the "
            "certificate asked for.",
        )
        self.expiry_warnings = r.gauge(
            "citadel_server_cert_expiry_warnings",
            "Certificates that will expire unless someone acts, by kind (root, intermediate, workload): "
            "see `lattice status`.",
            ["kind"],
        )
        self.root_expiry = r.gauge(
            "citadel_server_root_cert_expiry_timestamp", "When the signing root certificate expires, in Unix seconds."
        )
        self.api_requests = r.counter(
            "lattice_api_requests_total",
            "REST API requests, by method, route pattern and status code.",
            ["method", "route", "code"],
        )
        self.api_duration = r.histogram(
            "lattice_api_request_duration_seconds",
            "REST API request durations in seconds, by method and route pattern.",
            REQUEST_BUCKETS,
            ["method", "route"],
        )
        self.workloads = r.gauge("lattice_registry_workloads", "Registered workloads, by health.", ["healthy"])
        self.config = r.gauge(
            "lattice_config_resources", "Config resources in the mesh as last pushed, by kind.", ["kind"]
        )
        # Counters a dashboard plots exist from the start at 0, not from their first event on.
        for kind in XDS_TYPES.values():
            self.pushes.labels(kind)
            self.rejects.labels(kind)
        for trigger in PUSH_TRIGGERS:
            self.triggers.labels(trigger)
        self._changes: OrderedDict[str, float] = OrderedDict()  # snapshot version -> when its change arrived
        self._sources: tuple[StatsSource, ...] = ()
        self._scraped: dict[str, Any] = {}

    def render(self) -> str:
        self._scrape()
        return self.registry.render()

    def read_state(self, *sources: StatsSource) -> None:
        """Bind the gauges that show the control plane's state: each scrape asks every source for
        its `stats()` once (a value no source gives is left out of the scrape)."""
        self._sources = sources
        self.proxies.collect = lambda: self._scraped.get("connected_proxies")
        for kind, gauge in self.rejecting.items():
            type_url = next(t for t, k in XDS_TYPES.items() if k == kind)
            gauge.collect = partial(lambda t: self._scraped.get("rejecting", {}).get(t, 0), type_url)
        self.workloads.collect = lambda: {
            ("true" if healthy else "false",): n for healthy, n in self._scraped.get("workloads", {}).items()
        }
        self.config.collect = lambda: {(kind,): n for kind, n in self._scraped.get("config_resources", {}).items()}
        self.root_expiry.collect = lambda: self._scraped.get("root_expires_at")
        self.expiry_warnings.collect = lambda: {
            (kind,): n for kind, n in self._scraped.get("expiry_warnings", {}).items()
        }

    def _scrape(self) -> None:
        scraped: dict[str, Any] = {}
        for source in self._sources:
            try:
                scraped.update(source.stats())
            except Exception:  # a scrape must not fail for one unreadable component
                log.exception("cannot read the state of %s", type(source).__name__)
        self._scraped = scraped

    # --- reported by the pusher ---

    def pushed(self, version: str, changed_at: float | None, seconds: float) -> None:
        """A push computed mesh snapshot `version`, carrying changes that arrived at `changed_at`
        (time.time(); None for a push nothing asked for, such as the first one)."""
        self.push_time.observe(seconds)
        self.push_started(version, changed_at)

    def push_started(self, version: str, changed_at: float | None) -> None:
        """A push of mesh snapshot `version` began: proxies it reaches first may converge on it
        before it ends, so the change's time is known from now."""
        if changed_at is not None:
            self._changes[version] = changed_at
            self._changes.move_to_end(version)
            while len(self._changes) > _CHANGES_KEPT:
                self._changes.popitem(last=False)

    def push_triggered(self, trigger: str) -> None:
        self.triggers.labels(trigger if trigger in PUSH_TRIGGERS else "unknown").inc()

    def internal_error(self) -> None:
        self.internal_errors.inc()

    # --- reported by the xDS status board ---

    def sent(self, type_url: str, size: int) -> None:
        series = self._sent_series.get(type_url)
        if series is None:  # (called for every response: the type's two series are looked up once)
            kind = xds_type(type_url)
            series = self._sent_series[type_url] = (self.pushes.labels(kind), self.config_size.labels(kind))
        series[0].inc()
        series[1].observe(size)

    def rejected(self, type_url: str) -> None:
        self.rejects.labels(xds_type(type_url)).inc()

    def converged(self, label: str, connected_at: float, now: float) -> None:
        """A proxy ACKed all it was sent from snapshot `label`. A proxy that connected after the
        change is catching up, not converging on it: its first sync is not counted."""
        changed_at = self._changes.get(label)
        if changed_at is not None and changed_at >= connected_at:
            self.convergence.observe(max(0.0, now - changed_at))

    # --- reported by the REST API ---

    def api_request(self, method: str, route: str, code: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "OTHER"
        self.api_requests.labels(method, route, code).inc()
        self.api_duration.labels(method, route).observe(seconds)

    # --- reported by the agents' API ---

    def csr_refused(self, reason: str) -> None:
        (self.csr_parse_errors if reason in PARSE_REFUSALS else self.csr_sign_errors).inc()


def _version() -> str:
    try:
        return importlib.metadata.version("lattice-mesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def exported_series() -> dict[str, tuple[str, ...]]:
    """Every sample name the control plane's `/metrics` can show, with its label names (for
    dashboards and their tests)."""
    return ControlPlaneMetrics().registry.series()
