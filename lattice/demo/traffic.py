"""What each sidecar's Envoy counted on its inbound listener: requests, response classes, latency.

Envoy names a listener's HTTP stats after the listener's stat prefix, `http.inbound_0.0.0.0_<port>.*`; the
agent passes Envoy's `/stats?format=json` through on its own port.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import aiohttp


def inbound_stat_prefix(port: int) -> str:
    """The inbound connection manager's stat prefix, as lattice.translate.names gives it (Istio's)."""
    return f"inbound_0.0.0.0_{port}"


CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class InboundStats:
    total: int = 0
    by_class: tuple[int, ...] = (0, 0, 0, 0, 0)  # in CLASSES order
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def ok(self) -> int:
        return self.by_class[1]

    @property
    def errors(self) -> int:
        return self.by_class[4]

    @property
    def completed(self) -> int:
        return sum(self.by_class)


def stats_filter(port: int) -> str:
    return rf"^http\.{re.escape(inbound_stat_prefix(port))}\.downstream_rq_(total|[1-5]xx|time)$"


def parse_inbound(payload: dict, port: int) -> InboundStats:
    """InboundStats from Envoy's /stats?format=json (missing counters are zero)."""
    prefix = f"http.{inbound_stat_prefix(port)}.downstream_rq_"
    counters: dict[str, int] = {}
    quantiles: tuple[float | None, float | None] = (None, None)
    for entry in payload.get("stats", []):
        if "name" in entry and entry["name"].startswith(prefix):
            counters[entry["name"].removeprefix(prefix)] = int(entry.get("value") or 0)
        elif "histograms" in entry:
            quantiles = _latency(entry["histograms"], prefix + "time")
    return InboundStats(counters.get("total", 0), tuple(counters.get(c, 0) for c in CLASSES), *quantiles)


def _latency(histograms: dict, name: str) -> tuple[float | None, float | None]:
    """p50 and p99 since Envoy started; Envoy recomputes them each stats flush (5 s)."""
    supported = histograms.get("supported_quantiles", [])
    for histogram in histograms.get("computed_quantiles", []):
        if histogram.get("name") == name:
            values = [v.get("cumulative") for v in histogram.get("values", [])]
            return _quantile(supported, values, 50), _quantile(supported, values, 99)
    return None, None


def _quantile(supported: list[float], values: list, q: float) -> float | None:
    try:
        return values[supported.index(q)]
    except (ValueError, IndexError):
        return None


async def scrape(session: aiohttp.ClientSession, proxy: dict) -> InboundStats | None:
    """One workload's inbound stats from its agent, or None if it cannot be read right now."""
    url = f"http://{proxy['address']}:{proxy['agent_port']}/stats"
    params = {"format": "json", "filter": stats_filter(proxy["port"])}
    try:
        async with session.get(url, params=params) as response:
            if response.status != 200:
                return None
            return parse_inbound(await response.json(content_type=None), proxy["port"])
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


async def scrape_all(session: aiohttp.ClientSession, proxies: list[dict]) -> dict[str, InboundStats | None]:
    """proxy id -> its stats, read from all agents at once."""
    async with asyncio.TaskGroup() as tasks:
        reads = {p["id"]: tasks.create_task(scrape(session, p), name=f"scrape-{p['id']}") for p in proxies}
    return {proxy_id: task.result() for proxy_id, task in reads.items()}
