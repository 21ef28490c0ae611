"""How long from `lattice apply` returning to every proxy ACKing the change, and `lattice run` start-up.

    .venv/bin/python bench/apply_to_ack.py [--rounds 20]

Starts a real control plane and Bookinfo's six workloads under real sidecars on this machine,
then alternates reviews between v1 and v3. Prints a table and writes bench/results/apply_to_ack.json.
Time is measured from the apply command's exit to the moment `/api/v1/status` shows every proxy
SYNCED on a new route version (polled every 5 ms, so figures carry up to 5 ms of polling slack).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lattice.demo

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from harness import ControlPlane, Workload, start_all  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

DATA = Path(lattice.demo.__file__).parent / "networking"
SPECS = [
    ("productpage", "v1"),
    ("details", "v1"),
    ("ratings", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
]


def _routes_acked(plane: ControlPlane) -> dict[str, str] | None:
    proxies = plane.status()["proxies"]
    if not all(p["connected"] and all(t["state"] == "SYNCED" for t in p["types"].values()) for p in proxies):
        return None
    return {p["id"]: p["types"]["RouteConfiguration"]["acked"] for p in proxies}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(rounds: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-"))
    plane = ControlPlane(home / "home", "--debounce", "100ms").start()  # the server default, not the tests' 50 ms
    workloads: list[Workload] = []
    try:
        t0 = time.monotonic()
        first = Workload(plane, "ratings", "v9").start()
        single_start = time.monotonic() - t0
        workloads.append(first)
        t0 = time.monotonic()
        workloads += start_all(plane, SPECS)
        fleet_start = time.monotonic() - t0
        plane.apply((DATA / "destination-rule-all.yaml").read_text())
        vs = (DATA / "virtual-service-reviews-v3.yaml").read_text()
        samples = []
        for i in range(rounds):
            before = _wait(plane, None)
            plane.apply(vs if i % 2 else vs.replace("subset: v3", "subset: v1"))
            t0 = time.monotonic()
            _wait(plane, before)
            samples.append(time.monotonic() - t0)
        return {
            "proxies": len(workloads),
            "rounds": rounds,
            "apply_to_all_acked_ms": {
                "p50": _quantile(samples, 0.5) * 1000,
                "p99": _quantile(samples, 0.99) * 1000,
                "max": max(samples) * 1000,
                "mean": statistics.mean(samples) * 1000,
            },
            "lattice_run_to_synced_ms": single_start * 1000,
            "six_workloads_in_parallel_to_synced_ms": fleet_start * 1000,
        }
    finally:
        for w in workloads:
            w.stop()
        plane.stop()


def _wait(plane: ControlPlane, before: dict | None, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        acked = _routes_acked(plane)
        if acked and (before is None or all(acked[k] != before.get(k) for k in acked)):
            return acked
        time.sleep(0.005)
    raise SystemExit("proxies did not converge within 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    result = measure(parser.parse_args().rounds)
    table = Table(title=f"apply → ACK, {result['proxies']} proxies, {result['rounds']} changes")
    for column in ("metric", "value"):
        table.add_column(column)
    for k, v in result["apply_to_all_acked_ms"].items():
        table.add_row(f"apply → all proxies ACKed, {k}", f"{v:.1f} ms")
    table.add_row("lattice run → healthy and synced (one)", f"{result['lattice_run_to_synced_ms']:.0f} ms")
    table.add_row(
        "six workloads in parallel → all synced", f"{result['six_workloads_in_parallel_to_synced_ms']:.0f} ms"
    )
    Console().print(table)
    out = Path(__file__).parent / "results" / "apply_to_ack.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
