"""What one sidecar costs the host, and what one scrape of it weighs.

    .venv/bin/python bench/footprint.py [--peers 10] [--requests 20] [--json PATH]

A control plane, `--peers` server workloads (one service each, each under its own `lattice run`)
and one client workload under `lattice run`. The client calls every peer `--requests` times through
its sidecar (mTLS), then:
  - the client's agent (the `lattice run` process) and its Envoy: RssAnon, the private pages no
    other process shares, read from /proc after the traffic;
  - ready: from starting the client's `lattice run` until its agent's /healthz/ready answers 200
    (Envoy live with its first config, the app healthy), polled every 10 ms;
  - one scrape of the client's /stats/prometheus (Envoy's kept stats and Istio's metrics): bytes,
    samples, series names, the largest families; and its size on the wire when asked as Prometheus
    asks (Accept-Encoding: gzip);
  - where the agent's memory goes: a fresh interpreter importing what the agent process
    (`python -m lattice.agent`, which `lattice run` becomes once it has parsed its options) imports,
    library by library (RssAnon after each), and the number of modules loaded. The cryptography
    library is not among them: keys and CSRs are made by a short-lived child (agent/keysmith.py).
Nothing here is a test: no figure is asserted. Peers are started together; on a loaded machine
read the memory and the scrape (they do not depend on load), not the times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import procstat  # noqa: E402
from harness import BACKEND, ControlPlane, Workload, running, wait_for  # noqa: E402

BATCH = 3  # peers started at once: ten at once may not all be ready within the harness's wait on 2 busy cores
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

DEFAULT_JSON = Path(__file__).parent / "results" / "footprint.json"
# What the agent process loads, in the order it loads it: each step's RssAnon is measured after it.
IMPORT_STEPS = (
    ("interpreter", ""),
    ("asyncio, ssl", "import asyncio, ssl"),
    ("the agent's own HTTP/1.1 (agent/web.py; aiohttp before)", "import lattice.agent.web, lattice.agent.web_client"),
    ("gRPC", "import grpc, grpc.aio"),
    (
        "protobuf, the Envoy messages the agent reads",
        "import envoy.service.discovery.v3.ads_pb2_grpc, envoy.service.secret.v3.sds_pb2_grpc, "
        "envoy.service.accesslog.v3.als_pb2_grpc, envoy.extensions.filters.http.wasm.v3.wasm_pb2",
    ),
    ("Lattice's agent (what python -m lattice.agent imports)", "import lattice.agent.sidecar"),
)
# The CLI that parses `lattice run` before it becomes the agent (agent/launch.py): not kept.
CLI_STEPS = (("interpreter", ""), ("lattice.cli.main", "import lattice.cli.main"))
_PROBE = """
import json, sys
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) / 1024
out = []
for label, statement in json.loads(sys.argv[1]):
    exec(statement)
    out.append([label, anon(), len(sys.modules)])
print(json.dumps(out))
"""


def import_steps(steps=IMPORT_STEPS) -> list[dict]:
    """RssAnon of a fresh interpreter after each import step of the agent, and modules loaded."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(steps)], capture_output=True, text=True, check=True
    )
    return [{"step": s, "rss_anon_mb": round(mb, 1), "modules": n} for s, mb, n in json.loads(result.stdout)]


def _get(url: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def _gzipped_bytes(url: str) -> int:
    """Bytes on the wire of a scrape as Prometheus asks for it (Accept-Encoding: gzip)."""
    return len(_get(url, headers={"Accept-Encoding": "gzip"})[1])


def scrape_summary(text: str) -> dict:
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    families = Counter(line.split("{", 1)[0].split(" ", 1)[0] for line in samples)
    for suffix in ("_bucket", "_sum", "_count"):  # a histogram is one family
        for name in [n for n in families if n.endswith(suffix)]:
            families[name[: -len(suffix)]] += families.pop(name)
    # Istio's series (one requests counter and three histograms per peer called, ~25 labels each,
    # as Istio's own proxies report them) grow with the peers; Envoy's own kept stats do not.
    istio_bytes = sum(
        len(line.encode()) + 1
        for line in text.splitlines()
        if line.removeprefix("# TYPE ").removeprefix("# HELP ").startswith("istio_")
    )
    return {
        "bytes": len(text.encode()),
        "istio_bytes": istio_bytes,
        "envoy_bytes": len(text.encode()) - istio_bytes,
        "samples": len(samples),
        "families": len(families),
        "istio_samples": sum(n for f, n in families.items() if f.startswith("istio_")),
        "largest": families.most_common(8),
    }


def measure(peers: int, requests: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-footprint-"))
    plane = ControlPlane(home / "home").start()
    servers = [Workload(plane, f"peer-{i}", command=BACKEND) for i in range(peers)]
    client = Workload(plane, "client", command=BACKEND)
    try:
        for i in range(BATCH, peers, BATCH):  # start early ones in batches; `running` waits for the last
            for w in servers[i - BATCH : i]:
                w.start(wait=False)
            for w in servers[i - BATCH : i]:
                w.wait_ready()
        with running(plane, servers[(max(peers - 1, 0) // BATCH) * BATCH :], timeout=60):
            started = time.monotonic()
            client.start(wait=False)
            ready_url = None

            def ready():
                nonlocal ready_url
                if ready_url is None:
                    found = [p for p in plane.status()["proxies"] if p["name"] == "client-v1" and p.get("agent_port")]
                    if not found:
                        return None
                    ready_url = f"http://{found[0]['address']}:{found[0]['agent_port']}/healthz/ready"
                return _get(ready_url, 1.0)[0] == 200

            wait_for(ready, 30, interval=0.01, what="the client's /healthz/ready")
            ready_s = time.monotonic() - started
            client.wait_ready()
            wait_for(plane.all_synced, 30, what="every proxy to hold the client")
            failed = 0
            for i in range(peers):
                for _ in range(requests):
                    status, _, _ = client.call(f"http://peer-{i}:9080/")
                    failed += status != 200
            agent = client.process.pid
            envoys = [pid for pid in procstat.children(agent) if "envoy" in procstat.command(pid)]
            url = f"http://{client.address}:{client.info['agent_port']}/stats/prometheus"

            def scraped():  # Istio's metrics for every peer, as both Envoy and the agent count them
                status, body = _get(url)
                text = body.decode()
                done = status == 200 and all(f'destination_service_name="peer-{i}"' in text for i in range(peers))
                return text if done else None

            text = wait_for(scraped, 30, what="Istio's metrics for every peer in the client's scrape")
            peer_url = f"http://{servers[0].address}:{servers[0].info['agent_port']}/stats/prometheus"
            result = {
                "peers": peers,
                "requests_per_peer": requests,
                "failed_requests": failed,
                "ready_s": round(ready_s, 3),
                "agent_rss_anon_mb": round(procstat.rss_anon_mb(agent), 1),
                "envoy_rss_anon_mb": round(procstat.rss_anon_mb(envoys[0]), 1) if envoys else None,
                "peer_agent_rss_anon_mb": round(procstat.rss_anon_mb(servers[0].process.pid), 1),
                "scrape": scrape_summary(text) | {"gzip_bytes": _gzipped_bytes(url)},
                "peer_scrape": scrape_summary(_get(peer_url)[1].decode()) | {"gzip_bytes": _gzipped_bytes(peer_url)},
            }
    finally:
        for w in [client, *servers]:  # all at once: each drains before it stops
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in [client, *servers]:
            w.stop()
        plane.stop()
        shutil.rmtree(home, ignore_errors=True)
    result["imports"] = import_steps()
    result["cli_rss_anon_mb"] = import_steps(CLI_STEPS)[-1]["rss_anon_mb"]
    return result


def show(result: dict) -> None:
    console = Console()
    table = Table(title=f"One sidecar after {result['requests_per_peer']} requests to each of {result['peers']} peers")
    table.add_column("")
    table.add_column("measured", justify="right")
    agent, envoy = result["agent_rss_anon_mb"], result["envoy_rss_anon_mb"]
    table.add_row("agent RssAnon (client's `lattice run`)", f"{agent:.1f} MB")
    table.add_row("Envoy RssAnon", f"{envoy:.1f} MB")
    table.add_row("agent + Envoy", f"{agent + envoy:.1f} MB")
    table.add_row("a peer's agent RssAnon (1 caller)", f"{result['peer_agent_rss_anon_mb']:.1f} MB")
    table.add_row("`lattice run` → /healthz/ready 200", f"{result['ready_s']:.2f} s")
    scrape, peer = result["scrape"], result["peer_scrape"]
    table.add_row(
        f"client scrape ({result['peers']} peers): bytes / samples / families",
        f"{scrape['bytes'] / 1024:.1f} KB / {scrape['samples']} / {scrape['families']}",
    )
    table.add_row(
        "  Istio's series (istio_*): bytes / samples",
        f"{scrape['istio_bytes'] / 1024:.1f} KB / {scrape['istio_samples']}",
    )
    table.add_row(
        "  Envoy's own kept stats: bytes (the same for any number of peers)", f"{scrape['envoy_bytes'] / 1024:.1f} KB"
    )
    table.add_row("  on the wire as Prometheus asks (gzip)", f"{scrape['gzip_bytes'] / 1024:.1f} KB")
    table.add_row(
        "a peer's scrape (1 caller): bytes / samples / gzip",
        f"{peer['bytes'] / 1024:.1f} KB / {peer['samples']} / {peer['gzip_bytes'] / 1024:.1f} KB",
    )
    table.add_row("failed requests", str(result["failed_requests"]))
    console.print(table)
    families = Table(title="Largest families in the client's scrape (samples)")
    families.add_column("family")
    families.add_column("samples", justify="right")
    for name, n in scrape["largest"]:
        families.add_row(name, str(n))
    console.print(families)
    imports = Table(title="Where the agent's memory goes: a fresh interpreter importing what the agent does, in turn")
    imports.add_column("after")
    imports.add_column("RssAnon", justify="right")
    imports.add_column("added", justify="right")
    imports.add_column("modules", justify="right")
    before = 0.0
    for step in result["imports"]:
        mb = step["rss_anon_mb"]
        imports.add_row(step["step"], f"{mb:.1f} MB", f"+{mb - before:.1f}" if before else "", str(step["modules"]))
        before = mb
    agent = result["agent_rss_anon_mb"]
    imports.add_row("the running agent, after the traffic", f"{agent:.1f} MB", f"+{agent - before:.1f}", "")
    imports.add_row(
        "(the CLI that parsed `lattice run`, replaced by the agent)", f"{result['cli_rss_anon_mb']:.1f} MB", "", ""
    )
    console.print(imports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20, help="requests to each peer")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    result = measure(args.peers, args.requests)
    show(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
