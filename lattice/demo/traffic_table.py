"""Requests per service and version, as the mesh sees them: rates between readings, and the table."""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.table import Table
from rich.text import Text

from lattice.demo.topology import REQUIRED
from lattice.demo.traffic import InboundStats

ORDER = ("productpage", "details", "reviews", "ratings")  # the order a request meets them
CLIENT = "loadgen"  # sends, never receives: a row of zeros would only be noise


@dataclass(frozen=True)
class TrafficRow:
    service: str
    version: str
    address: str
    stats: InboundStats | None  # None: its agent did not answer this time
    rps: float | None


class TrafficMeter:
    """Turns successive readings into rows; remembers each proxy's last total for its rate."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def rows(self, proxies: list[dict], readings: dict[str, InboundStats | None], now: float) -> list[TrafficRow]:
        rows = [self._row(p, readings.get(p["id"]), now) for p in proxies if p["service"] != CLIENT]
        return sorted(rows, key=_order)

    def _row(self, proxy: dict, stats: InboundStats | None, now: float) -> TrafficRow:
        rps = None
        if stats is not None:
            before = self._last.get(proxy["id"])
            if before is not None and now > before[0]:
                rps = max(0, stats.total - before[1]) / (now - before[0])
            self._last[proxy["id"]] = (now, stats.total)
        return TrafficRow(proxy["service"], proxy["version"], f"{proxy['address']}:{proxy['port']}", stats, rps)


def _order(row: TrafficRow) -> tuple:
    rank = ORDER.index(row.service) if row.service in ORDER else len(ORDER)
    return rank, row.service, row.version, row.address


def unanswered(rows: list[TrafficRow]) -> list[str]:
    """The REQUIRED services (and reviews versions) with no 2xx on their inbound listener."""
    missing = []
    for service, version in REQUIRED:
        ok = sum(r.stats.ok for r in rows if r.stats and r.service == service and version in (None, r.version))
        if not ok:
            missing.append(f"{service} {version}" if version else service)
    return missing


def total_requests(rows: list[TrafficRow]) -> int:
    return sum(r.stats.total for r in rows if r.stats)


def render(rows: list[TrafficRow], title: str | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", header_style="bold", pad_edge=False)
    for name in ("SERVICE", "VERSION", "ADDRESS"):
        table.add_column(name)
    for name in ("REQUESTS", "RPS", "SUCCESS", "P50", "P99"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row.service, row.version, row.address, *_cells(row))
    return table


def _cells(row: TrafficRow) -> list[str | Text]:
    s = row.stats
    if s is None:
        return [Text("no stats", style="dim"), "", "", "", ""]
    rps = "" if row.rps is None else f"{row.rps:.1f}"
    return [str(s.total), rps, _success(s), _ms(s.p50_ms), _ms(s.p99_ms)]


def _success(stats: InboundStats) -> Text | str:
    # Istio's success rate: a response that is not a 5xx (a 404 is the app's answer, not an outage).
    if not stats.completed:
        return "-"
    ratio = 100 * (stats.completed - stats.errors) / stats.completed
    style = "green" if ratio >= 99 else "yellow" if ratio >= 90 else "red"
    return Text(f"{ratio:.1f}%", style=style)


def _ms(value: float | None) -> str:
    # Envoy records request times in whole milliseconds: a 0 means "under one", not free.
    if value is None:
        return "-"
    return "<1 ms" if value < 1 else f"{value:.1f} ms"


def render_edges(edges: list[dict]) -> Table:
    """Who called whom (`lattice edges`): both identities, and whether the callee saw mutual TLS."""
    table = Table(
        title="who called whom, as the callee's sidecar saw it",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        header_style="bold",
        pad_edge=False,
    )
    for name in ("FROM", "TO", "CLIENT IDENTITY", "MTLS"):
        table.add_column(name)
    table.add_column("REQUESTS", justify="right")
    for e in edges:
        secured = (
            Text("yes", style="green")
            if e["secured"]
            else Text("unknown" if e["secured"] is None else "NO", style="yellow" if e["secured"] is None else "red")
        )
        table.add_row(e["source"], e["destination"], e["source_principal"] or "-", secured, str(e["requests"]))
    return table
