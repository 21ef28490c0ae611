"""The last minutes of one sidecar's traffic, for `lattice stat`, `top`, `edges` and `tap`.

`Window` keeps one bucket per second for `KEEP_SECONDS`: request counts, failures and a latency
histogram per (reporter, peer, service), and per path for `top`. It is filled once a second from
what Envoy counted since the second before (`Window.record`, agent/envoy_stats.py), never per
request, so memory and CPU stay flat at any rate; percentiles come from log-spaced buckets (each
10% wide; Envoy's own bins are as fine), which is what `lattice stat` prints and what merging
many sidecars' answers needs (mesh/telemetry.py: `bucket_of`, `percentile`). A path's best,
worst and last latency are its fastest and slowest bins and the mean of its last second.
`Tap` fans requests out, as they arrive, to whoever is watching; a watcher that does not keep up
loses requests rather than slowing the sidecar.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from lattice.agent import envoy_stats
from lattice.agent.access_log import Request
from lattice.mesh.telemetry import bucket_of
from lattice.translate import agent_names

KEEP_SECONDS = 300
MAX_PATHS = 200  # per second; beyond it, paths count under "(other)" (ids in paths would be unbounded)
TAP_QUEUE = 1000
_REQUESTS = (
    agent_names.COUNT_AND_DURATION,
    agent_names.COUNT,
    agent_names.DURATION,
)  # whichever Envoy keeps, in this order


class _Second:
    __slots__ = ("at", "peers", "paths")

    def __init__(self, at: int) -> None:
        self.at = at
        self.peers: dict[
            tuple, list
        ] = {}  # (reporter, peer, service, mtls) -> [requests, failures, {bucket: n}, tcp opened, tcp bytes]
        self.paths: dict[tuple, list] = {}  # key -> [requests, failures, min ms, max ms, last ms]


class Window:
    def __init__(self) -> None:
        self._seconds: deque[_Second] = deque()
        self._before = envoy_stats.Reading()

    def record(self, reading: envoy_stats.Reading, at: int | None = None) -> None:
        """What Envoy counted since the previous reading, as second `at` (now by default)."""
        before, self._before = self._before, reading
        second = self._second(int(time.time()) if at is None else at)
        histograms = reading.histograms
        stat = next((n for n in _REQUESTS if any(k[0] == n for k in histograms)), None)
        for key, bins in histograms.items():
            if key[0] == stat:
                self._requests(second, key[1], envoy_stats.bins_delta(bins, before.histograms.get(key)))
            elif key[0] == agent_names.PATHS:
                self._path(second, key[1], envoy_stats.bins_delta(bins, before.histograms.get(key)))
        for key, total in reading.counters.items():
            if key[0] in (agent_names.TCP_OPENED, agent_names.TCP_SENT, agent_names.TCP_RECEIVED):
                old = before.counters.get(key, 0)
                gained = total - old if total >= old else total
                if gained:
                    row = self._row(second, envoy_stats.ends(key[1], "tcp"))
                    row[3 if key[0] == agent_names.TCP_OPENED else 4] += gained
        if not second.peers and not second.paths and len(self._seconds) > 1 and self._seconds[-1] is second:
            self._seconds.pop()  # nothing happened: keep no empty second

    @staticmethod
    def _row(second: _Second, e: envoy_stats.Ends) -> list:
        key = (e.reporter, e.peer, e.service, e.mtls)
        row = second.peers.get(key)
        if row is None:
            row = second.peers[key] = [0, 0, {}, 0, 0]
        return row

    def _requests(self, second: _Second, tags: tuple, bins: envoy_stats.Bins) -> None:
        n = sum(c for _, _, c in bins)
        if not n:
            return
        e = envoy_stats.ends(tags)
        row = self._row(second, e)
        row[0] += n
        row[1] += n if e.failed else 0
        histogram = row[2]
        for lower, _, count in bins:
            index = bucket_of(lower / 1000)  # within 10% as the buckets are: a bin is narrower
            histogram[index] = histogram.get(index, 0) + count

    def _path(self, second: _Second, tags: tuple, bins: envoy_stats.Bins) -> None:
        n = sum(c for _, _, c in bins)
        if not n:
            return
        e, t = envoy_stats.ends(tags), dict(tags)
        best = min(lower for lower, _, _ in bins) / 1000
        worst = max(lower + width for lower, width, _ in bins) / 1000
        last = sum(envoy_stats.mid(lower, width) * c for lower, width, c in bins) / n / 1000
        failed = n if e.failed else 0
        paths = second.paths
        key = (e.reporter, e.peer.workload, t.get("method", ""), t.get("path", ""), e.service)
        if key not in paths and len(paths) >= MAX_PATHS:
            key = (*key[:3], "(other)", key[4])
        stats = paths.get(key)
        if stats is None:
            paths[key] = [n, failed, best, worst, last]
        else:
            stats[0] += n
            stats[1] += failed
            stats[2], stats[3], stats[4] = min(stats[2], best), max(stats[3], worst), last

    def _second(self, at: int) -> _Second:
        seconds = self._seconds
        if seconds and seconds[-1].at == at:
            return seconds[-1]
        for s in reversed(seconds):  # a late entry (Envoy batches): its own second if still kept
            if s.at == at:
                return s
            if s.at < at:
                break
        second = _Second(at)
        seconds.append(second)
        if len(seconds) > 1 and seconds[-2].at > at:  # rare: keep them in order
            ordered = sorted(seconds, key=lambda s: s.at)
            seconds.clear()
            seconds.extend(ordered)
        while seconds and seconds[0].at < at - KEEP_SECONDS:
            seconds.popleft()
        return second

    def series(self, seconds: float, step: float, now: float | None = None) -> list[dict]:
        """The last `seconds` in steps of `step` seconds, oldest first: per step, its per-peer
        rows as `summary` gives them (the console's charts: rates, success and latency over time)."""
        now = time.time() if now is None else now
        count = max(1, min(int(seconds // step), 300))
        start = now - count * step
        steps: list[dict[tuple, list]] = [{} for _ in range(count)]
        for s in self._seconds:
            index = int((s.at - start) // step)
            if not 0 <= index < count:
                continue
            for key, (n, failed, histogram, opened, tcp_bytes) in s.peers.items():
                row = steps[index].setdefault(key, [0, 0, {}, 0, 0])
                row[0] += n
                row[1] += failed
                row[3] += opened
                row[4] += tcp_bytes
                for bucket, c in histogram.items():
                    row[2][bucket] = row[2].get(bucket, 0) + c
        return [
            {"start": round(start + i * step, 3), "seconds": step, "peers": [_peer_row(k, v) for k, v in rows.items()]}
            for i, rows in enumerate(steps)
        ]

    def summary(self, seconds: float, now: float | None = None) -> dict:
        """Totals over the last `seconds`: per peer (stat, edges) and per path (top), as JSON."""
        now = time.time() if now is None else now
        since = now - seconds
        peers: dict[tuple, list] = {}
        paths: dict[tuple, list] = {}
        for s in self._seconds:
            if s.at < since:
                continue
            for key, (n, failed, histogram, opened, tcp_bytes) in s.peers.items():
                row = peers.setdefault(key, [0, 0, {}, 0, 0])
                row[0] += n
                row[1] += failed
                row[3] += opened
                row[4] += tcp_bytes
                for index, count in histogram.items():
                    row[2][index] = row[2].get(index, 0) + count
            for key, (n, failed, low, high, last) in s.paths.items():
                path = paths.get(key)
                if path is None:
                    paths[key] = [n, failed, low, high, last]
                else:
                    path[0] += n
                    path[1] += failed
                    path[2], path[3], path[4] = min(path[2], low), max(path[3], high), last
        return {
            "seconds": seconds,
            "peers": [_peer_row(k, v) for k, v in peers.items()],
            "paths": [
                {
                    "reporter": k[0],
                    "peer_workload": k[1],
                    "method": k[2],
                    "path": k[3],
                    "service": k[4],
                    "requests": v[0],
                    "failures": v[1],
                    "best_ms": round(v[2], 3),
                    "worst_ms": round(v[3], 3),
                    "last_ms": round(v[4], 3),
                }
                for k, v in paths.items()
            ],
        }


def _peer_row(k: tuple, v: list) -> dict:
    return {
        "reporter": k[0],
        "peer_workload": k[1].workload,
        "peer_namespace": k[1].namespace,
        "peer_principal": k[1].principal,
        "service": k[2],
        "mtls": k[3],
        "requests": v[0],
        "failures": v[1],
        "latency": {str(i): c for i, c in sorted(v[2].items())},
        "tcp_opened": v[3],
        "tcp_bytes": v[4],
    }


class Tap:
    """Watchers are asyncio queues on the agent's loop; requests are published from the access log
    worker thread, so they cross over with `call_soon_threadsafe`."""

    def __init__(self) -> None:
        self._watchers: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}

    def publish(self, r: Request) -> None:
        if not self._watchers:
            return
        event = tap_event(r)
        for queue, loop in list(self._watchers.items()):
            if queue.qsize() < TAP_QUEUE:
                loop.call_soon_threadsafe(queue.put_nowait, event)

    def watch(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers[queue] = asyncio.get_running_loop()
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._watchers.pop(queue, None)

    @property
    def active(self) -> bool:
        return bool(self._watchers)


def tap_event(r: Request) -> dict:
    """One request as `lattice tap` shows it: who called whom, what, and how it went. Never headers,
    bodies or query strings (they may carry credentials)."""
    return {
        "time": r.start,
        "request_id": r.request_id,
        "reporter": r.reporter,
        "protocol": r.protocol,
        "source": {"workload": r.source.workload, "namespace": r.source.namespace, "principal": r.source.principal},
        "destination": {
            "workload": r.destination.workload,
            "namespace": r.destination.namespace,
            "principal": r.destination.principal,
        },
        "service": r.service,
        "mtls": r.mtls,
        "method": r.method,
        "path": r.path,
        "authority": r.authority,
        "status": r.code,
        "grpc_status": r.grpc_status,
        "flags": r.flags,
        "duration_ms": round(r.duration_ms, 3),
        "event": "open" if r.opened else "close" if r.closed else "data",
        "bytes": r.sent + r.received,
    }
