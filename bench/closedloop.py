"""A closed-loop HTTP/1.1 client for maximum throughput: each connection sends its next request
the moment the previous answer is complete, so the rate is whatever the path can carry.

Closed-loop hides stalls (a slow answer just delays the next request), which is why latency is
measured with the open-loop generator instead; this only answers "how many per second at most".
Written on asyncio's Protocol API rather than streams: the client is often the slowest part of a
fast path, and callbacks cost a fraction of what a coroutine per request does.

    max_rate(target=("127.0.0.1", 8080), url="/", host="app", connections=32, seconds=3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Throughput:
    requests: int
    errors: int
    seconds: float
    connections: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class _Connection(asyncio.Protocol):
    """Sends, waits for one whole response (Content-Length framed), counts it, sends again."""

    def __init__(self, request: bytes, tally: dict) -> None:
        self.request, self.tally = request, tally
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = _content_length(self.buffer[:end])
            if len(self.buffer) < end + 4 + length:
                return
            self.tally["ok" if self.buffer[9:12] == b"200" else "errors"] += 1
            self.buffer = self.buffer[end + 4 + length :]
            if not self.tally["stop"]:
                self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return 0


async def _max_rate(
    target: tuple[str, int],
    url: str,
    host: str,
    connections: int,
    seconds: float,
    warmup: float,
    headers: dict,
    window: Callable[[bool], None] | None,
) -> Throughput:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lattice-closedloop\r\n{extra}\r\n".encode()
    tally = {"ok": 0, "errors": 0, "stop": False}
    loop = asyncio.get_running_loop()
    opened = [await loop.create_connection(lambda: _Connection(request, tally), *target) for _ in range(connections)]
    await asyncio.sleep(warmup)  # connections and the proxies' pools settle before counting
    if window:
        window(True)
    ok, errors, started = tally["ok"], tally["errors"], loop.time()
    await asyncio.sleep(seconds)
    result = Throughput(tally["ok"] - ok, tally["errors"] - errors, loop.time() - started, connections)
    if window:
        window(False)
    tally["stop"] = True
    for transport, _ in opened:
        transport.close()
    return result


def max_rate(
    target: tuple[str, int],
    url: str,
    host: str,
    connections: int = 32,
    seconds: float = 3.0,
    warmup: float = 0.5,
    headers: dict[str, str] | None = None,
    window: Callable[[bool], None] | None = None,
) -> Throughput:
    """Blocking: responses per second over `seconds`, with `connections` keep-alive connections
    (`headers`: the sidecar's Proxy-Authorization, as the app sends it). `window(True)` is called
    when counting starts (after the warm-up) and `window(False)` when it stops, with every
    connection still busy: what a caller measures between the two is the cost of the counted
    responses alone."""
    return asyncio.run(_max_rate(target, url, host, connections, seconds, warmup, headers or {}, window))
