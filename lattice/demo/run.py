"""`lattice demo`: start a control plane and Bookinfo under sidecars, drive traffic, show what the mesh sees.

Order: control plane; then the Bookinfo workloads all at once (each `lattice run` waits for its
own sidecar) until the control plane reports each healthy, connected and in sync; then the traffic
client the same way; then the live table until the duration ends or a signal arrives. Stopping is
the reverse: workloads (each `lattice run` stops its app, then its Envoy), then the control plane —
always, also on errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lattice.api.registration import gateway_local_port
from lattice.demo import topology
from lattice.demo.processes import Child, lattice_command, stop_all
from lattice.demo.readiness import NotReady, fetch_status, wait_until_ready
from lattice.demo.traffic import scrape_all
from lattice.demo.traffic_table import TrafficMeter, TrafficRow, render, render_edges, total_requests, unanswered
from lattice.server.config import admin_token, lattice_home, read_discovery

NETWORKING = Path(__file__).parent / "networking"  # Bookinfo routing files, Istio's shapes
GATEWAY = "ingressgateway"  # `lattice gateway`'s default name, which bookinfo-gateway.yaml's selector finds
PRINT_EVERY = 5.0  # seconds between plain tables when stdout is not a terminal (CI logs)
PIPE_PROGRESS_EVERY = 1.0  # seconds between progress lines on a pipe
SERVER_START_TIMEOUT = 20.0
# Istio's way to require mutual TLS for every workload: one mesh-wide policy in the root namespace.
STRICT_MTLS = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
# One request in ten traced (Istio's default is one in a hundred), so `lattice trace` has some
# at the demo's rate within seconds.
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 10}]
"""


class DemoError(Exception):
    pass


class Progress:
    """A spinner line on a terminal; on a pipe, one printed line per change."""

    def __init__(self, console: Console, text: str) -> None:
        self.console = console
        self.last, self.printed = "", 0.0
        self.spinner = console.status(text) if console.is_terminal else None
        self.update(text)

    def update(self, text: str) -> None:
        if self.spinner is not None:
            self.spinner.update(text)
        elif text != self.last and time.monotonic() - self.printed >= PIPE_PROGRESS_EVERY:
            # a log gets a line a second at most, not one per state change of seven workloads
            self.console.print(text, highlight=False)
            self.printed = time.monotonic()
        self.last = text

    def __enter__(self) -> Progress:
        if self.spinner is not None:
            self.spinner.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.spinner is not None:
            self.spinner.stop()


class Demo:
    def __init__(self, home: Path, rate: float, console: Console, main: asyncio.Task) -> None:
        self.home, self.rate, self.console, self.main = home, rate, console, main
        self.logs = home / "demo-logs"
        self.env = os.environ | {
            "LATTICE_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "GRPC_ENABLE_FORK_SUPPORT": "false",
        }
        self.started = time.monotonic()
        self.api = self.agent_api = ""
        self.tokens: dict[str, str] = {}  # workload name -> its join token
        self.server: Child | None = None
        self.workloads: list[Child] = []
        self.rows: list[TrafficRow] = []
        self.traffic_started: float | None = None
        self.sampled_at = 0.0  # when self.rows were read
        self.edges: list[dict] = []  # who called whom, from the sidecars (server/observe.py), at the end
        self.answering_at: float | None = None
        self.stopping = False

    def elapsed(self, since: float | None = None) -> float:
        return time.monotonic() - (self.started if since is None else since)

    async def run(self, duration: float | None, check: bool) -> int:
        try:
            await self._start()
            await self._traffic(duration)
        except asyncio.CancelledError:
            this = asyncio.current_task()
            assert this is not None  # a coroutine run by a task
            this.uncancel()  # we stop on purpose; later awaits must not see it
            if self.traffic_started is None:
                self.console.print("interrupted before the mesh was ready")
                return 130
        except (DemoError, NotReady, aiohttp.ClientError, OSError) as e:
            _error(f"{e}\nlogs: {self.logs}")
            return 1
        finally:
            await self._stop()
        return self._summary(check)

    def on_signal(self) -> None:
        if self.stopping:
            self.console.print("already stopping; waiting for the workloads to exit")
        else:
            self.main.cancel()

    # --- start -----------------------------------------------------------------------------

    async def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.console.print(f"logs: {self.logs}", highlight=False)
        with Progress(self.console, "starting the control plane") as progress:
            self.api = await self._start_server()
            server_up = self.elapsed()
            apps = [*topology.bookinfo(), topology.loadgen(self.rate)]
            progress.update("requiring mutual TLS mesh-wide; minting a join token per workload")
            await self._admin("POST", "/api/v1/apply", STRICT_MTLS.encode(), "application/yaml")
            # The demo stands in for an operator here: one single-use, short-lived token per
            # workload, passed to its `lattice run` in LATTICE_TOKEN.
            for spec in apps:
                token = await self._admin(
                    "POST",
                    "/api/v1/tokens",
                    json.dumps(
                        {
                            "service_account": spec.service,
                            "ttl_seconds": 600,
                            "uses": 1,
                            "description": f"lattice demo: {spec.name}",
                        }
                    ).encode(),
                    "application/json",
                )
                self.tokens[spec.name] = token["token"]
            progress.update("applying Istio's bookinfo-gateway.yaml; starting the ingress gateway")
            await self._start_gateway()
            progress.update(f"starting {len(apps)} workloads, each under its own sidecar")
            # All at once: sidecars route only to endpoints whose app listens, so loadgen's first
            # requests cannot reach a service that is still starting.
            status = await self._start_workloads(apps, progress)
        self._announce(status, server_up)

    async def _start_gateway(self) -> None:
        """An ingress gateway serving Istio's bookinfo-gateway.yaml, as it is: productpage from a
        browser, through the gateway (port 80 of the Gateway served on 8080 of its own address)."""
        await self._admin(
            "POST", "/api/v1/apply", (NETWORKING / "bookinfo-gateway.yaml").read_bytes(), "application/yaml"
        )
        token = await self._admin(
            "POST",
            "/api/v1/tokens",
            json.dumps(
                {
                    "service_account": "istio-ingressgateway",
                    "namespace": "istio-system",
                    "ttl_seconds": 600,
                    "uses": 1,
                    "description": "lattice demo: ingress gateway",
                }
            ).encode(),
            "application/json",
        )
        argv = [*lattice_command(), "gateway", "--server", self.agent_api]
        env = self.env | {"LATTICE_TOKEN": token["token"]}
        self.workloads.append(await Child(GATEWAY, argv, env, self.logs / f"{GATEWAY}.log").start())

    async def _start_workloads(self, specs: Sequence[topology.DemoWorkload], progress: Progress) -> dict:
        """Start `specs` (all at once) and wait until they are all ready."""
        self.workloads += [await self._workload(spec).start() for spec in specs]
        names = [child.name for child in self.workloads]
        return await wait_until_ready(
            self.api, names, lambda left: progress.update(_waiting(left)), self._check_alive, self.admin_headers
        )

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {admin_token(self.home)}"}

    async def _admin(self, method: str, path: str, body: bytes, content_type: str) -> dict:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=self.admin_headers) as session:
            async with session.request(
                method, f"{self.api}{path}", data=body, headers={"Content-Type": content_type}
            ) as response:
                answer = await response.json()
                if response.status != 200:
                    raise DemoError(f"the control plane refused {method} {path}: {answer.get('error', answer)}")
                return answer

    async def _start_server(self) -> str:
        db = self.home / "demo.db"
        for path in (db, db.with_name("demo.db-wal"), db.with_name("demo.db-shm")):
            path.unlink(missing_ok=True)  # the demo always starts from clean config
        argv = [
            *lattice_command(),
            "server",
            "--home",
            str(self.home),
            "--db",
            str(db),
            "--api-port",
            "0",
            "--xds-port",
            "0",
            "--agent-port",
            "0",
        ]
        self.server = await Child("server", argv, self.env, self.logs / "server.log").start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            info = read_discovery(self.home)
            if info is not None and info.get("pid") == self.server.pid:
                self.agent_api = info["agent"]
                return info["api"]
            await asyncio.sleep(0.05)
        raise DemoError(
            f"the control plane did not start within {SERVER_START_TIMEOUT:.0f} s; its log "
            f"ends:\n{self.server.log_tail()}"
        )

    def _workload(self, spec: topology.DemoWorkload) -> Child:
        argv = [
            *lattice_command(),
            "run",
            "--service",
            spec.service,
            "--version",
            spec.version,
            "--port",
            str(topology.PORT),
            "--server",
            self.agent_api,
            "--",
            *spec.command,
        ]
        return Child(
            spec.name,
            argv,
            self.env | spec.env | {"LATTICE_TOKEN": self.tokens[spec.name]},
            self.logs / f"{spec.name}.log",
        )

    def _check_alive(self) -> None:
        for child in [c for c in (self.server, *self.workloads) if c is not None]:
            if child.returncode is not None:
                raise DemoError(
                    f"{child.name} exited with code {child.returncode}; its log ({child.log}) ends:\n{child.log_tail()}"
                )

    def _proxy_env(self, name: str) -> Path | None:
        """The proxy.env a workload's sidecar named at start (its log), holding its HTTP_PROXY."""
        child = next((c for c in self.workloads if c.name == name), None)
        found = re.findall(r"(/\S+/proxy\.env)", child.log.read_text(errors="replace")) if child else []
        return Path(found[-1]) if found else None

    def _announce(self, status: dict, server_up: float) -> None:
        client = next(p for p in status["proxies"] if p["service"] == "loadgen")
        home = shlex.quote(str(self.home))
        self.console.print(
            f"[bold green]mesh ready in {self.elapsed():.1f} s[/] (control plane up in {server_up:.1f} s): "
            f"{len(status['proxies'])} workloads, each with its own Envoy sidecar",
            highlight=False,
        )
        identities = sorted(
            {
                p["certificate"]["identity"].rsplit("/", 1)[-1]
                for p in status["proxies"]
                if p.get("certificate") and p["namespace"] == "default"
            }
        )
        self.console.print(
            f"mutual TLS: STRICT mesh-wide; identities spiffe://cluster.local/ns/default/sa/{{{','.join(identities)}}}",
            highlight=False,
        )
        # STRICT means productpage's port takes mesh mTLS only; from outside, enter the mesh the
        # way its own apps do, through a sidecar's outbound proxy (here the load generator's), with
        # the credential its app holds (the sidecar's proxy.env, readable by this user only).
        credential = self._proxy_env(client["name"])
        if credential is not None:
            self.console.print(
                f"productpage, through loadgen's sidecar: [bold](. {shlex.quote(str(credential))}; "
                'curl -x "$HTTP_PROXY" http://productpage:9080/productpage)[/]',
                highlight=False,
                soft_wrap=True,  # one line, to copy as it is
            )
        gateway = next((p for p in status["proxies"] if p["name"] == GATEWAY), None)
        if gateway is not None:
            port = gateway_local_port(80, {})
            self.console.print(
                f"productpage in a browser, through the ingress gateway: [bold]http://{gateway['address']}:{port}/productpage[/]",
                highlight=False,
            )
        self.console.print(
            f"the console (live graph, tap, why): [bold]{self.api}/ui/[/]; log in with "
            f"[bold]LATTICE_HOME={home} lattice dashboard[/] (or --url for the one-time link)",
            highlight=False,
        )
        self.console.print(
            "change routing while it runs, from another terminal (Istio's Bookinfo files apply unchanged):\n"
            f"  LATTICE_HOME={home} lattice apply -f {NETWORKING}/virtual-service-reviews-v3.yaml\n"
            f"  LATTICE_HOME={home} lattice status",
            highlight=False,
        )
        self.console.print(
            "watch it live (every sidecar reports its own traffic; no Prometheus needed):\n"
            f"  LATTICE_HOME={home} lattice stat            success rate, RPS, p50/p95/p99 per workload\n"
            f"  LATTICE_HOME={home} lattice tap reviews     each request as it happens, with both identities\n"
            f"  LATTICE_HOME={home} lattice edges           who calls whom, over mutual TLS or not\n"
            f"  LATTICE_HOME={home} lattice trace productpage",
            highlight=False,
        )

    # --- traffic ---------------------------------------------------------------------------

    async def _traffic(self, duration: float | None) -> None:
        self.traffic_started = time.monotonic()
        deadline = None if duration is None else self.traffic_started + duration
        until = "Ctrl-C to stop" if deadline is None else f"stopping in {duration:g} s"
        self.console.print(
            f"loadgen → productpage at {self.rate:g} requests/s, {topology.JASON_SHARE:.0%} as end-user: jason; "
            f"{until}",
            highlight=False,
        )
        meter, printed = TrafficMeter(), time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), headers=self.admin_headers) as session:
            with self._live() as live:
                while deadline is None or time.monotonic() < deadline:
                    await self._sample(session, meter)
                    if live is not None:
                        live.update(self._table(), refresh=True)
                    elif time.monotonic() - printed >= PRINT_EVERY:
                        self.console.print(self._table())
                        printed = time.monotonic()
                    await asyncio.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
                await self._sample(session, meter)  # the reading the summary and --check use
                self.edges = await self._edges(session)

    @contextmanager
    def _live(self) -> Iterator[Live | None]:
        if not self.console.is_terminal:
            yield None
            return
        # transient: the summary prints the final table; the live one would be a duplicate
        with Live(console=self.console, auto_refresh=False, transient=True) as live:
            yield live

    async def _sample(self, session: aiohttp.ClientSession, meter: TrafficMeter) -> None:
        self._check_alive()
        try:
            status = await fetch_status(session, self.api)
        except (aiohttp.ClientError, TimeoutError):
            return  # a slow moment of the control plane; the next tick reads again
        readings = await scrape_all(session, status["proxies"])
        self.sampled_at = time.monotonic()
        self.rows = meter.rows(status["proxies"], readings, self.sampled_at)
        if self.answering_at is None and not unanswered(self.rows):
            self.answering_at = self.elapsed()
            self.console.print(
                f"[bold green]all services answering[/] {self.answering_at:.1f} s after start", highlight=False
            )

    async def _edges(self, session: aiohttp.ClientSession) -> list[dict]:
        window = max(1, min(300, round(self.elapsed(self.traffic_started))))
        try:
            async with session.get(f"{self.api}/api/v1/edges", params={"window": str(window)}) as response:
                return (await response.json())["items"] if response.status == 200 else []
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return []

    def _table(self) -> Table:
        return render(
            self.rows,
            title=f"inbound requests, as each sidecar's Envoy counts them ({self.elapsed(self.traffic_started):.0f} s)",
        )

    # --- stop ------------------------------------------------------------------------------

    async def _stop(self) -> None:
        self.stopping = True
        running = [c for c in self.workloads if c.returncode is None]
        with Progress(self.console, f"stopping {len(running)} workloads, then the control plane"):
            await stop_all(self.workloads)
            await stop_all([self.server] if self.server else [])
        self.console.print("stopped: workloads, sidecars and control plane", highlight=False)

    def _summary(self, check: bool) -> int:
        if self.rows and self.traffic_started is not None:  # rows are sampled only once traffic started
            seconds = self.sampled_at - self.traffic_started
            # The last interval can be a fraction of a second: the average says more at the end.
            average = [replace(r, rps=r.stats.total / seconds if r.stats and seconds else None) for r in self.rows]
            self.console.print(render(average, title=f"final: {seconds:.0f} s of traffic (RPS: average)"))
            front = sum(r.stats.total for r in self.rows if r.stats and r.service == "productpage")
            self.console.print(
                f"total: {total_requests(self.rows)} requests served by sidecars, {front} of them from loadgen to "
                "productpage",
                highlight=False,
            )
        if self.edges:
            self.console.print(render_edges(self.edges))
        if not check:
            return 0
        missing = unanswered(self.rows)
        if missing:
            self.console.print(
                f"[bold red]check failed:[/] no 2xx seen on the inbound listener of: {', '.join(missing)}",
                highlight=False,
            )
            return 1
        self.console.print(
            "[bold green]check passed:[/] every service and every reviews version answered through the mesh",
            highlight=False,
        )
        return 0


def _error(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _waiting(left: dict[str, str]) -> str:
    """`waiting for a, b (app starting); c (registering)`: one line, grouped by what each waits for."""
    groups: dict[str, list[str]] = {}
    for name, reason in left.items():
        groups.setdefault(reason, []).append(name)
    return (
        "waiting for " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in groups.items())
        if left
        else "all workloads ready"
    )


@contextmanager
def _signals(handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_demo(duration: float | None, check: bool, rate: float) -> int:
    # Wide enough on a pipe that the table never wraps in a CI log.
    console = Console(width=None if sys.stdout.isatty() else 120)
    home = lattice_home()
    running = read_discovery(home)
    if running is not None:
        _error(
            f"a control plane is already running for LATTICE_HOME={home} (pid {running['pid']}); stop it, or run "
            "the demo with LATTICE_HOME set to another directory"
        )
        return 2
    if rate <= 0:
        _error("--rate must be more than 0 requests per second")
        return 2
    main = asyncio.current_task()
    assert main is not None  # a coroutine run by a task
    demo = Demo(home, rate, console, main)
    with _signals(demo.on_signal):
        return await demo.run(duration, check)
