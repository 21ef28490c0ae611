"""Every benchmark in one run, a table each, then the goals of issue 7 met or missed.

    .venv/bin/python bench/run.py [--quick]      (make bench-quick / make bench)

Parts, each also runnable alone:
- bench/dataplane.py — latency added per hop at a fixed rate (open loop), CPU and memory per proxy,
  maximum throughput: direct, a hand-written Envoy pair with mTLS (the floor), Lattice sidecars.
- bench/scale.py     — the control plane with simulated proxies speaking real ADS: config and
  endpoint changes to every proxy ACKed, server CPU and memory, growth with the fleet.
- bench/replicas.py  — three control-plane replicas on a real etcd cluster, simulated proxies
  spread over them: a VirtualService applied on replica 1 ACKed on replicas 2 and 3.
- bench/mtls.py      — CSRs signed per second on one core.
- bench/startup.py   — `lattice run` to the first mTLS request; `lattice demo` to all answering.

Benchmarks, not tests: nothing here asserts a time. Results go to bench/results/bench.json (with
the machine's facts), and each part writes its own JSON too.
"""

from __future__ import annotations

import argparse
import json
import os

# Before anything imports gRPC (the scale bench's simulated proxies): its fork handlers break the
# processes the benchmarks start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import dataplane  # noqa: E402
import mtls  # noqa: E402
import procstat  # noqa: E402
import replicas  # noqa: E402
import scale  # noqa: E402
import startup  # noqa: E402
from lattice.agent.envoy import envoy_binary  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def goals(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(metric, goal, measured, met) for the issue's goals table; None where not measured."""
    out = []
    lattice, floor = results["dataplane"]["paths"]["lattice"], results["dataplane"]["paths"]["envoy-pair"]
    for q in ("p90", "p99"):
        added, floor_added = lattice[f"added_{q}_ms"], floor[f"added_{q}_ms"]
        out.append(
            (
                f"added {q}, two sidecars + mTLS, vs Envoy pair",
                "within 10% (or 0.05 ms) of the pair",
                f"+{added:.3f} ms vs +{floor_added:.3f} ms",
                added <= max(floor_added * 1.1, floor_added + 0.05),
            )
        )
    cpu = max(lattice["cpu_s_per_1k_requests"][side] for side in ("client", "server"))  # the Envoys
    out.append(("CPU per sidecar per 1,000 rps", "≤ 0.10 vCPU", f"{cpu:.3f} vCPU", cpu <= 0.10))
    rss = max(lattice["rss_anon_mb"][side] for side in ("client", "server"))
    out.append(("sidecar private memory (Envoy RssAnon)", "≤ 25 MB", f"{rss:.1f} MB", rss <= 25))
    largest = max(results["scale"]["runs"], key=lambda r: r["proxies"])
    p99 = largest["route_change"]["p99_s"]
    out.append(
        (
            f"VirtualService change → {largest['proxies']} proxies ACKed, p99",
            "≤ 1 s at 1,000",
            f"{p99:.3f} s",
            p99 <= 1.0 if largest["proxies"] >= 1000 else None,
        )
    )
    per_proxy = largest["server_rss_per_proxy_mb"]
    out.append(("control-plane memory per connected proxy", "≤ 0.5 MB", f"{per_proxy:.3f} MB", per_proxy <= 0.5))
    csr = results["csr_per_second"]
    out.append(("CSR signing, one core", "≥ 1,000 / s", f"{csr:,.0f} / s", csr >= 1000))
    first = sorted(results["startup"]["run_to_first_mtls_request_s"])
    median = first[len(first) // 2]
    out.append(("`lattice run` → first mTLS request (median)", "≤ 1.5 s", f"{median:.2f} s", median <= 1.5))
    return out


def goals_table(rows: list[tuple[str, str, str, bool | None]]) -> Table:
    table = Table(title="Issue 7 goals", box=None, header_style="bold")
    for column in ("metric", "goal", "measured", ""):
        table.add_column(column)
    for metric, goal, measured, met in rows:
        table.add_row(metric, goal, measured, "met" if met else "missed" if met is False else "n/a (quick)")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller fleet and shorter runs: a few minutes.")
    args = parser.parse_args()
    console = Console()
    started = time.monotonic()
    results: dict = {"mode": "quick" if args.quick else "full", "machine": procstat.machine(envoy_binary())}
    console.print(f"[bold]data plane[/] ({results['mode']})")
    results["dataplane"] = dataplane.measure(args.quick)
    console.print(dataplane.table(results["dataplane"]))
    console.print("[bold]control plane scale[/]")
    results["scale"] = scale.measure(args.quick)
    console.print(scale.table(results["scale"]))
    console.print("[bold]control-plane replicas on etcd[/]")
    results["replicas"] = replicas.measure(args.quick)
    console.print(replicas.table(results["replicas"]))
    results["csr_per_second"] = mtls.signing_rate(2.0 if args.quick else 5.0)
    results["startup"] = startup.measure(args.quick)
    start_table = Table(title="Identity and start-up", box=None, header_style="bold")
    start_table.add_column("what")
    start_table.add_column("measured")
    start_table.add_row("CSRs signed per second, one core", f"{results['csr_per_second']:,.0f}")
    for name, value in startup.rows(results["startup"]):
        start_table.add_row(name, value)
    console.print(start_table)
    results["goals"] = [{"metric": m, "goal": g, "measured": v, "met": ok} for m, g, v, ok in goals(results)]
    console.print(goals_table(goals(results)))
    results["seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("bench-quick.json" if args.quick else "bench.json")
    path.write_text(json.dumps(results, indent=2))
    console.print(f"{results['seconds']:.0f} s; results in {path}")


if __name__ == "__main__":
    main()
