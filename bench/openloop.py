"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, whatever came back.

Each request's latency is measured from its *intended* send time, so a stall (in the proxy, the
server or this process) shows up in the latency of every request that should have gone out
meanwhile, instead of silently lowering the rate (wrk and hey are closed-loop and hide it).
Connections are kept alive and reused; when every open connection is busy, another is opened.

    run(target=("127.0.10.5", 15001), url="http://ratings:9080/", rate=1000, seconds=10)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Result:
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    connections: int = 0
    late_sends: int = 0  # requests that left more than 1 ms after their scheduled time

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else float("nan")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def _run(
    target: tuple[str, int], url: str, host: str, rate: float, seconds: float, headers: dict[str, str]
) -> Result:
    proxied = url.startswith("http://")
    path = url if proxied else url or "/"
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lattice-openloop\r\n{extra}\r\n".encode()
    idle: list[_Connection] = []
    result = Result(rate, seconds)
    loop = asyncio.get_running_loop()

    async def one(intended: float) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = _Connection(*await asyncio.open_connection(*target))
                result.connections += 1
            status = await conn.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if conn is not None:
                conn.writer.close()
            return
        result.latencies_ms.append((loop.time() - intended) * 1000)
        if status != 200:
            result.errors += 1
        idle.append(conn)

    total = int(rate * seconds)
    start = loop.time() + 0.05
    tasks = []
    for i in range(total):
        intended = start + i / rate
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            result.late_sends += 1
        tasks.append(asyncio.ensure_future(one(intended)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.writer.close()
    return result


def run(
    target: tuple[str, int], url: str, host: str, rate: float, seconds: float, headers: dict[str, str] | None = None
) -> Result:
    """Blocking: `rate` requests/s for `seconds` to `target`, as a proxy request when `url` is absolute
    (`headers`: the sidecar's Proxy-Authorization, as the app sends it)."""
    return asyncio.run(_run(target, url, host, rate, seconds, headers or {}))
