"""`lattice demo`, run exactly as the README tells a user to, with LATTICE_HOME in a temp dir.

Leftovers are found by environment, not by name: every process the demo starts (server, agents,
Envoys, apps) inherits LATTICE_HOME=<this test's tmp dir>, and no other test's processes can carry
that value, so the check stays right when other tests run Envoys in parallel (xdist).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import LATTICE, http, stop


def processes_with_home(home: Path) -> list[str]:
    """`pid cmdline` of every live process whose environment has LATTICE_HOME=home."""
    marker = f"LATTICE_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name} {cmdline}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def settled_leftovers(home: Path, grace: float = 3.0) -> list[str]:
    """Processes still there after a short grace (a just-killed child may not be reaped yet)."""
    deadline = time.monotonic() + grace
    while (left := processes_with_home(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def demo_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LATTICE_SERVER", "COLUMNS")}
    return env | {"LATTICE_HOME": str(home)}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_runs_bookinfo_through_the_mesh_and_leaves_nothing_running(tmp_path):
    home = tmp_path / "home"
    result = subprocess.run(
        [LATTICE, "demo", "--duration", "20s", "--check"],
        env=demo_env(home),
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mutual TLS: STRICT mesh-wide" in output and "sa/{details,loadgen,productpage,ratings,reviews}" in output, (
        output
    )
    assert re.search(r"\(\. /\S+/proxy\.env; curl -x \"\$HTTP_PROXY\" http://productpage:9080/productpage\)", output), (
        output
    )
    assert "mesh ready in" in output and "check passed" in output, output
    for row in ("productpage", "details", "ratings", "reviews"):
        assert row in output
    # Who called whom, with the caller's identity, each hop mutual TLS (the callee's sidecar saw the certificate).
    assert "who called whom" in output, output
    assert re.search(
        r"productpage-v1\s+reviews-v\d\s+spiffe://cluster.local/ns/default/sa/productpage\s+yes", output
    ), output
    assert re.search(r"reviews-v[23]\s+ratings-v1\s+spiffe://cluster.local/ns/default/sa/reviews\s+yes", output), output
    assert not (home / "server.json").exists(), "the control plane left its discovery file behind"
    assert settled_leftovers(home) == []


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_refuses_when_a_control_plane_already_runs_for_the_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [LATTICE, "server", "--home", str(home), "--api-port", "0", "--xds-port", "0", "--agent-port", "0"],
            env=demo_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not (home / "server.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        pid = json.loads((home / "server.json").read_text())["pid"]
        result = subprocess.run(
            [LATTICE, "demo", "--duration", "5"], env=demo_env(home), capture_output=True, text=True, timeout=30
        )
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "already running" in output and f"pid {pid}" in output and str(home) in output, output
        assert server.poll() is None, "the demo must not touch a control plane it did not start"
    finally:
        stop(server)
    assert settled_leftovers(home) == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_prints_productpage_through_the_ingress_gateway_and_the_console(tmp_path):
    """The two URLs the demo prints are what a browser opens: productpage through the ingress
    gateway (Istio's bookinfo-gateway.yaml), and the console, logged in by `lattice dashboard --url`."""
    home = tmp_path / "home"
    process = subprocess.Popen(
        [LATTICE, "demo", "--duration", "60s"],
        env=demo_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        productpage = console = None
        for line in process.stdout:
            seen.append(line)
            if m := re.search(r"through the ingress gateway: (http://\S+/productpage)", line):
                productpage = m.group(1)
            if m := re.search(r"the console \(live graph, tap, why\): (http://\S+/ui/)", line):
                console = m.group(1)
            if productpage and console:
                break
        assert productpage and console, "".join(seen)
        status, _, body = http("GET", productpage, timeout=10)
        assert status == 200 and b"Book" in body, (status, body[:300])
        link = subprocess.run(
            [LATTICE, "dashboard", "--url"], env=demo_env(home), capture_output=True, text=True, timeout=30
        ).stdout.strip()
        assert link.startswith(console.removesuffix("/ui/")) and "/ui/login?ticket=" in link
    finally:
        stop(process, sig=signal.SIGINT, timeout=30)
    assert settled_leftovers(home) == []
