"""Prometheus finds the mesh by itself: a real Prometheus (Debian's package), given only the
control plane's HTTP service-discovery URL and the read-only metrics credential, scrapes every
sidecar and the control plane, each target UP and labelled with its workload.

Prometheus runs on a free port with its data in the test's temporary directory, and is stopped
by the fixture (also when the test fails).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse

import pytest

from lattice.agent.envoy import die_with_parent

from harness import BACKEND, ControlPlane, Workload, http, running, stop, wait_for

pytestmark = pytest.mark.slow
SD = "/api/v1/sd/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mesh(tmp_path):
    plane = ControlPlane(tmp_path / "home").start()
    try:
        workloads = [Workload(plane, "client", command=BACKEND), Workload(plane, "backend", "v2", command=BACKEND)]
        with running(plane, workloads) as ready:
            yield plane, ready
    finally:
        plane.stop()


@pytest.fixture
def prometheus(tmp_path, mesh):
    plane, _ = mesh
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make tools` installs Debian's package"
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    # The documented configuration (docs/observability.md), with the test's server and short intervals.
    config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: lattice
    http_sd_configs:
      - url: {plane.api}{SD}
        refresh_interval: 1s
        authorization:
          type: Bearer
          credentials_file: {plane.home / "metrics-token"}
"""
    )
    log = tmp_path / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(process)


def test_the_metrics_credential_reads_the_targets_and_nothing_else(mesh):
    plane, (client, backend) = mesh
    token = (plane.home / "metrics-token").read_text().strip()
    assert (plane.home / "metrics-token").stat().st_mode & 0o077 == 0
    assert token != (plane.home / "admin-token").read_text().strip()
    status, _, body = http("GET", plane.api + SD, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    groups = json.loads(body)
    by_workload = {g["labels"]["workload"]: g for g in groups}
    assert by_workload["backend-v2"]["targets"] == [f"{backend.address}:{backend.info['agent_port']}"]
    assert {
        "namespace": "default",
        "app": "backend",
        "version": "v2",
        "__metrics_path__": "/stats/prometheus",
    }.items() <= by_workload["backend-v2"]["labels"].items()
    assert by_workload["lattice-server"]["labels"]["__metrics_path__"] == "/metrics"
    for method, path in (("GET", "/api/v1/status"), ("POST", "/api/v1/tokens")):
        status, _, _ = http(method, plane.api + path, b"{}", {"Authorization": f"Bearer {token}"})
        assert status == 401, (method, path)
    assert http("GET", plane.api + SD)[0] == 401


def test_prometheus_pointed_at_the_sd_endpoint_alone_scrapes_every_target_up(mesh, prometheus):
    plane, (client, backend) = mesh
    url, log = prometheus

    def targets():
        status, _, body = http("GET", f"{url}/api/v1/targets?state=active")
        if status != 200:
            return None
        active = json.loads(body)["data"]["activeTargets"]
        up = {t["labels"].get("workload"): t for t in active if t["health"] == "up"}
        return up if {"client-v1", "backend-v2", "lattice-server"} <= set(up) else None

    up = wait_for(targets, 30, what=f"Prometheus to scrape every target UP (log {log})")
    assert up["backend-v2"]["labels"]["namespace"] == "default" and up["backend-v2"]["labels"]["version"] == "v2"
    assert up["backend-v2"]["scrapeUrl"].endswith(f"{backend.address}:{backend.info['agent_port']}/stats/prometheus")
    client.call("http://backend:9080/")

    def scraped(query: str):
        status, _, body = http("GET", f"{url}/api/v1/query?query={urllib.parse.quote(query)}")
        return json.loads(body)["data"]["result"] if status == 200 else None

    # What the dashboards read: Istio's metrics from the sidecars, the control plane's own.
    assert wait_for(lambda: scraped('istio_requests_total{workload="backend-v2",reporter="destination"}'), 20)
    assert wait_for(lambda: scraped('istio_build{workload="lattice-server",component="pilot"}'), 20)
    assert wait_for(lambda: scraped('process_resident_memory_bytes{workload="lattice-server"} > 0'), 20)
