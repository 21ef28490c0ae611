"""Istio's egress-gateway task (traffic-management/egress/egress-gateway) on Lattice: a sidecar
sends `edition.cnn.com` to `istio-egressgateway.istio-system.svc.cluster.local`, which
`lattice gateway --name egressgateway --label istio=egressgateway` serves as a mesh service, and
the gateway sends it on to the external host.

The task's Gateway, DestinationRule and VirtualService are applied unchanged. Only its
ServiceEntry differs: `edition.cnn.com` resolves (STATIC) to a server this test runs on loopback,
as no test may leave the machine.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import BACKEND, LATTICE, ControlPlane, Workload, die_with_parent, http, running, stop, wait_for
from lattice.agent.address import free_port

pytestmark = pytest.mark.slow

# From the task's page, unchanged.
TASK = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
"""


class External(BaseHTTPRequestHandler):
    """edition.cnn.com, as far as this test is concerned: answers 200 and remembers each request."""

    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        External.seen.append((self.headers.get("host", ""), self.path))
        body = b"politics\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _service_entry(port: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http-port: {port}
"""


class EgressGateway:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.log = plane.home / f"egressgateway-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> EgressGateway:
        args = ["--name", "egressgateway", "-n", "istio-system", "--label", "istio=egressgateway"]
        env = self.plane.env | {"LATTICE_TOKEN": self.plane.token("istio-egressgateway", "istio-system")}
        self.process = subprocess.Popen(
            [LATTICE, "gateway", *args, "--listen", f"80={free_port()}", "--log-level", "info"],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.info = wait_for(self._ready, 30, what=f"the egress gateway to be ready (log {self.log})")
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"lattice gateway exited with {self.process.returncode}:\n{self.log.read_text()}")
        return next((p for p in self.plane.status()["proxies"] if p["name"] == "egressgateway" and p["healthy"]), None)

    def stat(self, name: str) -> int:
        query = urllib.parse.quote(f"^{re.escape(name)}$")
        body = http("GET", f"http://{self.info['address']}:{self.info['agent_port']}/stats?filter={query}")[2]
        lines = [line.rsplit(":", 1) for line in body.decode().splitlines()]
        return sum(int(value) for stat, value in lines if stat == name)


@pytest.fixture(scope="module")
def external():
    server = ThreadingHTTPServer(("127.0.0.1", 0), External)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mesh(shared_plane):
    with running(shared_plane, [Workload(shared_plane, "sleep", command=BACKEND)]) as (sleep,):
        gateway = EgressGateway(shared_plane).start()
        try:
            yield sleep, gateway
        finally:
            stop(gateway.process)


def test_sidecar_to_egress_gateway_to_the_external_host(shared_plane, mesh, external):
    sleep, gateway = mesh
    shared_plane.apply(_service_entry(external) + "---\n" + TASK)
    cluster = "cluster.outbound|80||edition.cnn.com.upstream_rq_total"
    before = gateway.stat(cluster)
    status, _, body = wait_for(
        lambda: (r := sleep.call("http://edition.cnn.com/politics"))[0] == 200 and r,
        15,
        what="edition.cnn.com through the egress gateway",
    )
    assert body == b"politics\n" and External.seen[-1] == ("edition.cnn.com", "/politics")
    # It went through the gateway: the gateway's Envoy sent it to the external host's cluster.
    assert gateway.stat(cluster) > before
