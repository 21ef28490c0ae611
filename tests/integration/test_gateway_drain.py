"""`lattice gateway` stops gracefully (agent/drain.py `drain_gateway`): on SIGTERM, requests in
flight through it finish before it exits."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.parse

import pytest

from harness import BACKEND, LATTICE, ControlPlane, Workload, die_with_parent, http, wait_for
from lattice.agent.address import free_port

pytestmark = pytest.mark.slow
GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: drain-gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: ["*"]
  gateways: [drain-gw]
  http:
  - route: [{destination: {host: slow, port: {number: 9080}}}]
    retries: {attempts: 0}
"""


@pytest.fixture
def mesh(tmp_path):
    plane = ControlPlane(tmp_path / "home").start()
    backend = Workload(plane, "slow", command=BACKEND)
    try:
        backend.start()
        plane.apply(GATEWAY)
        yield plane
    finally:
        backend.stop()
        plane.stop()


@pytest.mark.timeout(120)
def test_requests_in_flight_through_a_gateway_finish_when_it_is_stopped(mesh, tmp_path):
    local = free_port()
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(
        [LATTICE, "gateway", "--listen", f"80={local}", "--log-level", "info", "--drain-timeout", "20s"],
        env=mesh.env | {"LATTICE_TOKEN": mesh.token("istio-ingressgateway", "istio-system")},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        info = wait_for(
            lambda: next((p for p in mesh.status()["proxies"] if p["name"] == "ingressgateway" and p["healthy"]), None),
            30,
            what=f"the gateway to register (log {log})",
        )
        url = f"http://{info['address']}:{local}/"
        wait_for(lambda: http("GET", url)[0] == 200, 30, what="the gateway to route to the backend")
        answers: list = []
        slow = threading.Thread(target=lambda: answers.append(http("GET", url + "?delay=3", timeout=20)))
        slow.start()
        stats = f"http://{info['address']}:{info['agent_port']}/stats?filter="
        in_flight = urllib.parse.quote(r"^http\..*\.downstream_rq_active$")

        def open_requests() -> int:
            lines = http("GET", stats + in_flight)[2].decode().splitlines()
            return sum(
                int(line.rsplit(":", 1)[1]) for line in lines if ":" in line and not line.startswith("http.admin")
            )

        wait_for(lambda: open_requests() == 1, 10, what="the slow request to be in flight at the gateway")
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        slow.join(20)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    # The request sent before the stop got its whole answer from the backend.
    ((status, _, body),) = answers
    assert status == 200 and json.loads(body)["query"] == {"delay": "3"}
    assert "no request in flight through the gateway" in log.read_text()
