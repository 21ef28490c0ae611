"""The demo's traffic client: GET productpage through this workload's sidecar at a fixed rate.

Run as a meshed workload (`lattice run --service loadgen -- python -m lattice.demo.loadgen`):
it sends through `HTTP_PROXY` and serves `/health` on `PORT` so its sidecar reports it healthy.

Sends are scheduled on a clock, not after the previous answer (open loop), so a slow service
shows as latency and errors instead of quietly lowering the rate. A share of the requests carry
`end-user: jason`, so Istio's header-based Bookinfo routes have someone to route.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import signal
import sys
import time

import aiohttp
from aiohttp import web

MAX_IN_FLIGHT = 200  # beyond this the mesh is stuck; more requests would only pile up here
REPORT_EVERY = 10.0


def is_jason(i: int, share: float) -> bool:
    """Spread `share` of the requests evenly: request i carries the header when the running count steps."""
    return math.floor((i + 1) * share) > math.floor(i * share)


class Client:
    def __init__(self, url: str, rate: float, jason_share: float, proxy: str | None) -> None:
        self.url, self.rate, self.jason_share, self.proxy = url, rate, jason_share, proxy
        self.results: collections.Counter[str] = collections.Counter()
        self.in_flight = 0

    async def send_forever(self, session: aiohttp.ClientSession, tasks: asyncio.TaskGroup) -> None:
        start, i = time.monotonic(), 0
        while True:
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # paused (e.g. a stopped laptop): start the clock again, no burst
                start, i = time.monotonic(), 0
            if self.in_flight < MAX_IN_FLIGHT:
                tasks.create_task(self._send(session, i), name=f"request-{i}")
            else:
                self.results["skipped"] += 1
            i += 1

    async def _send(self, session: aiohttp.ClientSession, i: int) -> None:
        headers = {"user-agent": "lattice-demo-loadgen"} | (
            {"end-user": "jason"} if is_jason(i, self.jason_share) else {}
        )
        self.in_flight += 1
        try:
            async with session.get(self.url, headers=headers, proxy=self.proxy) as response:
                await response.read()
                self.results[str(response.status)] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self.results[type(e).__name__] += 1
        finally:
            self.in_flight -= 1

    async def report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            print(f"loadgen: {dict(sorted(self.results.items()))}", flush=True)


async def serve_health(port: int) -> web.AppRunner:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def run(client: Client, port: int) -> None:
    main = asyncio.current_task()
    assert main is not None  # a coroutine run by a task
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main.cancel)
    runner = await serve_health(port)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(client.report_forever(), name="report")
                tasks.create_task(client.send_forever(session, tasks), name="send")
    except asyncio.CancelledError:
        print(f"loadgen stopped: {dict(sorted(client.results.items()))}", flush=True)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lattice.demo.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--url", default="http://productpage:9080/productpage")
    parser.add_argument("--jason-share", type=float, default=0.25, help="share of requests sent as end-user: jason")
    args = parser.parse_args(argv)
    port = int(os.environ.get("PORT") or 0)
    if args.rate <= 0 or not port:
        print("loadgen: needs --rate > 0 and PORT set (run it under `lattice run`)", file=sys.stderr)
        return 2
    asyncio.run(run(Client(args.url, args.rate, args.jason_share, os.environ.get("HTTP_PROXY")), port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
