"""The last minutes of one sidecar's traffic, for `lattice stat`, `top`, `edges` and `tap`.

`Window` keeps one bucket per second for `KEEP_SECONDS`: request counts, failures and a latency
histogram per (reporter, peer, service), and per path for `top`. Nothing per request is kept, so
memory stays flat at any rate; percentiles come from log-spaced buckets (each 10% wide), which
is what `lattice stat` prints and what merging many sidecars' answers needs
(mesh/telemetry.py: `bucket_of`, `percentile`).
`Tap` fans requests out, as they arrive, to whoever is watching; a watcher that does not keep up
loses requests rather than slowing the sidecar.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from lattice.agent.access_log import Request
from lattice.mesh.telemetry import bucket_of

KEEP_SECONDS = 300
MAX_PATHS = 200  # per second; beyond it, paths count under "(other)" (ids in paths would be unbounded)
TAP_QUEUE = 1000


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

    def observe(self, r: Request) -> None:
        second = self._second(int(r.start) if r.start else int(time.time()))
        peer = r.peer
        key = (r.reporter, peer, r.service, r.mtls)
        row = second.peers.get(key)
        if row is None:
            row = second.peers[key] = [0, 0, {}, 0, 0]
        if r.protocol == "tcp":
            row[3] += r.opened
            row[4] += r.sent + r.received
            return
        failed, ms = r.failed, r.duration_ms
        row[0] += 1
        row[1] += failed
        histogram, index = row[2], bucket_of(ms)
        histogram[index] = histogram.get(index, 0) + 1
        paths = second.paths
        key = (r.reporter, peer.workload, r.method, r.path, r.service)
        stats = paths.get(key)
        if stats is None:
            if len(paths) >= MAX_PATHS:
                key = (r.reporter, peer.workload, r.method, "(other)", r.service)
                stats = paths.get(key)
        if stats is None:
            paths[key] = [1, int(failed), ms, ms, ms]
        else:
            stats[0] += 1
            stats[1] += failed
            if ms < stats[2]:
                stats[2] = ms
            if ms > stats[3]:
                stats[3] = ms
            stats[4] = ms

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
                row = paths.get(key)
                if row is None:
                    paths[key] = [n, failed, low, high, last]
                else:
                    row[0] += n
                    row[1] += failed
                    row[2], row[3], row[4] = min(row[2], low), max(row[3], high), last
        return {
            "seconds": seconds,
            "peers": [
                {
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
                for k, v in peers.items()
            ],
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
