"""Who the client is (issue 14, finding 10): X-Forwarded-For is a header any client writes, so no
proxy takes the client's address from it unless MeshConfig `numTrustedProxies` says that many
proxies in front of a gateway wrote its last entries.

What is observed: the status a client gets under AuthorizationPolicies on `remoteIpBlocks`, and
the address the app was told (`x-envoy-external-address`, the echo of the backend app)."""

from __future__ import annotations

import json

import pytest

from harness import BACKEND, ControlPlane, Workload, http, running, stop, wait_for
from rawhttp import h1
from test_request_hardening import EDGE, HOST, Gateway, _request

pytestmark = [pytest.mark.slow]

ONLY_FROM_6 = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-from-6}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {remoteIpBlocks: ["6.6.6.6/32"]}}]
"""
GATEWAY_DENIES_6 = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-denies-6, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {remoteIpBlocks: ["6.6.6.6/32"]}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A control plane whose MeshConfig trusts one proxy in front of gateways; backend under a
    sidecar, and an ingress gateway routing /public/ to it."""
    home = tmp_path_factory.mktemp("forwarded") / "home"
    home.mkdir(parents=True)
    config = home / "mesh.yaml"
    config.write_text("defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n")
    plane = ControlPlane(home, "--mesh-config", str(config)).start()
    try:
        with running(plane, [Workload(plane, "backend", command=BACKEND)]) as (backend,):
            plane.apply(EDGE)
            gateway = Gateway(plane)
            try:
                wait_for(
                    lambda: h1(gateway.address, gateway.port, _request("GET", "/public/ready", HOST)).status == 200,
                    20,
                    what="the gateway to route /public/",
                )
                yield plane, backend, gateway
            finally:
                stop(gateway.process)
    finally:
        plane.stop()


def _count(backend) -> int:
    return json.loads(http("GET", f"http://127.0.0.1:{backend.info['app_port']}/__count")[2])["count"]


def _send(backend, address: str, port: int, *headers: str):
    """The answer, and the echo of the request the app saw (None: it saw none)."""
    before = _count(backend)
    answer = h1(address, port, _request("GET", "/public/x", HOST, *headers))
    arrived = _count(backend) - before
    echo = json.loads(answer.body) if answer.body.startswith(b'{"method"') else None
    assert arrived == (1 if echo else 0), (arrived, answer)
    return answer, echo


def test_a_sidecar_believes_no_x_forwarded_for(mesh):
    """remoteIpBlocks at a sidecar is the TCP peer: a forged X-Forwarded-For does not let a
    client outside 6.6.6.6 in (before, Envoy took the header's last entry as the client)."""
    plane, backend, _ = mesh
    plane.apply(ONLY_FROM_6)
    try:
        wait_for(plane.all_synced, 10, what="the policy to reach the sidecar")
        wait_for(
            lambda: _send(backend, backend.address, 9080)[0].status == 403, 10, what="the ALLOW policy to take effect"
        )
        for forged in ("X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 1.2.3.4, 6.6.6.6"):
            answer, echo = _send(backend, backend.address, 9080, forged)
            assert answer.status == 403 and echo is None, (forged, answer)
    finally:
        plane.cli("delete", "-f", "-", input=ONLY_FROM_6, check=False)
        wait_for(plane.all_synced, 10, what="the policy to be gone")


def test_a_gateway_trusts_exactly_num_trusted_proxies_hops(mesh):
    """numTrustedProxies: 1 — the client is the last X-Forwarded-For entry (written by the one
    trusted proxy); what the client wrote before it is not believed."""
    plane, backend, gateway = mesh
    answer, echo = _send(backend, gateway.address, gateway.port, "X-Forwarded-For: 7.7.7.7")
    assert answer.status == 200 and echo["headers"]["x-envoy-external-address"] == "7.7.7.7", echo
    assert echo["headers"]["x-forwarded-for"].startswith("7.7.7.7,"), echo  # the gateway appended its peer
    answer, echo = _send(backend, gateway.address, gateway.port, "X-Forwarded-For: 6.6.6.6, 7.7.7.7")
    assert answer.status == 200 and echo["headers"]["x-envoy-external-address"] == "7.7.7.7", echo
    plane.apply(GATEWAY_DENIES_6)
    try:
        wait_for(plane.all_synced, 10, what="the policy to reach the gateway")
        wait_for(
            lambda: _send(backend, gateway.address, gateway.port, "X-Forwarded-For: 6.6.6.6")[0].status == 403,
            10,
            what="the gateway's DENY to take effect",
        )
        # 6.6.6.6 hidden behind a forged entry is still 6.6.6.6 to the trusted hop...
        answer, echo = _send(backend, gateway.address, gateway.port, "X-Forwarded-For: 7.7.7.7, 6.6.6.6")
        assert answer.status == 403 and echo is None, answer
        # ...and a client cannot become 6.6.6.6's neighbour by writing it first
        answer, echo = _send(backend, gateway.address, gateway.port, "X-Forwarded-For: 6.6.6.6, 7.7.7.7")
        assert answer.status == 200 and echo["headers"]["x-envoy-external-address"] == "7.7.7.7", answer
    finally:
        plane.cli("delete", "-f", "-", input=GATEWAY_DENIES_6, check=False)
        wait_for(plane.all_synced, 10, what="the policy to be gone")
