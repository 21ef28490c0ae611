"""Istio's standard metrics, counted by Envoy itself (its `envoy.access_loggers.stats` logger).

Each request adds one sample to a few Envoy histograms whose tags come from format strings: no
request ever reaches Python to be counted. The tags are the *ingredients* of Istio's labels, not
the labels themselves; the agent turns each series (not each request) into Istio's names and
labels when Prometheus scrapes, and into the per-second window behind `lattice stat/top/edges`
(agent/envoy_stats.py):

- `~src` and `~dst` are the two ends as `peer_value` spells a workload (with its principal after
  a last `;` where the sidecar knows it): outbound, the caller is this proxy (a literal) and the
  callee the upstream host's endpoint metadata; inbound, the callee is this proxy and the caller
  the `x-lattice-peer` header its sidecar set (moved to metadata by translate/telemetry.py). The
  agent believes that header only when the verified peer certificate (`~sp`) names the same
  namespace, per series.
- `~svc` is the destination service (outbound: the upstream cluster, whose name holds it).
- `~tls`, `~code`, `~grpc`, `~flags` are the security policy, the response code, the gRPC status
  and Envoy's response flags; `~proto` the first 16 bytes of the request's content-type, which
  are `application/grpc` exactly for gRPC (the agent names it grpc, anything else http). Read
  from a header Envoy keeps at hand, not computed by a CEL expression (Istio's own
  `request_protocol` test): the expression ran once per histogram, three times a request on each
  side, about 20 µs a request for the two sidecars (BENCHMARKS.md). It comes right after `~r`:
  a content-type is the caller's to choose, and a tag written later in the name wins where a
  value imitates the tag syntax.
- `~ov_<label>` are a Telemetry's UPSERT tag overrides, as Envoy format strings.

Stat names: `rq` is the request's duration in microseconds (its count is `istio_requests_total`,
its distribution `istio_request_duration_milliseconds`, so both always agree); `rqc` / `rqd` when
a Telemetry gives the two different tags or switches one off; `rqb` / `rsb` request and response
bytes; `path` the duration by method and path for `lattice top`, in a scope capped at
`MAX_PATH_SERIES` (paths may hold ids); `tcpo` / `tcpc` / `tcps` / `tcpr` TCP connections opened,
closed and bytes sent and received. Tag names start with `~`: Envoy's JSON stats join tags and
values with dots, and values (hosts, principals) hold dots.
"""

from __future__ import annotations

from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from google.protobuf import struct_pb2
from xds.type.v3 import typed_struct_pb2

from lattice.mesh import telemetry as t
from lattice.mesh.telemetry import Telemetry
from lattice.api.telemetry_expr import parse
from lattice.translate.agent_names import (
    COUNT,
    COUNT_AND_DURATION,
    DURATION,
    GRPC_CONTENT_TYPE,
    OVERRIDE,
    PATHS,
    PREFIX,
    REQUEST_BYTES,
    RESPONSE_BYTES,
    SEP,
    TCP_CLOSED as TCP_CLOSED,
    TCP_OPENED as TCP_OPENED,
    TCP_RECEIVED as TCP_RECEIVED,
    TCP_SENT as TCP_SENT,
    TCP_STATS,
)

STATS_LOGGER = "envoy.access_loggers.stats"
STATS_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
HTTP_TAGS = ("r", "proto", "src", "sp", "dst", "svc", "tls", "code", "grpc", "flags")
TCP_TAGS = ("r", "src", "sp", "dst", "svc", "tls", "flags")
PATH_TAGS = ("r", "proto", "src", "sp", "dst", "svc", "code", "grpc", "method", "path")  # `~proto`: see HTTP_TAGS
MAX_SERIES = 5000  # per kind and stats logger (one per listener side): a flood of peers cannot grow them forever
MAX_PATH_SERIES = 200  # (method, path, peer, code) series per listener side for `lattice top`; idle ones are evicted
PROTOCOL = "%CEL(request.headers['content-type'].startsWith('application/grpc') ? 'grpc' : 'http')%"  # overrides' value
CONTENT_TYPE = f"%REQ(content-type):{len(GRPC_CONTENT_TYPE)}%"  # `~proto`: the agent tells grpc from http
_REPORTER = {"outbound": "source", "inbound": "destination"}
_MS = 1000  # the histograms hold microseconds; Istio's buckets are milliseconds
# A Telemetry tag override's attribute, as an Envoy format string, by side.
_ATTRIBUTES = {
    "request.method": "%REQ(:METHOD)%",
    "request.path": "%REQ(:PATH)%",
    "request.url_path": "%PATH(NQ)%",
    "request.host": "%REQ(:AUTHORITY)%",
    "request.scheme": "%REQ(:SCHEME)%",
    "request.protocol": PROTOCOL,
    "response.code": "%RESPONSE_CODE%",
    "upstream.address": "%UPSTREAM_HOST%",
    "source.address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
}


class Ends:
    """What one side's tags say about both ends (see the module docstring)."""

    def __init__(self, direction: str, me: str, principal: str, service: str, mtls: bool | None) -> None:
        self.direction = direction
        self.me, self.principal = me, principal
        if direction == "outbound":
            self.src, self.sp = f"{me};{principal}", principal or "-"
            self.dst, self.svc, self.tls = "%UPSTREAM_METADATA(lattice:peer)%", "%UPSTREAM_CLUSTER%", "unknown"
        else:
            self.src = "%DYNAMIC_METADATA(lattice.peer:peer)%" if mtls else "-"
            self.sp = "%DOWNSTREAM_PEER_URI_SAN%" if mtls else "-"
            self.dst, self.svc = f"{me};{principal}", service
            self.tls = "mutual_tls" if mtls else "none"

    def tags(self, names: tuple[str, ...]) -> list[dict]:
        values = {
            "r": _REPORTER[self.direction],
            "src": self.src,
            "sp": self.sp,
            "dst": self.dst,
            "svc": self.svc,
            "tls": self.tls,
            "code": "%RESPONSE_CODE%",
            "grpc": "%GRPC_STATUS_NUMBER%",
            "flags": "%RESPONSE_FLAGS%",
            "proto": CONTENT_TYPE,
            "method": "%REQ(:METHOD)%",
            "path": "%PATH(NQ)%",
        }
        return [{"name": SEP + name, "value_format": _literal_safe(values[name])} for name in names]

    def override(self, expression: str) -> str:
        """A tag override's value as an Envoy format string."""
        expr = parse(expression)
        if expr.kind == "literal":
            return expr.value.replace("%", "%%") or "unknown"
        if expr.kind == "header":
            return f"%REQ({expr.value})%"
        if expr.value == "source.principal":
            return self.sp if self.direction == "inbound" else (self.principal or "unknown")
        if expr.value == "destination.principal":
            return "%UPSTREAM_PEER_URI_SAN%" if self.direction == "outbound" else (self.principal or "unknown")
        if expr.value == "destination.port":
            return "%UPSTREAM_REMOTE_PORT%" if self.direction == "outbound" else "%DOWNSTREAM_LOCAL_PORT%"
        return _ATTRIBUTES[expr.value]


def _literal_safe(value: str) -> str:
    """Format strings are used as they are; a literal holds no `%` (names never do), and is never empty."""
    return value or "-"


def http_loggers(telemetry: Telemetry, ends: Ends) -> list[accesslog_pb2.AccessLog]:
    """The side's HTTP stats loggers: Istio's four request metrics and the paths for `lattice top`."""
    reporter = _REPORTER[ends.direction]
    enabled = {m: telemetry.metric_enabled(m, reporter) for m in t.METRICS}
    tags = {m: ends.tags(HTTP_TAGS) + _override_tags(telemetry, m, reporter, ends) for m in t.METRICS}
    histograms = []
    count, duration = enabled[t.REQUEST_COUNT], enabled[t.REQUEST_DURATION]
    if count and duration and tags[t.REQUEST_COUNT] == tags[t.REQUEST_DURATION]:
        histograms.append(_duration(COUNT_AND_DURATION, tags[t.REQUEST_COUNT]))
    else:
        if count:
            histograms.append(_duration(COUNT, tags[t.REQUEST_COUNT]))
        if duration:
            histograms.append(_duration(DURATION, tags[t.REQUEST_DURATION]))
    for metric, name, value in (
        (t.REQUEST_SIZE, REQUEST_BYTES, "%DOWNSTREAM_WIRE_BYTES_RECEIVED%"),
        (t.RESPONSE_SIZE, RESPONSE_BYTES, "%DOWNSTREAM_WIRE_BYTES_SENT%"),
    ):
        if enabled[metric]:
            histograms.append({"stat": {"name": name, "tags": tags[metric]}, "unit": "Bytes", "value_format": value})
    if not histograms:
        return []
    paths = {"histograms": [_duration(PATHS, ends.tags(PATH_TAGS))]}
    return [
        _logger({"histograms": histograms}, "istio", MAX_SERIES),
        _logger(paths, "paths", MAX_PATH_SERIES, evict=True),
    ]


def tcp_loggers(telemetry: Telemetry, ends: Ends) -> list[accesslog_pb2.AccessLog]:
    """Connections and bytes, counted when a connection ends (Envoy's stats logger adds what a format
    string says each time it logs, and a TCP proxy's byte counts are totals so far, so only the
    last entry may add them); the caller's side counts an opened connection when its upstream
    connects. The callee's side cannot: the peer certificate is not known that early."""
    reporter = _REPORTER[ends.direction]
    counters: dict[str, dict[str, Any]] = {
        metric: {
            "stat": {"name": name, "tags": ends.tags(TCP_TAGS) + _override_tags(telemetry, metric, reporter, ends)}
        }
        for metric, name in TCP_STATS.items()
        if telemetry.metric_enabled(metric, reporter)
    }
    for metric in (t.TCP_OPENED, t.TCP_CLOSED):
        if metric in counters:
            counters[metric]["value_fixed"] = 1
    for metric, value in ((t.TCP_SENT, "%BYTES_SENT%"), (t.TCP_RECEIVED, "%BYTES_RECEIVED%")):
        if metric in counters:
            counters[metric]["value_format"] = value
    at_connect = [counters.pop(t.TCP_OPENED)] if ends.direction == "outbound" and t.TCP_OPENED in counters else []
    out = []
    if at_connect:
        out.append(_logger({"counters": at_connect}, "istio", MAX_SERIES, data_pb2.TcpUpstreamConnected))
    if counters:
        out.append(_logger({"counters": list(counters.values())}, "istio", MAX_SERIES, data_pb2.TcpConnectionEnd))
    return out


def _override_tags(telemetry: Telemetry, metric: str, reporter: str, ends: Ends) -> list[dict]:
    overrides = telemetry.tag_overrides(metric, reporter)
    return [
        {"name": SEP + OVERRIDE + name, "value_format": ends.override(o.value)}
        for name, o in sorted(overrides.items())
        if not o.remove
    ]


def _duration(name: str, tags: list[dict]) -> dict:
    return {
        "stat": {"name": name, "tags": tags},
        "unit": "Microseconds",
        "value_format": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    }


def _logger(config: dict, scope: str, limit: int, log_type: int | None = None, evict: bool = False):
    """One stats logger. Its config travels as a TypedStruct (JSON): the stats logger's proto in the
    Python package predates its `stats_scope`, which caps how many series one scope may hold."""
    limits: dict = {"prefix": PREFIX}  # (a sharing_name crashes `envoy --mode validate` in 1.40)
    limits.update({"max_counters": limit, "max_histograms": limit, "enable_eviction": evict})
    value = struct_pb2.Struct()
    value.update({"stats_scope": limits, **config})
    typed = typed_struct_pb2.TypedStruct(type_url=STATS_TYPE, value=value)
    log = accesslog_pb2.AccessLog(name=STATS_LOGGER)
    log.typed_config.Pack(typed, deterministic=True)  # the listener's version is a hash of its bytes
    if log_type is not None:
        log.filter.log_type_filter.types.append(log_type)
    return log


def microseconds_to_ms(value: float) -> float:
    return value / _MS
