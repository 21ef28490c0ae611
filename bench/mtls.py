"""What mutual TLS costs between two sidecars, and how fast the CA signs.

    .venv/bin/python bench/mtls.py [--rate 1000] [--seconds 10] [--rounds 2]

Starts a real control plane and two workloads under real sidecars (client and server, a minimal
asyncio HTTP app each), then drives the client's sidecar at a fixed rate with an open-loop
generator (bench/openloop.py), alternating in one run: direct to the server app (the floor),
sidecar to sidecar in plaintext (PeerAuthentication DISABLE), and sidecar to sidecar over mTLS
(STRICT). Latency counts from each request's scheduled send time. Separately, certificates signed
per second on one core (CSRs made beforehand; parsing, checking and signing each is counted).
Prints a table and writes bench/results/mtls.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from harness import ControlPlane, Workload  # noqa: E402
from openloop import run  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lattice.identity import CertificateAuthority, SpiffeId, make_csr, new_key  # noqa: E402

APP = """
import asyncio, os
BODY = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(BODY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
"""
POLICY = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def signing_rate(seconds: float = 3.0) -> float:
    """Certificates per second on one core (this process pinned to CPU 0)."""
    os.sched_setaffinity(0, {0})
    try:
        ca = CertificateAuthority.generate("cluster.local", lambda: datetime.now(timezone.utc))
        identity = SpiffeId("cluster.local", "default", "bench")
        csrs = [make_csr(new_key(), identity) for _ in range(500)]
        signed, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            ca.sign(csrs[signed % len(csrs)], identity, timedelta(hours=24))
            signed += 1
        return signed / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def measure(rate: float, seconds: float, rounds: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-"))
    plane = ControlPlane(home / "home").start()
    workloads: list[Workload] = []
    command = [sys.executable, "-c", APP]
    try:
        client = Workload(plane, "bench-client", command=command).start()
        server = Workload(plane, "bench-server", command=command).start()
        workloads = [client, server]
        paths = {
            "direct": ((("127.0.0.1", server.info["app_port"])), "/", "bench-server"),
            "plaintext": ((client.address, 15001), "http://bench-server:9080/", "bench-server:9080"),
            "mtls": ((client.address, 15001), "http://bench-server:9080/", "bench-server:9080"),
        }
        results: dict[str, list] = {mode: [] for mode in paths}
        for round_ in range(rounds):
            # Alternate which sidecar mode follows which, so neither always inherits the other's churn.
            order = ["direct", "plaintext", "mtls"] if round_ % 2 == 0 else ["direct", "mtls", "plaintext"]
            for mode in order:
                target, url, host = paths[mode]
                if mode != "direct":
                    plane.apply(POLICY.format(mode="DISABLE" if mode == "plaintext" else "STRICT"))
                    time.sleep(1.0)
                headers = {} if mode == "direct" else client.proxy_headers  # as the app sends them
                run(target, url, host, rate, 3.0, headers)  # warm up connections and caches
                results[mode].append(run(target, url, host, rate, seconds, headers))
        return {mode: _summary(rs) for mode, rs in results.items()}
    finally:
        for w in reversed(workloads):
            w.stop()
        plane.stop()


def _summary(results: list) -> dict:
    latencies = [x for r in results for x in r.latencies_ms]
    merged = type(results[0])(results[0].rate, sum(r.seconds for r in results), latencies)
    return {
        "requests": len(latencies),
        "errors": sum(r.errors for r in results),
        "connections": max(r.connections for r in results),
        "late_sends": sum(r.late_sends for r in results),
        "p50_ms": merged.quantile(0.50),
        "p90_ms": merged.quantile(0.90),
        "p99_ms": merged.quantile(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)
    with console.status("signing CSRs on one core"):
        csr_rate = signing_rate()
    with console.status(
        f"driving {args.rate:g} requests/s: direct, plaintext sidecars, mTLS sidecars ({args.rounds} rounds of "
        f"{args.seconds:g} s each)"
    ):
        paths = measure(args.rate, args.seconds, args.rounds)
    table = Table(
        title=f"open loop, {args.rate:g} requests/s, {args.rounds} x {args.seconds:g} s per path, latency from "
        "scheduled send time"
    )
    for column in ("path", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "added p50", "added p90", "added p99"):
        table.add_column(column, justify="right" if column != "path" else "left")
    floor = paths["direct"]
    for mode, r in paths.items():
        added = [r[k] - floor[k] for k in ("p50_ms", "p90_ms", "p99_ms")]
        table.add_row(
            mode,
            str(r["requests"]),
            str(r["errors"]),
            *(f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
            *(f"{a:+.3f}" for a in added),
        )
    console.print(table)
    plain, mtls = paths["plaintext"], paths["mtls"]
    console.print(
        f"mTLS vs plaintext between two sidecars: p50 {mtls['p50_ms'] - plain['p50_ms']:+.3f} ms, p90 "
        f"{mtls['p90_ms'] - plain['p90_ms']:+.3f} ms, p99 {mtls['p99_ms'] - plain['p99_ms']:+.3f} ms"
    )
    console.print(f"CSR signing: {csr_rate:,.0f} certificates/s on one core")
    out = Path(__file__).parent / "results" / "mtls.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rate": args.rate,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "paths": paths,
                "csr_per_second_one_core": csr_rate,
            },
            indent=2,
        )
    )
    console.print(f"saved {out}")


if __name__ == "__main__":
    main()
