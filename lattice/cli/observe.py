"""`lattice stat`, `top`, `tap` and `edges`: the mesh's live golden signals on the command line.

All four ask the control plane, which asks every sidecar for its last minutes of traffic
(server/observe.py); nothing needs Prometheus. Latencies are within 10% (log-spaced buckets).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import datetime
from typing import Optional

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lattice.cli.client import ApiError, ServerOpt
from lattice.cli.client import connect as client
from lattice.cli.options import alias, duration, duration_option
from lattice.cli.output import Format, OutputOpt, console, emit, errors, fail

WindowOpt = typer.Option(
    "60s", "-w", "--window", metavar="DURATION", help="How far back to look: 1s to 5m (a bare number: seconds)."
)
NamespaceOpt = typer.Option(None, "-n", "--namespace", help="Only this namespace.")

STAT_HELP = """Success rate, requests per second and latency percentiles of what each workload served.

Counted by each workload's own sidecar over the window (Linkerd's `viz stat`, with no Prometheus
needed). NAME is a workload (reviews-v1) or a service (reviews); --from keeps only requests from
one caller (workload or service), --by service adds up a service's workloads.

SUCCESS, RPS and the latencies are what the workload's own sidecar served (Istio's
reporter="destination"); CLIENT_SUCCESS and CLIENT_RPS are the same traffic as its callers'
sidecars saw it (reporter="source"), which also counts what never arrived: a circuit breaker's
overflow, a fault injected at the caller, a refused connection. Requests that reached no workload
at all are known only by their service: --by service shows them.

  lattice stat
  lattice stat reviews --from productpage
  lattice stat --by service -w 10s -o json
"""
TOP_HELP = """The busiest paths through a workload's sidecar, refreshed every two seconds (Ctrl-C stops).

Inbound (callers of the workload) and outbound (what it calls), with best, worst and last latency
and success rate over the window. --once prints one table; -o json implies it.

  lattice top productpage
  lattice top reviews-v2 --once -o json
"""
TAP_HELP = """Requests through a workload's sidecar, live, as they happen (Ctrl-C stops).

Each line: caller and callee identity, whether the hop was mutual TLS, method, path, status and
latency. Query strings, headers and bodies are never shown. --limit or --duration stop by themselves.

  lattice tap reviews
  lattice tap productpage --path /api --method GET
  lattice tap ratings --limit 10 -o json
"""
EDGES_HELP = """Who calls whom over the window: both identities and whether the hop was mutual TLS.

The callee's sidecar decides SECURED (it saw the caller's certificate); a callee outside the mesh
is known only from the caller and shows SECURED as unknown.

  lattice edges
  lattice edges -n default -o json
"""


def _seconds(window: str) -> str:
    try:
        value = duration(window)
    except typer.BadParameter:
        fail(f"--window {window!r} is not a duration; write it like 60s, 5m or 10 (seconds)")
    if not 1 <= value <= 300:
        fail(f"--window {window!r} is out of range: 1s to 5m (sidecars keep five minutes)")
    return f"{value:g}"


def _get(server, path: str, **query) -> dict:
    try:
        return client(server).get(path, **query)
    except ApiError as e:
        fail(str(e))


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def _rate(value) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _unreachable(answer: dict) -> None:
    if answer.get("unreachable"):
        console.print(Text(f"no answer from: {', '.join(answer['unreachable'])}", style="yellow"))


def stat(
    name: Optional[str] = typer.Argument(None, help="A workload or service; all when left out."),
    caller: Optional[str] = typer.Option(None, "--from", help="Only requests from this workload or service."),
    by: str = typer.Option("workload", "--by", help="One row per workload, or per service."),
    namespace: Optional[str] = NamespaceOpt,
    window: str = WindowOpt,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    if by not in ("workload", "service"):
        fail(f"--by {by!r}: give workload or service")
    answer = _get(
        server, "/api/v1/stat", name=name, namespace=namespace, window=_seconds(window), by=by, **{"from": caller}
    )
    rows = [
        [
            r["namespace"],
            r[by],
            r["workloads"],
            _rate(r["success_rate"]),
            f"{r['rps']:.2f}",
            _ms(r["latency_ms"]["p50"]),
            _ms(r["latency_ms"]["p95"]),
            _ms(r["latency_ms"]["p99"]),
            _rate(r["client"]["success_rate"]),
            f"{r['client']['rps']:.2f}",
            r["tcp_connections"],
        ]
        for r in answer["items"]
    ]
    emit(
        answer,
        output,
        [
            "NAMESPACE",
            by.upper(),
            "WORKLOADS" if by == "service" else "MESHED",
            "SUCCESS",
            "RPS",
            "P50",
            "P95",
            "P99",
            "CLIENT_SUCCESS",
            "CLIENT_RPS",
            "TCP_CONN",
        ],
        rows,
    )
    if output is Format.table:
        _unreachable(answer)


def top(
    name: str = typer.Argument(..., help="A workload or service."),
    namespace: Optional[str] = NamespaceOpt,
    window: str = WindowOpt,
    limit: int = typer.Option(20, "--limit", min=1, max=200, help="How many rows."),
    once: bool = typer.Option(False, "--once", help="Print one table and exit."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    seconds = _seconds(window)
    if once or output is not Format.table:
        answer = _get(server, "/api/v1/top", name=name, namespace=namespace, window=seconds, limit=limit)
        emit(answer, output, *_top_table(answer))
        return
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                answer = _get(server, "/api/v1/top", name=name, namespace=namespace, window=seconds, limit=limit)
                table = Table(
                    box=None,
                    header_style="bold",
                    pad_edge=False,
                    title=Text(f"{name}: busiest paths, last {seconds}s  ({datetime.now():%H:%M:%S})"),
                )
                columns, rows = _top_table(answer)
                for column in columns:
                    table.add_column(column)
                for row in rows:
                    table.add_row(*[Text(str(c)) for c in row])
                live.update(table, refresh=True)
                time.sleep(2)
        except KeyboardInterrupt:
            pass


def _top_table(answer: dict) -> tuple[list[str], list[list]]:
    columns = ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS"]
    rows = [
        [
            r["source"],
            r["destination"],
            r["method"],
            r["path"],
            r["requests"],
            _ms(r["best_ms"]),
            _ms(r["worst_ms"]),
            _ms(r["last_ms"]),
            _rate(r["success_rate"]),
        ]
        for r in answer["items"]
    ]
    return columns, rows


def tap(
    name: str = typer.Argument(..., help="A workload or service."),
    path: Optional[str] = typer.Option(None, "--path", help="Only paths starting with this."),
    method: Optional[str] = typer.Option(None, "--method", help="Only this HTTP method."),
    namespace: Optional[str] = NamespaceOpt,
    limit: int = typer.Option(
        0,
        "--limit",
        min=0,
        help="Stop after this many requests (0: never). The old spelling --max works until the next release.",
    ),
    old_limit: Optional[int] = alias("--max", "--limit", min=0),
    stop_after: float = duration_option(
        "0", "--duration", help="Stop after this long, e.g. 30s (0: never; a bare number: seconds)."
    ),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    limit = old_limit if old_limit is not None and not limit else limit
    if stop_after < 0:
        fail("--duration must not be negative")
    if stop_after:
        signal.signal(signal.SIGALRM, _stop)
        signal.setitimer(signal.ITIMER_REAL, stop_after)
    seen = 0
    try:
        for event in client(server).stream(
            "/api/v1/tap", {"name": name, "namespace": namespace, "path": path, "method": method}
        ):
            if "tapping" in event:  # on stderr, so -o json output stays pure JSON lines
                errors.print(Text(f"tapping {', '.join(event['tapping'])} (Ctrl-C stops)", style="dim"))
                continue
            if output is Format.table:
                console.print(Text(_tap_line(event)))
            else:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
            seen += 1
            if limit and seen >= limit:
                return
    except ApiError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass


def _stop(*_) -> None:
    raise KeyboardInterrupt


def _tap_line(e: dict) -> str:
    when = datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S.%f")[:-3]
    direction = "in " if e["reporter"] == "destination" else "out"
    tls = {True: "mtls", False: "plain"}[e["mtls"]] if e["reporter"] == "destination" else "-"
    source = e["source"]["workload"] if e["source"]["workload"] != "unknown" else e["source"]["principal"]
    if e["protocol"] == "tcp":
        return f"{when} {direction} {source} -> {e['destination']['workload']} tcp {e['event']} {e['bytes']}B tls={tls}"
    status = e["status"] if not e["grpc_status"] else f"{e['status']} grpc={e['grpc_status']}"
    line = (
        f"{when} {direction} {source} -> {e['destination']['workload']} {e['method']} "
        f"{e['authority']}{e['path']} {status} {_ms(e['duration_ms'])} tls={tls} flags={e['flags']}"
    )
    return line + (f" id={e['request_id']}" if e.get("request_id") else "")


def edges(
    namespace: Optional[str] = NamespaceOpt,
    window: str = WindowOpt,
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    answer = _get(server, "/api/v1/edges", namespace=namespace, window=_seconds(window))
    secured = {True: "yes", False: "NO", None: "unknown"}
    rows = [
        [
            e["source"],
            e["destination"],
            e["source_namespace"],
            e["destination_namespace"],
            e["source_principal"] or "-",
            e["destination_principal"] or "-",
            secured[e["secured"]],
            e["requests"] + e["tcp_connections"],
        ]
        for e in answer["items"]
    ]
    emit(answer, output, ["SRC", "DST", "SRC_NS", "DST_NS", "CLIENT_ID", "SERVER_ID", "SECURED", "REQUESTS"], rows)


def register(app: typer.Typer) -> None:
    app.command(help=STAT_HELP)(stat)
    app.command(help=TOP_HELP)(top)
    app.command(help=TAP_HELP)(tap)
    app.command(help=EDGES_HELP)(edges)
