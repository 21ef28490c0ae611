"""Failure rules from DESIGN.md, observed from outside with real processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import lattice.demo

import pytest

from harness import ControlPlane, Enrolled, Workload, child_pid, http, served_by, start_all, wait_for

pytestmark = pytest.mark.slow
DATA = Path(lattice.demo.__file__).parent / "networking"
REVIEWS = "http://reviews:9080/reviews/0"
# Valid to the schema, refused by Envoy: DestinationRule certificate paths name files on the
# client's host, which only its Envoy can read (regexes RE2 cannot compile are refused at apply).
MISSING_CA = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /nonexistent/lattice-test/ca.pem}
  subsets: [{name: v1, labels: {version: v1}}, {name: v3, labels: {version: v3}}]
"""


@pytest.fixture
def started(plane):
    ws = []
    yield ws
    for w in reversed(ws):
        w.stop()


def _mesh(plane, started):
    ws = start_all(plane, [("productpage", "v1"), ("reviews", "v1"), ("reviews", "v3")])
    started.extend(ws)
    plane.apply((DATA / "destination-rule-all.yaml").read_text())
    plane.apply((DATA / "virtual-service-reviews-v3.yaml").read_text())
    wait_for(lambda: served_by(ws[0], REVIEWS, 3) == {"reviews-v3": 3}, 5, what="routing to v3")
    return ws


def test_invalid_push_is_nacked_and_old_config_keeps_serving(plane, started):
    client, *_ = _mesh(plane, started)
    plane.apply(MISSING_CA)
    nacked = wait_for(
        lambda: plane.proxy(client.id)["types"]["Cluster"]["state"] == "NACKED" and plane.proxy(client.id),
        5,
        what="the NACK to show",
    )
    assert "/nonexistent/lattice-test/ca.pem" in nacked["types"]["Cluster"]["error"]
    assert served_by(client, REVIEWS, 20) == {"reviews-v3": 20}  # still the last good clusters, plain mesh mTLS
    out = plane.cli("status").stdout
    assert "NACK" in out and "/nonexistent/lattice-test/ca.pem" in out
    plane.apply((DATA / "destination-rule-all.yaml").read_text())
    plane.apply((DATA / "virtual-service-reviews-v3.yaml").read_text().replace("v3", "v1"))
    wait_for(lambda: plane.all_synced(), 5, what="a good push to clear the NACK")
    wait_for(lambda: served_by(client, REVIEWS, 3) == {"reviews-v1": 3}, 5, what="routing to v1")


def test_control_plane_restart_keeps_config_and_proxies_resync(plane, started):
    client, *_ = _mesh(plane, started)
    ports = plane.ports
    plane.stop()
    assert served_by(client, REVIEWS, 20) == {"reviews-v3": 20}  # data plane runs on without it
    plane.start(*ports)
    wait_for(lambda: plane.all_synced(), 15, what="every proxy to reconnect and resync")
    assert [i["metadata"]["name"] for i in plane.get("/api/v1/resources/virtualservices")["items"]] == ["reviews"]
    assert served_by(client, REVIEWS, 10) == {"reviews-v3": 10}
    plane.apply((DATA / "virtual-service-reviews-v3.yaml").read_text().replace("v3", "v1"))
    wait_for(
        lambda: served_by(client, REVIEWS, 3) == {"reviews-v1": 3},
        5,
        what="a change after the restart to reach traffic",
    )


def test_envoy_killed_while_control_plane_is_down_comes_back_with_last_config(plane, started):
    client, *_ = _mesh(plane, started)
    plane.stop()
    envoy = child_pid(client, "envoy")
    os.kill(envoy, signal.SIGKILL)
    wait_for(lambda: child_pid(client, "envoy") != envoy, 10, what="the agent to restart Envoy")
    # The new Envoy got its config from the agent's relay cache: routes still say v3.
    wait_for(lambda: served_by(client, REVIEWS, 3) == {"reviews-v3": 3}, 10, what="the restarted Envoy to serve")
    assert served_by(client, REVIEWS, 20) == {"reviews-v3": 20}


def test_killed_app_stops_receiving_traffic(plane, started):
    client, v1, v3 = start_all(plane, [("productpage", "v1"), ("reviews", "v1"), ("reviews", "v3")])
    started.extend([client, v1, v3])
    assert set(served_by(client, REVIEWS, 10)) == {"reviews-v1", "reviews-v3"}
    os.kill(child_pid(v3, "lattice.demo.apps"), signal.SIGKILL)
    assert v3.process.wait(10) == 128 + signal.SIGKILL  # `lattice run` exits with the app's status
    wait_for(lambda: v3.id not in [p["id"] for p in plane.status()["proxies"]], 5, what="v3 to deregister")
    assert served_by(client, REVIEWS, 20) == {"reviews-v1": 20}


def test_workload_that_stops_heartbeating_is_dropped(tmp_path):
    plane = ControlPlane(tmp_path / "home", "--heartbeat-timeout", "1s", "--endpoint-grace", "1s").start()
    try:
        record = {
            "name": "ghost-v1",
            "service": "ghost",
            "service_account": "ghost",
            "address": "127.0.0.77",
            "port": 9080,
            "app_port": 9,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
        Enrolled(plane, "ghost", "ghost-v1-abc.default", tmp_path / "ghost").register(record)
        assert [p["id"] for p in plane.status()["proxies"]] == ["ghost-v1-abc.default"]
        started = time.monotonic()
        wait_for(lambda: plane.status()["proxies"] == [], 5, what="the silent workload to expire")
        assert time.monotonic() - started >= 0.5
    finally:
        plane.stop()


# Listens only once the test creates the gate file: a timer would race a loaded CI machine.
SLOW_APP = (
    "import os, runpy, sys, time\nwhile not os.path.exists(sys.argv[1]): "
    "time.sleep(0.05)\nrunpy.run_module('lattice.demo.apps.reviews', run_name='__main__')"
)


def test_endpoints_whose_app_is_not_listening_get_no_traffic(plane, started, tmp_path):
    client, ready = start_all(plane, [("productpage", "v1"), ("reviews", "v1")])
    started.extend([client, ready])
    # Two more replicas register but their apps do not listen yet: one healthy endpoint of
    # three is below Envoy's default 50% panic threshold.
    gate = tmp_path / "listen-now"
    slow = [
        Workload(plane, "reviews", v, command=[sys.executable, "-c", SLOW_APP, str(gate)]).start(wait=False)
        for v in ("v2", "v3")
    ]
    started.extend(slow)
    wait_for(
        lambda: len([p for p in plane.status()["proxies"] if p["service"] == "reviews"]) == 3 and plane.all_synced(),
        10,
        what="slow replicas to register",
    )
    assert served_by(client, REVIEWS, 30) == {"reviews-v1": 30}
    # Retries would hide a misrouted request from the client; the replicas' own sidecars cannot.
    for p in plane.status()["proxies"]:
        if p["service"] == "reviews" and not p["healthy"]:
            assert _inbound_requests(p) == 0, f"{p['id']} got traffic before its app listened"
    gate.touch()
    for w in slow:
        w.wait_ready()
    wait_for(lambda: len(served_by(client, REVIEWS, 15)) == 3, 10, what="the replicas to get traffic once healthy")


def _inbound_requests(proxy: dict) -> int:
    _, _, body = http(
        "GET",
        f"http://{proxy['address']}:{proxy['agent_port']}/stats?filter=^http.inbound_0.0.0.0_9080.downstream_rq_total$",
    )
    return int(body.decode().split(":")[1]) if b":" in body else 0
