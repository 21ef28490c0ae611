"""The CLI driven exactly as README tells a user to."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lattice.demo

import pytest
import yaml

from harness import ENV_BASE, LATTICE, Workload, children, start_all, stop, wait_for
from lattice.agent.envoy import die_with_parent

pytestmark = pytest.mark.slow
DATA = Path(lattice.demo.__file__).parent / "networking"

FIRST_REQUEST = """
import os, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]}))
with opener.open("http://reviews:9080/reviews/0", timeout=5) as r:
    sys.exit(0 if r.status == 200 and r.headers["x-served-by"] == "reviews-v1" else 1)
"""


def test_app_exit_code_is_the_run_exit_code_and_nothing_is_left(plane):
    w = Workload(plane, "batch", command=[sys.executable, "-c", "import sys; sys.exit(3)"]).start(wait=False)
    assert w.process.wait(30) == 3
    assert plane.status()["proxies"] == []


def test_first_request_of_the_app_already_goes_through_the_mesh(plane, workloads):
    workloads("reviews")
    job = Workload(plane, "job", command=[sys.executable, "-c", FIRST_REQUEST]).start(wait=False)
    assert job.process.wait(30) == 0, job.log.read_text()


def test_invalid_apply_names_the_field_and_keeps_what_is_stored(plane):
    plane.apply((DATA / "virtual-service-reviews-v3.yaml").read_text())
    bad = (
        (DATA / "virtual-service-reviews-80-20.yaml")
        .read_text()
        .replace("weight: 80", "weight: -5")
        .replace("subset: v2", "subset: v2\n        colour: blue")
    )
    result = plane.cli("apply", "-f", "-", input=bad, check=False)
    assert result.returncode == 1
    assert "spec.http[0].route[0].weight" in result.stderr and "greater than or equal to 0" in result.stderr
    assert "spec.http[0].route[1].destination.colour" in result.stderr
    stored = json.loads(plane.cli("get", "vs", "reviews", "-o", "json").stdout)
    assert stored["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v3"


def test_get_yaml_round_trips_through_apply(plane):
    plane.apply((DATA / "destination-rule-all.yaml").read_text())
    listed = plane.cli("get", "destinationrules", "-o", "yaml").stdout
    assert [i["metadata"]["name"] for i in yaml.safe_load(listed)["items"]] == [
        "details",
        "productpage",
        "ratings",
        "reviews",
    ]
    again = plane.cli("apply", "-f", "-", input=listed).stdout
    assert again.count("unchanged") == 4, again
    table = plane.cli("get", "dr").stdout
    assert "reviews" in table and "networking.istio.io/v1" in table


def test_proxy_config_shows_what_envoy_holds(plane):
    (reviews,) = start_all(plane, [("reviews", "v1")])
    plane.apply((DATA / "destination-rule-all.yaml").read_text())
    wanted = "outbound|9080|v3|reviews.default.svc.cluster.local"
    names = wait_for(
        lambda: (
            (
                n := [
                    c["name"]
                    for c in json.loads(plane.cli("proxy-config", "clusters", "reviews-v1", "-o", "json").stdout)
                ]
            )
            and wanted in n
            and n
        ),
        10,
        what="subset clusters in Envoy",
    )
    assert "inbound|9080||" in names
    table = plane.cli("proxy-config", "clusters", reviews.id).stdout
    assert "reviews.default.svc.cluster.local" in table and "v3" in table
    endpoints = plane.cli("proxy-config", "endpoints", "reviews-v1").stdout
    assert f"{reviews.address}:9080" in endpoints and "HEALTHY" in endpoints
    assert "outbound_http" in plane.cli("proxy-config", "listeners", "reviews-v1").stdout
    assert "reviews.default.svc.cluster.local:9080" in plane.cli("proxy-config", "routes", "reviews-v1").stdout


def test_commands_without_a_server_say_what_to_do(tmp_path):
    result = subprocess.run(
        [LATTICE, "status"], env=ENV_BASE | {"LATTICE_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "no control plane is running" in result.stderr and "lattice server" in result.stderr


def test_status_json_and_yaml(plane, workloads):
    w = workloads("ratings")
    as_json = json.loads(plane.cli("status", "-o", "json").stdout)
    as_yaml = yaml.safe_load(plane.cli("status", "-o", "yaml").stdout)
    assert [p["id"] for p in as_json["proxies"]] == [p["id"] for p in as_yaml["proxies"]] == [w.id]
    assert "SYNCED" in plane.cli("status").stdout


def test_ctrl_c_stops_app_envoy_and_agent(plane):
    w = Workload(plane, "ratings").start()
    kids = [pid for pid, _ in children(w.process.pid)]
    assert len(kids) == 2  # Envoy and the app
    w.process.send_signal(signal.SIGINT)
    assert w.process.wait(15) == 0  # the app exits 0 on the SIGTERM it is given; run passes that on
    wait_for(
        lambda: (
            not [
                p
                for p in kids
                if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
            ]
        ),
        5,
        what="children to exit",
    )
    assert plane.status()["proxies"] == []


def test_agent_alone_serves_an_app_started_separately(plane, workloads, tmp_path):
    port = _free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "lattice.demo.apps.details"],
        env=ENV_BASE | {"PORT": str(port)},
        preexec_fn=die_with_parent,
    )
    agent = subprocess.Popen(
        [LATTICE, "agent", "--service", "details", "--app-port", str(port)],
        env=plane.env | {"LATTICE_TOKEN": plane.token("details")},
        stdout=open(tmp_path / "agent.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        client = workloads("ratings")
        wait_for(
            lambda: [p for p in plane.status()["proxies"] if p["service"] == "details" and p["healthy"]],
            20,
            what="the agent to register details",
        )
        wait_for(
            lambda: client.call("http://details:9080/details/0")[0] == 200,
            10,
            what="traffic to details through its agent",
        )
        assert client.call("http://details:9080/details/0")[1]["x-served-by"] == "details-v1"
    finally:
        stopped = stop(agent)
        stop(app)
    assert stopped == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
