"""What the data plane costs per hop: direct, a hand-written Envoy pair with mTLS, two Lattice sidecars.

    .venv/bin/python bench/dataplane.py [--quick] [--rate 1000] [--seconds N] [--json PATH]

Four paths, side by side in one run:
  (a) direct     client → app
  (b) envoy-pair client → Envoy ⇄mTLS⇄ Envoy → app: two plain Envoys from a static bootstrap
                 (bench/envoy_pair.py), the floor for any Envoy-based mesh
  (c) lattice    client → `lattice run` sidecar ⇄mTLS⇄ `lattice run` sidecar → app, with
                 PeerAuthentication STRICT mesh-wide and an AuthorizationPolicy ALLOW on the server
                 (so its RBAC filter runs on every request) and the sidecars' telemetry as shipped
                 (Istio metrics streamed to each agent, tracing at the default 1%)
  (d) lattice-no-telemetry  the same with a Telemetry resource turning metrics and spans off, to
                 an app of its own: the cost of telemetry is (c) against (d)
  (e) lattice-wasm  (c) with one trivial Proxy-Wasm filter on the server's sidecar (a TrafficExtension
                 running examples/wasm/mesh_guard with an empty config: called on request and
                 response headers, changing nothing): the cost of a Wasm filter is (e) against (c)
  (f) lattice-capture  (c) with both sidecars under `lattice run --capture` (root only; left out
                 otherwise): the generator runs inside the client's network namespace and connects
                 to the server's virtual IP as an app that knows nothing of the mesh would, its
                 connections redirected by iptables to the outbound listener (original_dst,
                 http_inspector): the cost of transparent capture is (f) against (c), HTTP_PROXY mode
The app is an Envoy answering `200 ok` itself, so its own cost is small and steady.

Latency: open loop (bench/openloop.py) at a fixed rate, counted from each request's scheduled send
time; rounds of a/b/c interleave, each path's place in the order rotating, so drift (thermal,
neighbours, GC) falls on all alike; every measured run follows a warm-up run on the same path.
CPU per proxy: utime+stime of each Envoy over that path's measured runs only, per 1,000 requests.
Memory: each Envoy's RssAnon after the runs. Maximum throughput: closed loop
(bench/closedloop.py), 32 keep-alive connections for a few seconds after a short warm-up, in
rounds whose order rotates as the open loop's (one run per path in a row let drift between the
paths' turns decide the ratio); max rps is the median round's, and CPU per 1,000 requests (counted
seconds of every round) is the cost per request at saturation, where requests
batch and a proxy's fixed costs per wake-up shrink: its Lattice ÷ pair ratio, not the open loop's,
is what the throughput ratio follows. Idle: CPU each path's processes use per second with no
traffic (a sidecar's agent reads Envoy's stats and probes the app), all paths over the same seconds.
With two or more cores the load generator runs on one core and everything else (app, proxies,
control plane, agents) on the rest, so the generator never competes with what it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import procstat  # noqa: E402
from closedloop import max_rate  # noqa: E402
from envoy_pair import EnvoyPair, admin_get, app_command  # noqa: E402
from harness import ControlPlane, Workload, child_pid, http, running  # noqa: E402
from openloop import Result, run  # noqa: E402
from rich.table import Table  # noqa: E402

from lattice.agent.envoy import envoy_binary  # noqa: E402
from lattice.agent.netns import Inside  # noqa: E402

DEFAULT_JSON = Path(__file__).parent / "results" / "dataplane.json"
PATHS = ("direct", "envoy-pair", "lattice", "lattice-no-telemetry", "lattice-wasm", "lattice-capture")
URL, HOST = "http://bench-server:9080/", "bench-server:9080"
QUIET_URL, QUIET_HOST = "http://bench-quiet-server:9080/", "bench-quiet-server:9080"
WASM_URL, WASM_HOST = "http://bench-wasm-server:9080/", "bench-wasm-server:9080"
CAPTURE_HOST = "bench-capture-server:9080"
WASM_BUILD = Path(__file__).parent.parent / "examples" / "wasm" / "build.sh"
POLICIES = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-server, namespace: default}
spec:
  selector: {matchLabels: {app: bench-server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bench-client"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-quiet-server, namespace: default}
spec:
  selector: {matchLabels: {app: bench-quiet-server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bench-quiet-client"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-wasm-server, namespace: default}
spec:
  selector: {matchLabels: {app: bench-wasm-server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bench-wasm-client"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-capture-server, namespace: default}
spec:
  selector: {matchLabels: {app: bench-capture-server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bench-capture-client"]}}]
""" + "".join(
    f"""---
# The same sidecars with telemetry off (no metrics stream, no spans): what telemetry costs.
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: {app}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  metrics: [{{providers: [{{name: prometheus}}], overrides: [{{match: {{metric: ALL_METRICS}}, disabled: true}}]}}]
  tracing: [{{disableSpanReporting: true}}]
"""
    for app in ("bench-quiet-client", "bench-quiet-server")
)
# Admin stats that are not about the data path: the xDS/SDS channels, the admin listener, per-worker copies.
_NOT_DATA_PATH = re.compile(r"^(cluster\.(xds|sds)|listener\.admin|http\.admin|.*\.worker_\d+\.)")
_WORK = re.compile(r"(cx_|rq_|ssl|rbac|memory_)")


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: float  # per measured run
    warmup: float  # open-loop run before each measured one, not counted
    max_seconds: float  # closed-loop run per path and round
    idle_seconds: float  # no traffic at all, every path's processes measured at once

    @classmethod
    def of(cls, quick: bool, seconds: float | None = None) -> Settings:
        base = cls(2, 3.0, 1.0, 2.0, 5.0) if quick else cls(4, 10.0, 2.0, 3.0, 10.0)
        return cls(base.rounds, seconds or base.seconds, base.warmup, base.max_seconds, base.idle_seconds)


@dataclass
class DataPath:
    """One way to the app: where the generator connects, what it asks for, which proxies it crosses."""

    name: str
    target: tuple[str, int]
    url: str
    host: str
    proxies: dict[str, int] = field(default_factory=dict)  # label → Envoy pid
    admins: dict[str, Path] = field(default_factory=dict)  # label → Envoy admin socket
    agents: dict[str, int] = field(default_factory=dict)  # label → `lattice run` pid (Lattice only)
    runs: list[Result] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # label → CPU seconds over the measured runs
    machine_busy: float = 0.0  # CPU seconds the whole machine used over the measured runs
    inside: Inside | None = None  # captured: the generator's thread in the client's network namespace
    generator_cpus: set[int] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # a sidecar's Proxy-Authorization (proxy mode)

    def processes(self) -> dict[str, int]:
        return self.proxies | {f"{label} agent": pid for label, pid in self.agents.items()}

    def call(self, fn, *args, **kw):
        """fn where this path's client lives: here, or (captured) in the client's namespace, on the
        generator's CPUs (a thread's affinity is its own)."""
        if self.inside is None:
            return fn(*args, **kw)

        def pinned():
            if self.generator_cpus:
                os.sched_setaffinity(0, self.generator_cpus)
            return fn(*args, **kw)

        return self.inside.run(pinned)


# -- setting up the paths ---------------------------------------------------------------------


def _lattice_workloads(plane: ControlPlane) -> list[Workload]:
    quiet = ("--log-level", "warning")  # as the pair's Envoys run; the harness default is info
    return [
        Workload(plane, name, command=app_command(), extra=quiet)
        for name in (
            "bench-client",
            "bench-server",
            "bench-quiet-client",
            "bench-quiet-server",
            "bench-wasm-client",
            "bench-wasm-server",
        )
    ]


def _capture_workloads(plane: ControlPlane) -> list[Workload]:
    """The capture path's client and server, each under `lattice run --capture` (root)."""
    if os.geteuid() != 0:
        return []
    quiet = ("--log-level", "warning")
    return [
        Workload(plane, name, command=app_command(), extra=("--capture", *quiet))
        for name in ("bench-capture-client", "bench-capture-server")
    ]


def _capture_path(client: Workload, server: Workload) -> DataPath:
    """The generator in the client's namespace, to the server's virtual IP as its DNS proxy answers."""
    found = re.search(r"network namespace (\S+) \(", client.log.read_text())
    if found is None:
        raise SystemExit(f"bench-capture-client: no network namespace in its log ({client.log})")
    netns = found.group(1)
    answer = subprocess.run(
        ["ip", "netns", "exec", netns, "getent", "ahostsv4", CAPTURE_HOST.split(":")[0]],
        capture_output=True,
        text=True,
    ).stdout.split()
    if not answer:
        raise SystemExit(f"bench-capture-client: {CAPTURE_HOST} does not resolve in {netns}")
    path = _lattice_path("lattice-capture", client, server, "/", CAPTURE_HOST)
    path.target, path.inside = (answer[0], 9080), Inside(netns)
    return path


def _wasm_extension(home: Path) -> str:
    """The example plugin, built as its README says, on the Wasm path's server sidecar."""
    module = home / "mesh_guard.wasm"
    subprocess.run([str(WASM_BUILD), str(module)], check=True, capture_output=True)
    return f"""
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {{name: bench-wasm, namespace: default}}
spec:
  selector: {{matchLabels: {{app: bench-wasm-server}}}}
  wasm: {{url: "file://{module}"}}
"""


def _sidecar_envoy(workload: Workload) -> tuple[int, Path]:
    """The Envoy child of `lattice run` (the app is an Envoy too: pick the one with the sidecar's
    bootstrap) and its admin socket, which the agent keeps beside that bootstrap."""
    pid = child_pid(workload, "envoy.json")
    bootstrap = procstat.command(pid).split(" -c ", 1)[1].split()[0]
    return pid, Path(bootstrap).parent / "admin.sock"


def _paths(workloads: list[Workload], pair: EnvoyPair) -> dict[str, DataPath]:
    client, server, quiet_client, quiet_server, wasm_client, wasm_server = workloads
    app = ("127.0.0.1", server.info["app_port"])
    return {
        "direct": DataPath("direct", app, "/", "bench-server"),
        "envoy-pair": DataPath(
            "envoy-pair",
            ("127.0.0.1", pair.port),
            URL,
            HOST,
            {"client": pair.client.pid, "server": pair.server.pid},
            {"client": pair.client.admin, "server": pair.server.admin},
        ),
        "lattice": _lattice_path("lattice", client, server, URL, HOST),
        "lattice-no-telemetry": _lattice_path(
            "lattice-no-telemetry", quiet_client, quiet_server, QUIET_URL, QUIET_HOST
        ),
        "lattice-wasm": _lattice_path("lattice-wasm", wasm_client, wasm_server, WASM_URL, WASM_HOST),
    }


def _lattice_path(name: str, client: Workload, server: Workload, url: str, host: str) -> DataPath:
    (client_pid, client_admin), (server_pid, server_admin) = _sidecar_envoy(client), _sidecar_envoy(server)
    return DataPath(
        name,
        (client.address, 15001),
        url,
        host,
        {"client": client_pid, "server": server_pid},
        {"client": client_admin, "server": server_admin},
        {"client": client.process.pid, "server": server.process.pid},
        headers={} if "--capture" in client.extra else client.proxy_headers,  # captured: no proxy to ask
    )


def _check(path: DataPath) -> None:
    """One request must come back 200 before anything is timed: a path that fails is no floor."""
    host, port = path.target
    if path.url.startswith("http://"):
        status, _, body = http("GET", path.url, proxy=f"http://{host}:{port}", headers=path.headers)
    else:
        status, _, body = path.call(http, "GET", f"http://{host}:{port}{path.url}", None, {"Host": path.host})
    if status != 200:
        raise SystemExit(f"{path.name}: {status} {body[:200]!r}")


# -- measuring ------------------------------------------------------------------------------------


def _cpu(processes: dict[str, int]) -> dict[str, float]:
    return {label: procstat.cpu_seconds(pid) for label, pid in processes.items()}


def rotated(names: list[str], round_: int) -> list[str]:
    """`names` in round `round_`'s order: each round starts one further on, so every name takes
    each place alike and drift over the rounds falls on all of them."""
    at = round_ % len(names)
    return names[at:] + names[:at]


def _open_loop(paths: dict[str, DataPath], settings: Settings, rate: float) -> None:
    """Rounds of every path in turn; the order rotates so each path takes each place alike."""
    names = list(paths)
    for round_ in range(settings.rounds):
        for name in rotated(names, round_):
            path = paths[name]
            path.call(run, path.target, path.url, path.host, rate, settings.warmup, path.headers)
            before, busy = _cpu(path.processes()), procstat.busy_seconds()
            path.runs.append(path.call(run, path.target, path.url, path.host, rate, settings.seconds, path.headers))
            after = _cpu(path.processes())
            path.machine_busy += procstat.busy_seconds() - busy
            for label in before:
                path.cpu[label] = path.cpu.get(label, 0.0) + after[label] - before[label]


def _max_throughput(path: DataPath, seconds: float) -> dict:
    """One closed-loop run; CPU counted over the counted seconds only (not the warm-up), so CPU per
    1,000 requests at saturation (`_saturate`, over every round) compares with the open loop's:
    where a path's cost per request grows less than another's as requests batch, the two ratios
    part."""
    cpu: dict[str, dict[str, float]] = {}

    def window(start: bool) -> None:
        cpu["start" if start else "end"] = _cpu(path.processes())

    result = path.call(
        max_rate,
        path.target,
        path.url,
        path.host,
        connections=32,
        seconds=seconds,
        headers=path.headers,
        window=window,
    )
    used = {label: cpu["end"][label] - cpu["start"][label] for label in cpu.get("start", {})}
    return {
        "rps": result.rps,
        "requests": result.requests,
        "errors": result.errors,
        "seconds": result.seconds,
        "connections": result.connections,
        "cpu_seconds": used,
    }


def _saturate(paths: dict[str, DataPath], settings: Settings) -> dict[str, dict]:
    """`_max_throughput` of every path in rounds, each path's place in the order rotating: the
    median round's rps, and CPU per 1,000 requests over every round's counted seconds."""
    names = list(paths)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(settings.rounds):
        for name in rotated(names, round_):
            runs[name].append(_max_throughput(paths[name], settings.max_seconds))
    out = {}
    for name, done in runs.items():
        requests = sum(r["requests"] for r in done)
        used: dict[str, float] = {}
        for r in done:
            for label, seconds in r["cpu_seconds"].items():
                used[label] = used.get(label, 0.0) + seconds
        out[name] = {
            "rps": statistics.median(r["rps"] for r in done),
            "rps_per_round": [r["rps"] for r in done],
            "requests": requests,
            "errors": sum(r["errors"] for r in done),
            "seconds": sum(r["seconds"] for r in done),
            "connections": max(r["connections"] for r in done),
            "cpu_seconds": used,
            "cpu_s_per_1k_requests": {label: s / requests * 1000 for label, s in used.items()} if requests else {},
        }
    return out


def _idle(paths: dict[str, DataPath], seconds: float) -> dict[str, dict[str, float]]:
    """CPU milliseconds per second each path's processes use with no traffic at all, all paths over
    the same seconds: what a sidecar costs by just being there (its agent's periodic reads of
    Envoy's stats and health probes, timers), paid whatever the request rate."""
    processes = {name: path.processes() for name, path in paths.items()}
    before = {name: _cpu(p) for name, p in processes.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {
        name: {label: (cpu - before[name][label]) / elapsed * 1000 for label, cpu in _cpu(p).items()}
        for name, p in processes.items()
    }


def _admin_stats(admin: Path) -> dict:
    """Every non-zero data-path counter, summed per family and stat name over clusters and
    listeners (`cluster.upstream_cx_total`, `http.rbac.allowed`), plus how many stats the proxy
    keeps at all (each costs memory and flush time): where two proxies' work differs shows here."""
    lines = admin_get(admin, "/stats").decode().splitlines()
    kept: dict[str, int] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        if not value.strip().isdigit() or not int(value) or _NOT_DATA_PATH.match(name) or not _WORK.search(name):
            continue
        parts = name.split(".")
        key = ".".join([parts[0], *parts[-2 if parts[-2] in ("ssl", "rbac", "tcp") else -1 :]])
        kept[key] = kept.get(key, 0) + int(value)
    return {"stats": len(lines), **dict(sorted(kept.items()))}


def _summary(path: DataPath, rate: float) -> dict:
    latencies = sorted(x for r in path.runs for x in r.latencies_ms)
    merged = Result(rate, sum(r.seconds for r in path.runs), latencies)
    requests = len(latencies)
    return {
        "requests": requests,
        "errors": sum(r.errors for r in path.runs),
        "late_sends": sum(r.late_sends for r in path.runs),
        "connections": max(r.connections for r in path.runs),
        **{f"p{int(q * 100)}_ms": merged.quantile(q) for q in (0.5, 0.9, 0.99)},
        "per_run": [{f"p{int(q * 100)}_ms": r.quantile(q) for q in (0.5, 0.9, 0.99)} for r in path.runs],
        # Cores busy machine-wide while this path ran: the path's own cost plus the generator;
        # much more than that means something else competed and the tail figures are suspect.
        "machine_busy_cores": path.machine_busy / sum(r.seconds for r in path.runs),
        "cpu_seconds": path.cpu,
        "cpu_s_per_1k_requests": {label: s / requests * 1000 for label, s in path.cpu.items()} if requests else {},
    }


def _measure_paths(
    paths: dict[str, DataPath], settings: Settings, rate: float, generator_cpus: set[int] | None
) -> dict:
    for path in paths.values():
        _check(path)
    idle = _idle(paths, settings.idle_seconds)
    with procstat.pinned(generator_cpus):
        _open_loop(paths, settings, rate)
        open_loop_stats = {
            name: {label: _admin_stats(admin) for label, admin in path.admins.items()} for name, path in paths.items()
        }
        throughput = _saturate(paths, settings)
    out = {}
    for name, path in paths.items():
        out[name] = _summary(path, rate) | {"max_throughput": throughput[name]}
        out[name]["idle_cpu_ms_per_s"] = idle[name]
        out[name]["rss_anon_mb"] = {label: procstat.rss_anon_mb(pid) for label, pid in path.processes().items()}
        out[name]["admin_stats_after_open_loop"] = open_loop_stats[name]
        out[name]["admin_stats_after_max"] = {label: _admin_stats(admin) for label, admin in path.admins.items()}
    floor = out["direct"]
    for r in out.values():
        r.update({f"added_p{q}_ms": r[f"p{q}_ms"] - floor[f"p{q}_ms"] for q in (50, 90, 99)})
    return out


def measure(quick: bool, rate: float = 1000.0, seconds: float | None = None, pin: bool = True) -> dict:
    """Start everything, measure the paths, stop everything; the result as JSON-ready data."""
    settings = Settings.of(quick, seconds)
    generator_cpus, server_cpus = procstat.split_cpus() if pin else (None, None)
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-dataplane-"))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, home, True)  # last out: after every process using it has stopped
        with procstat.pinned(server_cpus):  # inherited by every process started here, and their threads
            plane = ControlPlane(home / "home").start()
            stack.callback(plane.stop)
            plane.apply(POLICIES + _wasm_extension(home))
            workloads = stack.enter_context(running(plane, _lattice_workloads(plane)))
            captured = stack.enter_context(running(plane, _capture_workloads(plane)))
            pair = EnvoyPair.start(home / "pair", workloads[1].info["app_port"])
            stack.callback(pair.stop)
        all_paths = _paths(workloads, pair)
        if captured:
            all_paths["lattice-capture"] = _capture_path(*captured)
            all_paths["lattice-capture"].generator_cpus = generator_cpus
            stack.callback(all_paths["lattice-capture"].inside.close)
        paths = _measure_paths(all_paths, settings, rate, generator_cpus)
    return {
        "mode": "quick" if quick else "full",
        "rate": rate,
        "rounds": settings.rounds,
        "seconds_per_run": settings.seconds,
        "warmup_seconds": settings.warmup,
        "max_throughput_seconds": settings.max_seconds,
        "idle_seconds": settings.idle_seconds,
        "pinning": {"generator": sorted(generator_cpus or ()), "servers": sorted(server_cpus or ())},
        "machine": procstat.machine(envoy_binary()),
        "wall_seconds": time.monotonic() - started,
        "paths": paths,
    }


# -- presenting -----------------------------------------------------------------------------------


def _per_proxy(values: dict[str, float], fmt: str) -> str:
    """client / server Envoys (agents left to the JSON), or — for a path without proxies."""
    proxies = [f"{values[label]:{fmt}}" for label in ("client", "server") if label in values]
    return " / ".join(proxies) or "—"


def table(result: dict) -> Table:
    paths = result["paths"]
    title = (
        f"data plane: open loop at {result['rate']:g} req/s, {result['rounds']} × "
        f"{result['seconds_per_run']:g} s per path, latency from scheduled send time (ms)"
    )
    out = Table(title=title, caption=_caption(result))
    for column in (
        "path",
        "p50",
        "p90",
        "p99",
        "+p90 vs direct",
        "+p99 vs direct",
        "CPU s/1k req per proxy",
        "RssAnon MB per proxy",
        "max rps",
        "CPU s/1k req at max, all",
    ):
        out.add_column(column, justify="left" if column == "path" else "right")
    for name, r in paths.items():
        out.add_row(
            name,
            *(f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
            *(f"{r[k]:+.3f}" for k in ("added_p90_ms", "added_p99_ms")),
            _per_proxy(r["cpu_s_per_1k_requests"], ".4f"),
            _per_proxy(r["rss_anon_mb"], ".1f"),
            f"{r['max_throughput']['rps']:,.0f}",
            _total(r["max_throughput"].get("cpu_s_per_1k_requests", {}), ".4f"),
        )
    return out


def _total(values: dict[str, float], fmt: str) -> str:
    """Envoys and agents summed, or — for a path without proxies."""
    return f"{sum(values.values()):{fmt}}" if values else "—"


def _cpu_ratios(result: dict) -> str:
    """Lattice against the pair, CPU per 1,000 requests (Envoys and agents summed) in the open loop
    and at maximum throughput, and what each path's processes use with no traffic."""
    pair, lattice = result["paths"]["envoy-pair"], result["paths"]["lattice"]
    parts = []
    for what, key in (("open loop", None), ("at max rps", "max_throughput")):
        a = sum((lattice[key] if key else lattice).get("cpu_s_per_1k_requests", {}).values())
        b = sum((pair[key] if key else pair).get("cpu_s_per_1k_requests", {}).values())
        if b:
            parts.append(f"{what} {a:.4f} / {b:.4f} = {a / b:.2f}×")
    idle = ", ".join(
        f"{name} {sum(r.get('idle_cpu_ms_per_s', {}).values()):.1f}"
        for name, r in result["paths"].items()
        if r.get("idle_cpu_ms_per_s")
    )
    return f"CPU per 1k requests, lattice ÷ envoy-pair: {'; '.join(parts)}. idle CPU ms/s (proxies + agents): {idle}. "


def _caption(result: dict) -> str:
    pair, lattice = result["paths"]["envoy-pair"], result["paths"]["lattice"]
    ratios = [
        f"+p{q} {lattice[f'added_p{q}_ms'] / pair[f'added_p{q}_ms']:.2f}×"
        for q in (90, 99)
        if pair[f"added_p{q}_ms"] > 0
    ]
    agents = ", ".join(
        f"{label} {v:.4f} s/1k req, {lattice['rss_anon_mb'][label]:.1f} MB"
        for label, v in lattice["cpu_s_per_1k_requests"].items()
        if label.endswith("agent")
    )
    m = result["machine"]
    busy = ", ".join(f"{name} {r['machine_busy_cores']:.2f}" for name, r in result["paths"].items())
    quiet = result["paths"].get("lattice-no-telemetry")
    telemetry = ""
    if quiet:
        cost = [f"p{q} {lattice[f'p{q}_ms'] - quiet[f'p{q}_ms']:+.3f} ms" for q in (50, 99)]
        cpu = sum(lattice["cpu_s_per_1k_requests"].values()) - sum(quiet["cpu_s_per_1k_requests"].values())
        telemetry = (
            f"telemetry on vs off: {', '.join(cost)}, {cpu:+.4f} CPU s/1k req (Envoys and agents), max rps "
            f"{lattice['max_throughput']['rps'] / quiet['max_throughput']['rps']:.2f}×. "
        )
    captured = result["paths"].get("lattice-capture")
    capture = "capture mode: left out (not root). "
    if captured:
        cost = [f"p{q} {captured[f'p{q}_ms'] - lattice[f'p{q}_ms']:+.3f} ms" for q in (50, 99)]
        capture = (
            f"capture vs HTTP_PROXY mode: {', '.join(cost)}, max rps "
            f"{captured['max_throughput']['rps'] / lattice['max_throughput']['rps']:.2f}×. "
        )
    wasm = result["paths"].get("lattice-wasm")
    extension = ""
    if wasm:
        cost = [f"p{q} {wasm[f'p{q}_ms'] - lattice[f'p{q}_ms']:+.3f} ms" for q in (50, 99)]
        cpu = wasm["cpu_s_per_1k_requests"].get("server", 0.0) - lattice["cpu_s_per_1k_requests"].get("server", 0.0)
        extension = f"one Wasm filter on the server: {', '.join(cost)}, {cpu:+.4f} server-Envoy CPU s/1k req. "
    return (
        f"per proxy: client / server Envoy. lattice vs envoy-pair added latency: {', '.join(ratios) or 'n/a'}. "
        f"{_cpu_ratios(result)}{telemetry}{capture}{extension}"
        f"lattice agents (Python, beside each Envoy): {agents}. max rps: closed loop, 32 keep-alive connections, "
        f"median of {result['rounds']} rounds × {result['max_throughput_seconds']:g} s. "
        f"{m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Envoy {m['envoy'].split('/')[1] if '/' in m['envoy'] else m['envoy']}; "
        f"generator on CPU {result['pinning']['generator'] or 'any'}, servers on "
        f"{result['pinning']['servers'] or 'any'}; "
        f"cores busy machine-wide during each path's runs: {busy}."
    )


def main() -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s per path (well under 2 minutes)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per measured run (default 3 quick, 10 full)"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the result (default {DEFAULT_JSON})"
    )
    parser.add_argument("--no-pin", action="store_true", help="let the generator and the servers share every core")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)
    with console.status("data plane: direct, Envoy pair, Lattice sidecars"):
        result = measure(args.quick, args.rate, args.seconds, pin=not args.no_pin)
    console.print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    console.print(f"saved {args.json} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
