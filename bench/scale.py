"""Control-plane scale: N simulated proxies on real ADS, and how fast a change reaches them all.

    .venv/bin/python bench/scale.py [--quick] [--proxies 100 1000] [--services 20] [--protocol delta|sotw]
                                    [--json PATH]

For each fleet size N a fresh `lattice server` (default 100 ms debounce) gets DestinationRules for
M services with three versions each; N identities are enrolled as agents enroll (a multi-use join
token per service, a key and CSR each, signed by the real CA, registered through the agents' API
with a distinct id and address, healthy) and each opens its own gRPC mTLS ADS stream speaking
incremental (delta) ADS as the agents' relays do, or with `--protocol sotw` state-of-the-world as
Envoy does (bench/xds_fleet.py). All simulated proxies run on one asyncio
loop in this process. Two real `lattice run` sidecars (real Envoys) join the fleet to confirm.

Measured, from the moment the server answers the change to every affected proxy having ACKed it:
- a VirtualService change for one service (the request `lattice apply` makes), to the new
  RouteConfiguration;
- an endpoint added (a workload registers) and removed (it deregisters), to the new
  ClusterLoadAssignment;
the real Envoys' time is when their config dump shows it (routes: by Envoy's own clock). Also the
bytes of responses the fleet received per change (until the last affected ACK), the server's CPU
seconds per phase, its memory idle and with N connected, and the growth from the
smallest N to the largest. Heartbeats are left out (the server runs with a long heartbeat
timeout): they are the agents' API's load, not xDS's.
"""

from __future__ import annotations

import os

# Before gRPC loads: its fork handlers break children forked while its threads run (the server,
# sidecars and py-spy are started with fork + exec), and we never use gRPC in a child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import gc
import json
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
import procstat  # noqa: E402
from harness import BACKEND, ControlPlane, Workload, _unverified, http, stop  # noqa: E402
from rich.table import Table  # noqa: E402
from xds_fleet import ENDPOINT, ROUTE, Enroller, Fleet, Probe, address_marker, contains, lacks, plan  # noqa: E402

from lattice.agent.envoy import envoy_binary  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VERSIONS = 3
REAL_SIDECARS = 2
CHANGE_TIMEOUT = 600.0  # generous: a change to 1,000 proxies once took minutes
# `lattice server` under cProfile, which SIGUSR2 switches on and then off (writing the stats): the
# changes alone are profiled, not the enrolment. For machines without py-spy.
CPROFILE_SERVER = """\
import cProfile, os, runpy, signal, sys
profile, on = cProfile.Profile(), [False]
def toggle(*_):
    if on[0]:
        profile.disable()
        profile.dump_stats(os.environ["LATTICE_BENCH_CPROFILE"])
    else:
        profile.enable()
    on[0] = not on[0]
signal.signal(signal.SIGUSR2, toggle)
sys.argv[0] = {lattice!r}
runpy.run_path({lattice!r}, run_name="__main__")
"""


# --- the server process ----------------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (all resident pages), RssAnon (private heap) and VmHWM (peak RSS), in MiB."""
    wanted = {"VmRSS": "rss_mb", "RssAnon": "rss_anon_mb", "VmHWM": "peak_rss_mb"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in wanted:
            out[wanted[key]] = round(int(line.split()[1]) / 1024, 1)
    return out


class Meter:
    """The server's CPU seconds between marks, and this client's own, to tell who was busy."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phases: dict[str, dict] = {}
        self._last = self._now()

    async def idle(self, window: float = 0.3, timeout: float = 600.0) -> None:
        """Until the server used under a tenth of a core over `window`: a push that a change
        set off after the one measured (or before it) must not run into the next change."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            before = procstat.cpu_seconds(self.pid)
            await asyncio.sleep(window)
            if procstat.cpu_seconds(self.pid) - before < window / 10:
                return

    def _now(self) -> tuple[float, float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return procstat.cpu_seconds(self.pid), me.ru_utime + me.ru_stime, time.perf_counter()

    def mark(self, phase: str) -> dict:
        now = self._now()
        server, client, wall = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        self.phases[phase] = {
            "server_cpu_s": round(server, 2),
            "client_cpu_s": round(client, 2),
            "wall_s": round(wall, 2),
        }
        return self.phases[phase]


# --- changes ---------------------------------------------------------------------------------


def destination_rules(services: int) -> str:
    subsets = ", ".join(f"{{name: v{v}, labels: {{version: v{v}}}}}" for v in range(1, VERSIONS + 1))
    return "\n---\n".join(
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{s:02d}}}\nspec:\n  "
        f"host: svc-{s:02d}\n  subsets: [{subsets}]"
        for s in range(services)
    )


def virtual_service(service: str, route_name: str, subset: str) -> str:
    """One route for `service`, named so the change is recognisable in the bytes proxies get."""
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {service}}}\nspec:\n  hosts: "
        f"[{service}]\n"
        f"  http: [{{name: {route_name}, route: [{{destination: {{host: {service}, subset: {subset}}}}}]}}]\n"
    )


async def apply(session: aiohttp.ClientSession, plane: ControlPlane, yaml_text: str) -> tuple[float, float]:
    """The request `lattice apply -f -` makes; (perf_counter, wall clock) when the server answered.
    Not the command's exit: its interpreter's teardown can outlast the 100 ms debounce, so the
    push would sometimes start before the clock does."""
    headers = plane.admin | {"Content-Type": "application/yaml"}
    async with session.post(
        f"{plane.api}/api/v1/apply", params={"source": "-"}, data=yaml_text.encode(), headers=headers
    ) as response:
        answer = await response.json(content_type=None)
    returned = time.perf_counter(), time.time()
    if response.status != 200:
        raise RuntimeError(f"apply failed: {response.status} {answer}")
    return returned


def cluster_of(service: str) -> str:
    return f"outbound|9080||{service}.default.svc.cluster.local"


# --- real Envoys -----------------------------------------------------------------------------


def _timestamp(text: str) -> float:
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


async def real_accepted(
    session: aiohttp.ClientSession,
    plane: ControlPlane,
    sidecar: Workload,
    what: str,
    test,
    since: float,
    timeout: float = 10.0,
) -> float | None:
    """Seconds from `since` (wall clock) to when a real Envoy accepted the change; None if it
    shows none within `timeout`. Its config dump is read through the control plane (as
    `lattice proxy-config` does: the agent's port answers only the control plane). Routes carry
    `last_updated` in the dump, by Envoy's own clock; endpoints do not, so for them it is when
    the dump first showed the change (polled every 50 ms: up to that much late)."""
    url = f"{plane.api}/api/v1/proxies/{sidecar.id}/config_dump"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        params = {"resource": what, "include_eds": "true"}
        async with session.get(url, params=params, headers=plane.admin, ssl=False) as response:
            entries = [e for e in (await response.json(content_type=None)).get("configs", []) if test(json.dumps(e))]
        if entries:
            accepted = (
                max(_timestamp(e["last_updated"]) for e in entries) if what == "dynamic_route_configs" else time.time()
            )
            if accepted >= since:
                return accepted - since
        await asyncio.sleep(0.05)
    return None


# --- one fleet size ----------------------------------------------------------------------------


class ScaleRun:
    """A fresh control plane, the fleet of one size on it, and the changes measured against it."""

    def __init__(
        self,
        proxies: int,
        services: int,
        route_rounds: int,
        endpoint_rounds: int,
        profile: Path | None = None,
        native: bool = False,
        protocol: str = "delta",
        cprofile: Path | None = None,
        debounce: str = "100ms",
    ) -> None:
        self.cprofile = cprofile
        self.n, self.services, self.profile, self.native = proxies, services, profile, native
        self.protocol = protocol
        self.route_rounds, self.endpoint_rounds = route_rounds, endpoint_rounds
        self.home = Path(tempfile.mkdtemp(prefix="lattice-scale-"))
        self.plane = ControlPlane(
            self.home / "home", "--debounce", debounce, "--heartbeat-timeout", "1h", "--log-level", "warning"
        )
        self.real: list[Workload] = []
        self.result: dict = {
            "proxies": proxies,
            "services": services,
            "versions": VERSIONS,
            "real_sidecars": REAL_SIDECARS,
            "protocol": protocol,
            "debounce": debounce,
        }

    def run(self) -> dict:
        self._start_plane()
        try:
            self.plane.apply(destination_rules(self.services))
            time.sleep(0.5)
            self.meter = Meter(self.plane.process.pid)
            self.result["server_idle"] = memory_mb(self.meter.pid)
            self.real = [
                Workload(
                    self.plane,
                    f"svc-{i:02d}",
                    "v1",
                    command=BACKEND,
                ).start(wait=False)
                for i in range(REAL_SIDECARS)
            ]
            self.real = [w.wait_ready() for w in self.real]
            self.meter.mark("real_sidecars_start")
            asyncio.run(self._measure())
        finally:
            for w in self.real:
                w.stop()
            self.plane.stop()
            shutil.rmtree(self.home, ignore_errors=True)  # the fleet's keys and the server's state
        self.result["phases"] = self.meter.phases
        return self.result

    async def _measure(self) -> None:
        bundle = json.loads(http("GET", f"{self.plane.agent_api}/agent/v1/bundle", context=_unverified())[2])[
            "bundle"
        ].encode()
        self.enroller = Enroller(self.plane.agent_api, bundle, self.home / "identities")
        (self.home / "identities").mkdir()
        self.fleet = Fleet(self.plane.xds, bundle, protocol=self.protocol)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHANGE_TIMEOUT))
        try:
            await self._bring_up()
            # The simulated proxies stand for a thousand Envoys, each with a heap of its own; here
            # they share one, and a full collection of it (120-135 ms measured at N = 1,000) would
            # hold up their ACKs and count as the server's time. Frozen, it is not walked again.
            gc.freeze()
            profiler = self._start_profiler()
            self._toggle_cprofile()
            self.result["route_change"] = await self._rounds(self.route_rounds, self._route_round)
            self.meter.mark("route_changes")
            added, removed = await self._endpoint_rounds()
            self.result["endpoint_added"], self.result["endpoint_removed"] = added, removed
            self.meter.mark("endpoint_changes")
            _stop(profiler)
            self._toggle_cprofile()
            self.result["server_end"] = memory_mb(self.meter.pid)
            self.result |= after_changes(self.result)
            self.result["nacks"] = sum(p.nacks for p in self.fleet.proxies.values())
        finally:
            gc.unfreeze()
            await self.fleet.close()
            await self.enroller.close()
            await self.session.close()

    async def _bring_up(self) -> None:
        """Enroll and register the fleet (and the spares that will register later), then connect
        every proxy at once and wait until all hold config and the streams are quiet."""
        identities = plan(self.n + self.endpoint_rounds, self.services, VERSIONS)
        self.identities, self.spares = identities[: self.n], identities[self.n :]
        tokens = {s: self.plane.token(s, ttl=3600, uses=c) for s, c in _per_service(identities).items()}
        started = time.perf_counter()
        await asyncio.gather(*(self.enroller.certify(i, tokens[i.service]) for i in identities))
        await asyncio.gather(*(self.enroller.register(i, many=True) for i in self.identities))
        await self.meter.idle()  # the pushes the registrations set off are part of enrolling
        self.result["enroll_s"] = round(time.perf_counter() - started, 2)
        self.meter.mark("enroll_and_register")
        self.result["server_registered"] = memory_mb(self.meter.pid)
        started = time.perf_counter()
        self.fleet.connect(self.identities)
        await self.fleet.settled(quiet=1.0, timeout=120 + self.n * 0.3)
        self.result["connect_to_synced_s"] = round(time.perf_counter() - started - 1.0, 2)
        self.meter.mark("connect_and_sync")
        self.result["server_connected"] = memory_mb(self.meter.pid)
        self.result["server_view"] = await asyncio.to_thread(self._server_view)
        connected = self.n + REAL_SIDECARS
        grown = self.result["server_connected"]["rss_mb"] - self.result["server_idle"]["rss_mb"]
        self.result["server_rss_per_proxy_mb"] = round(grown / connected, 3)

    def _start_plane(self) -> None:
        if self.cprofile is None:
            self.plane.start()
            return
        self.cprofile.mkdir(parents=True, exist_ok=True)
        wrapper = self.home / "cprofile-server"
        wrapper.write_text(f"#!{sys.executable}\n" + CPROFILE_SERVER.format(lattice=harness.LATTICE))
        wrapper.chmod(0o755)
        lattice, harness.LATTICE = harness.LATTICE, str(wrapper)
        harness.ENV_BASE["LATTICE_BENCH_CPROFILE"] = str(self.cprofile / f"scale-{self.protocol}-{self.n}.pstats")
        try:
            self.plane.start()
        finally:
            harness.LATTICE = lattice
            del harness.ENV_BASE["LATTICE_BENCH_CPROFILE"]

    def _toggle_cprofile(self) -> None:
        if self.cprofile is not None:
            os.kill(self.plane.process.pid, signal.SIGUSR2)

    def _start_profiler(self) -> subprocess.Popen | None:
        """py-spy on the server over the changes (where its time goes), if asked for."""
        if self.profile is None:
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"scale-{self.n}.collapsed.txt"
        self.result["profile"] = str(out)
        args = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(self.meter.pid),
            "--rate",
            "50",
            "--format",
            "raw",
            "--output",
            str(out),
            *(["--native"] if self.native else ["--nonblocking"]),
        ]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # ends with the server

    def _server_view(self) -> dict:
        """What `lattice status` says: proxies connected and SYNCED, and the last push's time."""
        status = self.plane.status()
        synced = [
            p for p in status["proxies"] if p["connected"] and all(t["state"] == "SYNCED" for t in p["types"].values())
        ]
        return {
            "proxies": len(status["proxies"]),
            "synced": len(synced),
            "last_push_ms": status["server"]["last_push_ms"],
        }

    async def _quiet(self) -> None:
        await self.fleet.settled(quiet=0.3, timeout=CHANGE_TIMEOUT)
        await self.meter.idle()

    async def _rounds(self, count: int, one_round) -> dict:
        samples = []
        for i in range(count):
            samples.append(await one_round(i))
            await self._quiet()
        return summarize(samples)

    async def _route_round(self, i: int) -> dict:
        service = f"svc-{i % self.services:02d}"
        host = f"{service}.default.svc.cluster.local".encode()
        route_name = f"bench-{i}-{secrets.token_hex(3)}"
        affected = self.fleet.holding(lambda p: contains(host)(p.types[ROUTE].resources))
        yaml_text = virtual_service(service, route_name, f"v{i % 2 + 1}")
        return await self._change(
            Probe(ROUTE, contains(route_name.encode()), affected),
            lambda: apply(self.session, self.plane, yaml_text),
            "dynamic_route_configs",
            lambda dump: route_name in dump,
        )

    async def _endpoint_rounds(self) -> tuple[dict, dict]:
        """Each spare identity registers (an endpoint added), then deregisters (removed)."""
        added, removed = [], []
        for spare in self.spares:
            added.append(await self._endpoint_change(spare, self.enroller.register, present=True))
            await self._quiet()
            removed.append(await self._endpoint_change(spare, self.enroller.deregister, present=False))
            await self._quiet()
        return summarize(added), summarize(removed)

    async def _endpoint_change(self, spare, call, present: bool) -> dict:
        """Affected: every proxy subscribed to the spare's service cluster; done when each ACKed
        endpoints with (or without) the spare's address."""
        cluster, marker, quoted = cluster_of(spare.service), address_marker(spare.address), f'"{spare.address}"'
        affected = self.fleet.holding(lambda p: cluster in (p.types[ENDPOINT].names or ()))
        probe = Probe(ENDPOINT, contains(marker) if present else lacks(marker), affected)

        def real_test(dump: str) -> bool:
            return f'"cluster_name": "{cluster}"' in dump and (quoted in dump) == present

        return await self._change(probe, lambda: self._timed(call(spare)), "dynamic_endpoint_configs", real_test)

    @staticmethod
    async def _timed(call) -> tuple[float, float]:
        await call
        return time.perf_counter(), time.time()

    async def _change(self, probe: Probe, make_change, dump_resource: str, real_test) -> dict:
        """Make a change; wait for every affected simulated proxy's ACK, then the real Envoys'."""
        self.fleet.probes.append(probe)
        size, responses = self.fleet.bytes_received, self.fleet.responses
        try:
            returned, wall = await make_change()
            try:
                await asyncio.wait_for(probe.done.wait(), CHANGE_TIMEOUT)
            except TimeoutError:
                pass
        finally:
            self.fleet.probes.remove(probe)
        size, responses = self.fleet.bytes_received - size, self.fleet.responses - responses
        acks = sorted(t - returned for t in probe.acked_at.values())
        real = [await real_accepted(self.session, self.plane, w, dump_resource, real_test, wall) for w in self.real]
        return {
            "affected": probe.expected,
            "missing": len(probe.waiting),
            "acks_s": acks,
            "real_s": real,
            "bytes": size,
            "responses": responses,
        }


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None:
        stop(process, timeout=30, sig=signal.SIGINT)  # py-spy writes its output on SIGINT


def after_changes(result: dict) -> dict:
    """Memory per proxy once pushes have run: a push's garbage is not all given back, so this is
    what a server that has carried changes holds (and its peak), next to the fresh figure."""
    connected, idle = result["proxies"] + REAL_SIDECARS, result["server_idle"]["rss_mb"]
    end = result["server_end"]
    return {
        "server_rss_per_proxy_after_changes_mb": round((end["rss_mb"] - idle) / connected, 3),
        "server_peak_rss_per_proxy_mb": round((end["peak_rss_mb"] - idle) / connected, 3),
    }


def _per_service(identities) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in identities:
        counts[i.service] = counts.get(i.service, 0) + 1
    return counts


# --- figures -----------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def summarize(samples: list[dict]) -> dict:
    """Per change, the time to the last affected ACK; p50/p99/max over changes. Per-proxy ACK
    times are pooled over all changes too (how long a typical proxy waits)."""
    to_all = [s["acks_s"][-1] for s in samples if s["acks_s"] and not s["missing"]]
    pooled = [a for s in samples for a in s["acks_s"]]
    real = [r for s in samples for r in s["real_s"] if r is not None]
    return {
        "changes": len(samples),
        "affected": max((s["affected"] for s in samples), default=0),
        "incomplete": sum(1 for s in samples if s["missing"]),
        "p50_s": quantile(to_all, 0.5),
        "p99_s": quantile(to_all, 0.99),
        "max_s": max(to_all, default=float("nan")),
        "per_proxy_p50_s": quantile(pooled, 0.5),
        "per_proxy_p99_s": quantile(pooled, 0.99),
        "real_envoy_p50_s": quantile(real, 0.5),
        "real_envoy_max_s": max(real, default=float("nan")),
        "real_envoy_confirmed": f"{len(real)}/{sum(len(s['real_s']) for s in samples)}",
        "to_all_s": [round(x, 4) for x in to_all],
        "bytes_per_change": quantile([s["bytes"] for s in samples], 0.5),
        "responses_per_change": quantile([s["responses"] for s in samples], 0.5),
    }


def growth(runs: list[dict]) -> dict:
    """Largest fleet over smallest, for each headline figure."""
    small, large = min(runs, key=lambda r: r["proxies"]), max(runs, key=lambda r: r["proxies"])
    if small is large:
        return {}
    figures = {
        "route_change_p99": lambda r: r["route_change"]["p99_s"],
        "endpoint_added_p99": lambda r: r["endpoint_added"]["p99_s"],
        "endpoint_removed_p99": lambda r: r["endpoint_removed"]["p99_s"],
        "server_rss_mb": lambda r: r["server_connected"]["rss_mb"],
        "server_cpu_per_route_change_s": lambda r: (
            r["phases"]["route_changes"]["server_cpu_s"] / r["route_change"]["changes"]
        ),
        "connect_to_synced_s": lambda r: r["connect_to_synced_s"],
    }
    return {
        "proxies": f"{small['proxies']} → {large['proxies']}",
        "fleet_ratio": large["proxies"] / small["proxies"],
    } | {k: round(f(large) / f(small), 2) if f(small) else None for k, f in figures.items()}


def rounds(proxies: int, quick: bool) -> tuple[int, int]:
    """(route changes, endpoint add/remove pairs). The same at every size: a change to 1,000
    proxies takes seconds now, not minutes, and a p99 over three changes would be their maximum."""
    return (8, 4) if quick else (12, 6)


def measure(
    quick: bool,
    sizes: list[int] | None = None,
    services: int = 20,
    profile: Path | None = None,
    native: bool = False,
    protocol: str = "delta",
    cprofile: Path | None = None,
    debounce: str = "100ms",
) -> dict:
    """The benchmark: one fresh control plane per fleet size (quick: 100 proxies only)."""
    sizes = sizes or ([100] if quick else [100, 1000])
    started = time.monotonic()
    runs = [
        ScaleRun(n, services, *rounds(n, quick), profile, native, protocol, cprofile, debounce).run() for n in sizes
    ]
    return {
        "mode": "quick" if quick else "full",
        "protocol": protocol,
        "machine": procstat.machine(envoy_binary()) | {"memory_gb": _memory_gb()},
        "client": "one asyncio process (this one) runs every simulated proxy",
        "services": services,
        "runs": runs,
        "growth": growth(runs),
        "seconds": round(time.monotonic() - started, 1),
    }


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None or seconds != seconds else f"{seconds * 1000:,.0f} ms"


def table(result: dict) -> Table:
    """One column per fleet size, plus growth when there are two."""
    runs = result["runs"]
    t = Table(
        title=f"Control plane scale: {result['services']} services × {VERSIONS} versions, simulated ADS proxies "
        f"({result.get('protocol', 'sotw')}) + {REAL_SIDECARS} real Envoys",
        box=None,
        header_style="bold",
    )
    t.add_column("metric")
    for r in runs:
        t.add_column(f"N = {r['proxies']:,}", justify="right")
    for label, value in _rows():
        t.add_row(label, *(value(r) for r in runs))
    g = result.get("growth") or {}
    if g:
        t.add_row(
            "growth " + g["proxies"],
            *([""] * (len(runs) - 1)),
            ", ".join(f"{k} ×{v}" for k, v in g.items() if k not in ("proxies", "fleet_ratio") and v is not None),
        )
    return t


def _rows() -> list[tuple[str, callable]]:
    rows = []
    for key, name in (
        ("route_change", "VirtualService change"),
        ("endpoint_added", "endpoint added"),
        ("endpoint_removed", "endpoint removed"),
    ):
        rows += [
            (
                f"{name} → all ACKed p50 / p99 / max",
                lambda r, k=key: f"{_ms(r[k]['p50_s'])} / {_ms(r[k]['p99_s'])} / {_ms(r[k]['max_s'])}",
            ),
            (
                f"  per proxy p50 / p99 ({key.split('_')[0]}s: changes)",
                lambda r, k=key: (
                    f"{_ms(r[k]['per_proxy_p50_s'])} / {_ms(r[k]['per_proxy_p99_s'])} ({r[k]['affected']} × "
                    f"{r[k]['changes']})"
                ),
            ),
            (
                "  bytes / responses to the fleet per change (median)",
                lambda r, k=key: f"{r[k]['bytes_per_change'] / 1e6:,.2f} MB / {r[k]['responses_per_change']:,}",
            ),
            (
                "  real Envoys accepted p50 / max",
                lambda r, k=key: (
                    f"{_ms(r[k]['real_envoy_p50_s'])} / {_ms(r[k]['real_envoy_max_s'])} "
                    f"({r[k]['real_envoy_confirmed']})"
                ),
            ),
        ]
    rows += [
        (
            "enroll + register / connect → all synced",
            lambda r: f"{r['enroll_s']:.1f} s / {r['connect_to_synced_s']:.1f} s",
        ),
        (
            "server RSS idle → N connected → after changes (peak)",
            lambda r: (
                f"{r['server_idle']['rss_mb']:.0f} → {r['server_connected']['rss_mb']:.0f} → "
                f"{r['server_end']['rss_mb']:.0f} ({r['server_end']['peak_rss_mb']:.0f}) MB"
            ),
        ),
        (
            "server RSS per proxy: connected / after changes (peak)",
            lambda r: (
                f"{r['server_rss_per_proxy_mb'] * 1024:.0f} / "
                f"{r['server_rss_per_proxy_after_changes_mb'] * 1024:.0f} "
                f"({r['server_peak_rss_per_proxy_mb'] * 1024:.0f}) KB"
            ),
        ),
        (
            "server CPU: connect / per route change / per endpoint change",
            lambda r: (
                f"{r['phases']['connect_and_sync']['server_cpu_s']:.1f} / "
                f"{r['phases']['route_changes']['server_cpu_s'] / r['route_change']['changes']:.2f} / "
                f"{r['phases']['endpoint_changes']['server_cpu_s'] / (2 * r['endpoint_added']['changes']):.2f} s"
            ),
        ),
        (
            "server: last full push / status SYNCED",
            lambda r: (
                f"{r['server_view']['last_push_ms']:.0f} ms / "
                f"{r['server_view']['synced']}/{r['server_view']['proxies']}"
            ),
        ),
        ("client CPU share during changes", lambda r: _client_share(r)),
        ("NACKs", lambda r: str(r["nacks"])),
    ]
    return rows


def _client_share(r: dict) -> str:
    p = [r["phases"][k] for k in ("route_changes", "endpoint_changes")]
    return f"{sum(x['client_cpu_s'] for x in p) / sum(x['wall_s'] for x in p):.0%} of a core"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 proxies only (under 3 minutes).")
    parser.add_argument("--proxies", type=int, nargs="+", help="Fleet sizes (default 100 1000; quick: 100).")
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument(
        "--protocol",
        choices=("delta", "sotw"),
        default="delta",
        help="What the simulated proxies speak: delta ADS as the agents' relays do (default), or state-of-the-world.",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    parser.add_argument(
        "--profile",
        type=Path,
        help="Record the server with py-spy during the changes, into this directory (needs py-spy).",
    )
    parser.add_argument(
        "--native", action="store_true", help="With --profile: native frames too (gRPC's C and Cython code)."
    )
    parser.add_argument(
        "--cprofile",
        type=Path,
        help="Record the server with cProfile during the changes, into this directory (where py-spy is missing).",
    )
    parser.add_argument(
        "--debounce", default="100ms", help="The server's debounce (its default, 100ms, unless comparing)."
    )
    args = parser.parse_args()
    from rich.console import Console

    result = measure(
        args.quick, args.proxies, args.services, args.profile, args.native, args.protocol, args.cprofile, args.debounce
    )
    Console().print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{result['seconds']:.0f} s; saved {args.json}")


if __name__ == "__main__":
    main()
