"""`lattice trace`: recent traces from the control plane's embedded collector, and one as a tree."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import typer

from lattice.cli.client import ServerOpt, call
from lattice.cli.client import connect as client
from lattice.cli.output import Format, OutputOpt, emit, fail

TRACE_HELP = """Recent distributed traces, or one trace as its tree of spans.

Every sidecar and gateway records a span for each sampled request it carries and, unless a
Telemetry resource or the mesh config names an external collector (Jaeger, Tempo, Zipkin), sends
it to the control plane, which keeps the most recent 1,000 traces in memory. A trace joins its
hops only if each app copies the trace headers (traceparent and tracestate; x-b3-* with a Zipkin
provider) from the request it serves to the requests it makes.

Sampling is 1% of requests unless a Telemetry resource says otherwise
(spec.tracing[].randomSamplingPercentage); a request that arrives with a sampled traceparent
(flags 01) is always traced.

SERVICE keeps the traces that touch it: `reviews` or `reviews.default`. --id shows one trace:
each span under its parent, with service, operation, duration and status.

  lattice trace
  lattice trace ratings --limit 5
  lattice trace --id 4bf92f3577b34da6a3ce929d0e0e4736
  lattice trace ratings -o json
"""


def trace(
    service: Optional[str] = typer.Argument(None, help="Only traces touching this service: NAME or NAME.NAMESPACE."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="At most this many traces, newest first."),
    trace_id: Optional[str] = typer.Option(None, "--id", help="Show this trace (32 hex digits) as a span tree."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    c = client(server)
    if trace_id is not None:
        if service:
            fail("give SERVICE or --id, not both: a trace id names one trace whatever services it touches")
        return _one(call(c.get, f"/api/v1/traces/{trace_id}"), output)
    data = call(c.get, "/api/v1/traces", service=service, limit=limit)
    rows = [
        [
            t["trace_id"],
            t["root_service"],
            t["root_operation"],
            _time(t["start"]),
            _duration(t["duration_ms"]),
            t["span_count"],
            ", ".join(t["services"]),
            "yes" if t["error"] else "no",
        ]
        for t in data["items"]
    ]
    emit(
        data, output, ["TRACE ID", "ROOT SERVICE", "OPERATION", "START", "DURATION", "SPANS", "SERVICES", "ERROR"], rows
    )
    if output is Format.table and not rows:
        where = f" touching {service}" if service else ""
        typer.echo(
            f"no traces{where} yet: 1% of requests are sampled unless a Telemetry resource sets "
            "randomSamplingPercentage; see `lattice trace --help`"
        )


def _one(data: dict, output: Format) -> None:
    rows = [
        [
            "  " * depth + span["name"],
            span["service"],
            span["kind"],
            _time(span["start"]),
            _duration(span["duration_ms"]),
            _status(span),
            span["span_id"],
        ]
        for depth, span in _tree(data["spans"])
    ]
    emit(data, output, ["OPERATION", "SERVICE", "KIND", "START", "DURATION", "STATUS", "SPAN ID"], rows)
    if output is Format.table:
        typer.echo(
            f"\ntrace {data['trace_id']}: {data['span_count']} spans over {', '.join(data['services'])}, "
            f"{_duration(data['duration_ms'])}"
        )


def _tree(spans: list[dict]) -> list[tuple[int, dict]]:
    """Spans depth first, children by start under their parent; a span whose parent is not in the
    trace (not sampled there, or not arrived yet) starts a tree of its own."""
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict]] = {}
    for s in spans:  # the server sends them by start
        parent = s["parent_span_id"]
        children.setdefault(parent if parent in ids and parent != s["span_id"] else "", []).append(s)
    out: list[tuple[int, dict]] = []
    seen: set[str] = set()
    # Roots first; then any span left over (only a cycle of parents leaves one) as a root itself.
    for root in [*children.get("", []), *spans]:
        stack = [(0, root)]
        while stack:
            depth, span = stack.pop()
            if span["span_id"] in seen:
                continue
            seen.add(span["span_id"])
            out.append((depth, span))
            stack.extend((depth + 1, c) for c in reversed(children.get(span["span_id"], [])))
    return out


def _status(span: dict) -> str:
    code = span["http"].get("status_code", "")
    word = "ERROR" if span["error"] else span["status"] if span["status"] != "UNSET" else ""
    return " ".join(x for x in (code, word) if x) or "-"


def _time(iso: str) -> str:
    """The server's UTC time as local time, to the millisecond."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _duration(ms: float) -> str:
    return f"{ms / 1000:.2f}s" if ms >= 1000 else f"{ms:.1f}ms"


def register(app: typer.Typer) -> None:
    app.command(name="trace", help=TRACE_HELP)(trace)
