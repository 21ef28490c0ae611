"""How long until a workload serves through the mesh.

    .venv/bin/python bench/startup.py [--quick] [--rounds N] [--no-demo]

- `lattice run` → first mTLS request: with a control plane and a server workload already up, time
  from starting `lattice run` for a client to the client app's first 200 from the server through
  its sidecar (mesh-wide STRICT mTLS). The app records the instant of that answer on the system
  monotonic clock, which all processes on a Linux machine share. Each `lattice run` logs (at
  --log-level info) when each of its steps ended, from its process's start (agent/phases.py): the
  phase table gives each step's median end.
- `lattice demo` → all services answering: the demo's own report of when every Bookinfo service
  first answered through the mesh, from a fresh $LATTICE_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent.parent))
from harness import BACKEND, LATTICE, ControlPlane, Workload, stop  # noqa: E402

from lattice.agent.phases import parse as parse_phases  # noqa: E402

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
# The client app: ask the server through HTTP_PROXY until it answers, print when, exit.
FIRST_ANSWER = """
import os, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]}))
while True:
    try:
        if opener.open("http://server:9080/", timeout=2).status == 200:
            print(f"first-answer {time.monotonic():.6f}", flush=True)
            sys.exit(0)
    except Exception:
        time.sleep(0.005)
"""


def run_to_first_request(rounds: int, phases: list[dict] | None = None) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-start-"))
    plane = ControlPlane(home / "home").start()
    server = Workload(plane, "server", command=BACKEND).start()
    plane.apply(STRICT)
    times = []
    try:
        for i in range(rounds):
            token = plane.token("client")
            env = plane.env | {"LATTICE_TOKEN": token}
            started = time.monotonic()
            process = subprocess.run(
                [LATTICE, "run", "--service", "client", "--version", f"v{i}", "--log-level", "info"]
                + ["--", sys.executable, "-c", FIRST_ANSWER],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            found = re.search(r"first-answer (\d+\.\d+)", process.stdout)
            if not found:
                raise RuntimeError(f"the client never got an answer:\n{process.stdout}\n{process.stderr}")
            times.append(float(found.group(1)) - started)
            if phases is not None:
                marks = next((m for line in process.stderr.splitlines() if (m := parse_phases(line))), {})
                phases.append(marks | {"first-answer": times[-1]})
    finally:
        server.stop()
        plane.stop()
        shutil.rmtree(home, ignore_errors=True)
    return times


def demo_to_answering(timeout: float = 90) -> dict:
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-demo-"))
    env = os.environ | {"LATTICE_HOME": str(home), "GRPC_ENABLE_FORK_SUPPORT": "false", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [LATTICE, "demo", "--duration", str(timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: dict = {}
    try:
        for line in process.stdout:
            if m := re.search(r"mesh ready in (\d+\.\d+) s", line):
                out["mesh_ready_s"] = float(m.group(1))
            if m := re.search(r"all services answering (\d+\.\d+) s after start", line):
                out["all_answering_s"] = float(m.group(1))
                break
    finally:
        stop(process, sig=signal.SIGINT, timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    return out


def measure(quick: bool, rounds: int | None = None, demo: bool = True) -> dict:
    phases: list[dict] = []
    first = run_to_first_request(rounds or (3 if quick else 5), phases)
    return {
        "run_to_first_mtls_request_s": first,
        "phases_s": phases,
        "demo": demo_to_answering() if demo else {},
    }


def phase_rows(result: dict) -> list[tuple[str, str]]:
    """Each step's median end, from the `lattice run` process's start, in the order they end."""
    runs = result.get("phases_s", [])
    names = {name for run in runs for name in run}
    medians = {}
    for name in names:
        ends = sorted(run[name] for run in runs if name in run)
        medians[name] = ends[len(ends) // 2]
    return [(name, f"{at:.3f} s") for name, at in sorted(medians.items(), key=lambda item: item[1])]


def rows(result: dict) -> list[tuple[str, str]]:
    first = sorted(result["run_to_first_mtls_request_s"])
    demo = result["demo"]
    return [
        ("`lattice run` → first mTLS request (median, max)", f"{first[len(first) // 2]:.2f} s, {first[-1]:.2f} s"),
        ("`lattice demo` → mesh ready", f"{demo.get('mesh_ready_s', float('nan')):.1f} s"),
        ("`lattice demo` → all services answering", f"{demo.get('all_answering_s', float('nan')):.1f} s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, help="lattice run rounds (default 3 quick, 5 full)")
    parser.add_argument("--no-demo", action="store_true", help="skip lattice demo")
    args = parser.parse_args()
    result = measure(args.quick, args.rounds, not args.no_demo)
    for name, value in rows(result):
        print(f"{name}: {value}")
    print("phase (median end, from the lattice run process's start):")
    for name, value in phase_rows(result):
        print(f"  {name}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
