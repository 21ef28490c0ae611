"""Istio's locality-failover task (traffic-management/locality-load-balancing/failover) on Lattice:
helloworld in region1 and region2, sleep in region1; the task's DestinationRule sends sleep to
region1 until region1's Envoy is drained (`POST /drain_listeners` on its admin, as the task does),
then to region2 — because the drained sidecar's agent reports it unhealthy, not after 503s."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import BACKEND, ControlPlane, Workload, child_pid, running, wait_for

pytestmark = pytest.mark.slow
REGION, ZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"

# The task's DestinationRule, unchanged.
FAILOVER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld
  namespace: sample
spec:
  host: helloworld.sample.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http:
        maxRequestsPerConnection: 1
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
          - from: region1
            to: region2
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 1m
"""


def _at(region: str, zone: str) -> tuple[str, ...]:
    return ("-n", "sample", "--label", f"{REGION}={region}", "--label", f"{ZONE}={zone}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("failover") / "home").start()
    specs = [("sleep", "v1", "region1", "zone1"), ("helloworld", "v1", "region1", "zone1"),
             ("helloworld", "v2", "region2", "zone2")]  # fmt: skip
    workloads = [Workload(plane, s, v, command=BACKEND, extra=_at(r, z)) for s, v, r, z in specs]
    try:
        with running(plane, workloads) as ready:
            yield plane, {f"{w.service}-{w.version}": w for w in ready}
    finally:
        plane.stop()


def _served_by(sleep: Workload) -> str:
    return sleep.call("http://helloworld.sample:9080/hello")[1].get("x-served-by", "")


def _drain(w: Workload) -> None:
    """The task's `curl -X POST localhost:15000/drain_listeners` on the workload's Envoy (its admin
    listens on a unix socket the bootstrap names)."""
    cmdline = Path(f"/proc/{child_pid(w, 'envoy')}/cmdline").read_bytes().split(b"\0")
    config = next(Path(a.decode()) for a in cmdline if a.endswith((b".json", b".yaml")))
    bootstrap = json.loads(config.read_text()) if config.suffix == ".json" else None
    socket_path = bootstrap["admin"]["address"]["pipe"]["path"] if bootstrap else next(config.parent.glob("*admin*"))
    subprocess.run(
        ["curl", "-sS", "--unix-socket", str(socket_path), "-X", "POST", "http://envoy/drain_listeners"],
        check=True,
        capture_output=True,
        timeout=10,
    )


def test_draining_region1_fails_over_to_region2(mesh):
    plane, w = mesh
    plane.apply(FAILOVER)
    sleep = w["sleep-v1"]
    wait_for(lambda: plane.all_synced(), 10, what="the DestinationRule to reach the proxies")
    assert {_served_by(sleep) for _ in range(10)} == {"helloworld-v1"}  # region1 first, every time
    _drain(w["helloworld-v1"])
    # The drained sidecar's agent follows its Envoy: the registry takes it out of the endpoints.
    wait_for(
        lambda: not plane.proxy(w["helloworld-v1"].id)["healthy"], 10, what="the drained workload to report unhealthy"
    )
    wait_for(lambda: _served_by(sleep) == "helloworld-v2", 10, what="sleep to fail over to region2")
    answers = [sleep.call("http://helloworld.sample:9080/hello") for _ in range(10)]
    assert [(s, h.get("x-served-by")) for s, h, _ in answers] == [(200, "helloworld-v2")] * 10
