"""The embedded trace collector: the spans agents forward, kept in memory for `lattice trace`.

Envoy exports OTLP spans to its agent; the agent posts the serialized ExportTraceServiceRequest to
`POST /agent/v1/traces` (agent_api.py), and `TraceStore.ingest` files the spans by trace. The store
is bounded three ways, oldest trace (least recently added to) evicted first: a number of traces,
a number of spans, and the bytes they hold; one trace keeps at most `max_spans_per_trace` spans, so
a runaway trace cannot push every other one out. Nothing is written to disk: a restart forgets.

A request is taken whole or not at all: a body that is not OTLP, or a span with a malformed id,
is refused with the field that is wrong. A span's service is its resource's `service.name`
(Istio's `<app>.<namespace>`), and a query for `reviews` matches `reviews.default` too.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiohttp import web
from google.protobuf.message import DecodeError
from lattice.api import otlp

from lattice.server.limits import BODY_TIMEOUT

MAX_BODY = 4 << 20  # one agent batch; the agent sends smaller ones (agent/traces.py)
MAX_ATTRIBUTES = 64  # per span; the rest are dropped
MAX_VALUE = 1024  # characters of one attribute value, or a span's name
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# The attributes `lattice trace` shows for a span, Envoy's names and OpenTelemetry's newer ones.
HTTP_ATTRIBUTES = {
    "method": ("http.method", "http.request.method"),
    "url": ("http.url", "url.full"),
    "status_code": ("http.status_code", "http.response.status_code"),
    "protocol": ("http.protocol", "network.protocol.version"),
    "upstream_cluster": ("upstream_cluster",),
    "response_flags": ("response_flags",),
}
_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in otlp.Span.SpanKind.items()}
_STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in otlp.Status.StatusCode.items()}


class TraceError(ValueError):
    """A body the store refuses, and why (the HTTP answer is a 400 with this message)."""


@dataclass(frozen=True)
class Span:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root
    service: str
    name: str
    kind: str
    start: int  # unix nanoseconds
    end: int
    status: str  # UNSET, OK or ERROR
    message: str
    attributes: dict[str, str]
    reporter: str  # the workload identity that forwarded it

    @property
    def error(self) -> bool:
        code = self.attributes.get("http.status_code") or self.attributes.get("http.response.status_code") or ""
        return self.status == "ERROR" or self.attributes.get("error") == "true" or (code.isdigit() and int(code) >= 500)

    @property
    def size(self) -> int:
        """Roughly what it costs to keep, for the store's byte bound."""
        return (
            200
            + len(self.name)
            + len(self.service)
            + len(self.message)
            + sum(len(k) + len(v) for k, v in self.attributes.items())
        )

    def to_dict(self) -> dict:
        return {
            "span_id": self.span_id,
            "parent_span_id": self.parent_id,
            "service": self.service,
            "name": self.name,
            "kind": self.kind,
            "start": _iso(self.start),
            "start_unix_nano": self.start,
            "duration_ms": _ms(self.end - self.start),
            "status": self.status,
            "status_message": self.message,
            "error": self.error,
            "http": _http(self.attributes),
            "attributes": self.attributes,
            "reporter": self.reporter,
        }


@dataclass
class Trace:
    trace_id: str
    spans: dict[str, Span] = field(default_factory=dict)  # by span id: a span sent twice is kept once
    size: int = 0

    def root(self) -> Span:
        """The span with no parent here (the earliest, if several); else the earliest span."""
        ordered = sorted(self.spans.values(), key=lambda s: (s.start, s.span_id))
        return next((s for s in ordered if s.parent_id not in self.spans), ordered[0])

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans.values()})

    def touches(self, service: str) -> bool:
        return any(s == service or s.partition(".")[0] == service for s in self.services)

    def summary(self) -> dict:
        root = self.root()
        start, end = min(s.start for s in self.spans.values()), max(s.end for s in self.spans.values())
        return {
            "trace_id": self.trace_id,
            "root_service": root.service,
            "root_operation": root.name,
            "start": _iso(start),
            "start_unix_nano": start,
            "duration_ms": _ms(end - start),
            "span_count": len(self.spans),
            "services": self.services,
            "error": any(s.error for s in self.spans.values()),
        }

    def to_dict(self) -> dict:
        return self.summary() | {
            "spans": [s.to_dict() for s in sorted(self.spans.values(), key=lambda s: (s.start, s.span_id))]
        }


class TraceStore:
    """The most recent traces, in memory, within fixed bounds."""

    def __init__(
        self,
        max_traces: int = 1000,
        max_spans: int = 50_000,
        max_bytes: int = 64 << 20,
        max_spans_per_trace: int = 1000,
    ) -> None:
        self.max_traces, self.max_spans, self.max_bytes, self.max_spans_per_trace = (
            max_traces,
            max_spans,
            max_bytes,
            max_spans_per_trace,
        )
        self._traces: OrderedDict[str, Trace] = OrderedDict()  # least recently added to first
        self.span_count = 0
        self.bytes = 0
        self.counts = {"accepted": 0, "dropped": 0, "evicted_traces": 0, "refused_requests": 0}

    def __len__(self) -> int:
        return len(self._traces)

    def ingest(self, body: bytes, reporter: str = "") -> int:
        """File the spans of one serialized ExportTraceServiceRequest; how many were kept."""
        try:
            spans = _parse(body, reporter)
        except TraceError:
            self.counts["refused_requests"] += 1
            raise
        kept = sum(self._add(span) for span in spans)
        self.counts["accepted"] += kept
        self.counts["dropped"] += len(spans) - kept
        self._evict()
        return kept

    def recent(self, service: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
        """Summaries of the newest traces (by start), optionally only those touching `service`."""
        chosen = [t for t in self._traces.values() if not service or t.touches(service)]
        chosen.sort(key=lambda t: min(s.start for s in t.spans.values()), reverse=True)
        return [t.summary() for t in chosen[:limit]]

    def trace(self, trace_id: str) -> dict | None:
        found = self._traces.get(trace_id.lower())
        return found.to_dict() if found else None

    def with_attribute(self, name: str, matches: Callable[[str], bool]) -> dict | None:
        """The newest trace holding a span whose attribute `name` matches (the console finds a
        request's trace by `guid:x-request-id`, the tag Envoy puts on every span of a request)."""
        for trace in reversed(self._traces.values()):
            if any(name in s.attributes and matches(s.attributes[name]) for s in trace.spans.values()):
                return trace.to_dict()
        return None

    def stats(self) -> dict:
        return {"traces": len(self._traces), "spans": self.span_count, "bytes": self.bytes, **self.counts}

    def _add(self, span: Span) -> bool:
        trace = self._traces.get(span.trace_id)
        if trace is None:
            trace = self._traces[span.trace_id] = Trace(span.trace_id)
        self._traces.move_to_end(span.trace_id)
        old = trace.spans.get(span.span_id)
        if old is None and len(trace.spans) >= self.max_spans_per_trace:
            return False
        trace.spans[span.span_id] = span
        grown = span.size - (old.size if old else 0)
        trace.size += grown
        self.bytes += grown
        self.span_count += old is None
        return True

    def _evict(self) -> None:
        while self._traces and (
            len(self._traces) > self.max_traces or self.span_count > self.max_spans or self.bytes > self.max_bytes
        ):
            _, oldest = self._traces.popitem(last=False)
            self.span_count -= len(oldest.spans)
            self.bytes -= oldest.size
            self.counts["evicted_traces"] += 1


# --- OTLP in ------------------------------------------------------------------------------------


def _parse(body: bytes, reporter: str) -> list[Span]:
    if not body:
        raise TraceError("empty body: send a serialized OTLP otlp.ExportTraceServiceRequest")
    try:
        request = otlp.ExportTraceServiceRequest.FromString(body)
    except DecodeError as e:
        raise TraceError(f"not an OTLP otlp.ExportTraceServiceRequest (protobuf): {e}") from None
    out = []
    for i, resource_spans in enumerate(request.resource_spans):
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name") or "unknown"
        for j, scope in enumerate(resource_spans.scope_spans):
            for k, span in enumerate(scope.spans):
                out.append(_span(span, service, reporter, f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"))
    return out


def _span(span: otlp.Span, service: str, reporter: str, where: str) -> Span:
    for name, value, size in (("trace_id", span.trace_id, 16), ("span_id", span.span_id, 8)):
        if len(value) != size or not any(value):
            raise TraceError(f"{where}.{name}: must be {size} bytes, not all zero (got {len(value)} bytes)")
    if span.parent_span_id and len(span.parent_span_id) != 8:
        raise TraceError(f"{where}.parent_span_id: must be empty or 8 bytes (got {len(span.parent_span_id)} bytes)")
    if span.end_time_unix_nano and span.end_time_unix_nano < span.start_time_unix_nano:
        raise TraceError(f"{where}: ends ({span.end_time_unix_nano}) before it starts ({span.start_time_unix_nano})")
    parent = span.parent_span_id.hex() if span.parent_span_id and any(span.parent_span_id) else ""
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=parent,
        service=service[:MAX_VALUE],
        name=span.name[:MAX_VALUE],
        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
        start=span.start_time_unix_nano,
        end=span.end_time_unix_nano or span.start_time_unix_nano,
        status=_STATUS.get(span.status.code, "UNSET"),
        message=span.status.message[:MAX_VALUE],
        attributes=_attributes(span.attributes),
        reporter=reporter,
    )


def _attributes(values) -> dict[str, str]:
    return {kv.key[:MAX_VALUE]: _text(kv.value)[:MAX_VALUE] for kv in list(values)[:MAX_ATTRIBUTES]}


def _text(value: otlp.AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return json.dumps([_text(v) for v in value.array_value.values[:MAX_ATTRIBUTES]])
    if kind == "kvlist_value":
        return json.dumps(_attributes(value.kvlist_value.values))
    return ""


def _http(attributes: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, keys in HTTP_ATTRIBUTES.items():
        found = next((attributes[k] for k in keys if attributes.get(k)), None)
        if found is not None:
            out[name] = found
    return out


def _iso(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(nanos: int) -> float:
    return round(nanos / 1e6, 3)


# --- HTTP ----------------------------------------------------------------------------------------


async def receive(request: web.Request, store: TraceStore, reporter: str) -> web.Response:
    """`POST /agent/v1/traces`: an otlp.ExportTraceServiceRequest body, at most MAX_BODY bytes."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(
            413, f"body of {request.content_length} bytes is over the {MAX_BODY}-byte limit; send smaller batches"
        )
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.content.iter_chunked(64 << 10):
                body += chunk
                if len(body) > MAX_BODY:
                    return _error(413, f"body is over the {MAX_BODY}-byte limit; send smaller batches")
    except TimeoutError:
        return _error(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
    try:
        kept = store.ingest(bytes(body), reporter)
    except TraceError as e:
        return _error(400, str(e))
    return web.json_response({"accepted": kept})


def list_response(store: TraceStore, query) -> web.Response:
    """`GET /api/v1/traces?service=&limit=`: the newest traces first."""
    text = query.get("limit") or str(DEFAULT_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        return _error(400, f"limit {text!r}: give a whole number from 1 to {MAX_LIMIT}")
    service = query.get("service") or None
    return web.json_response({"items": store.recent(service, int(text)), "store": store.stats()})


def trace_response(store: TraceStore, trace_id: str) -> web.Response:
    """`GET /api/v1/traces/{trace_id}`: one trace with all its spans."""
    if len(trace_id) != 32 or any(c not in "0123456789abcdefABCDEF" for c in trace_id):
        return _error(400, f"trace id {trace_id!r}: give the 32 hex digits `lattice trace` lists")
    found = store.trace(trace_id)
    if found is None:
        return _error(
            404,
            f"no trace {trace_id} in the collector: it keeps the most recent {store.max_traces} traces; see "
            "`lattice trace`",
        )
    return web.json_response(found)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
