"""A mesh on several machines: the control plane on host A, workloads on B and C, each host a
network namespace on a private switch (tests/hosts.py). Workloads join with `--server` alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from harness import BACKEND, LATTICE, ENV_BASE, http, stop, wait_for
from hosts import Network

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs the suite as root)"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("hosts") / "home"
    with Network() as net:
        a, b, c = net.host("a"), net.host("b"), net.host("c")
        plane = net.control_plane(a, home)
        started = []
        try:
            reviews = net.workload(plane, b, "reviews", "v1", command=BACKEND).start(wait=False)
            web = net.workload(plane, c, "web", "v1", command=BACKEND, extra=("--port", "8080")).start(wait=False)
            started += [reviews, web]
            reviews.wait_ready(), web.wait_ready()
            wait_for(plane.all_synced, 15, what="every proxy to hold the others' endpoints")
            yield net, plane, (a, b, c), reviews, web
        finally:
            for w in reversed(started):
                w.stop()
            plane.stop()


def test_workloads_on_other_hosts_join_with_server_alone_and_are_advertised_at_their_hosts(mesh):
    net, plane, (a, b, c), reviews, web = mesh
    proxies = {p["name"]: p for p in plane.status()["proxies"]}
    assert proxies["reviews-v1"]["address"] == b.address and proxies["web-v1"]["address"] == c.address
    assert plane.all_synced()
    # web's app calls reviews by name through its sidecar (HTTP_PROXY mode), across hosts, over mTLS.
    outbound = web.outbound  # the app's HTTP_PROXY: on a loopback of C's, with its credential
    status, headers, _ = c.call(http, "GET", "http://reviews:9080/", proxy=outbound)
    assert (status, headers.get("x-served-by")) == (200, "reviews-v1")


def test_only_the_inbound_port_is_reachable_from_other_hosts(mesh):
    net, plane, (a, b, c), reviews, web = mesh
    local = plane.proxy(reviews.id)["local_address"]
    assert local.startswith("127."), local  # outbound and upstream ports bind a loopback of B's

    def reachable(port: int) -> bool:
        try:
            socket.create_connection((b.address, port), timeout=2).close()
            return True
        except OSError:
            return False

    assert c.call(reachable, 9080)  # the inbound mTLS listener
    assert not c.call(reachable, 15001), "B's outbound listener must not be reachable from C"


def _run(host, plane, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`lattice run` at the default log level, as a user types it, to its end."""
    env = ENV_BASE | {"LATTICE_TOKEN": plane.token("rogue")}
    env.pop("LATTICE_HOME", None)
    command = [LATTICE, "run", "--service", "rogue", *args, "--", sys.executable, "-c", "import time; time.sleep(60)"]
    return host.exec(command, env=env, timeout=timeout)


def test_a_loopback_address_from_another_host_is_refused_saying_what_to_pass(mesh):
    net, plane, (a, b, c), reviews, web = mesh
    result = _run(c, plane, "--server", plane.agent_api, "--address", "127.0.0.1")
    assert result.returncode == 1, result.stderr
    assert "other hosts cannot reach" in result.stderr and "--address" in result.stderr, result.stderr
    assert c.address in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_two_workloads_never_share_an_address_and_port(mesh):
    net, plane, (a, b, c), reviews, web = mesh
    result = _run(b, plane, "--server", plane.agent_api, "--port", "9080")
    assert result.returncode == 1, result.stderr
    assert f"{b.address}:9080 is already workload {reviews.id}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_control_plane_is_reported_at_the_default_log_level(mesh, tmp_path):
    net, plane, (a, b, c), reviews, web = mesh
    log = tmp_path / "agent.log"
    env = ENV_BASE | {"LATTICE_TOKEN": plane.token("rogue")}
    env.pop("LATTICE_HOME", None)
    nowhere = f"https://{a.address}:1"  # A is up, nothing listens there
    command = [LATTICE, "run", "--service", "rogue", "--server", nowhere, "--", sys.executable, "-c", "pass"]
    process = c.popen(command, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: f"cannot reach the control plane at {nowhere}" in log.read_text(), 15, what=f"the warning ({log})"
        )
        assert "--listen" in log.read_text()
    finally:
        stop(process)


def test_a_mesh_name_with_no_workload_gets_a_fixed_503_naming_it_never_the_passthrough(mesh):
    """HTTP_PROXY mode across hosts: ratings served on B, then stopped (its last workload leaves);
    web's app on C gets 503 "no healthy upstream for ratings..." at once, not a hang, a reset or
    whatever the host's resolver finds by that name. A VirtualService's host with no workload
    ever, and any <name>.<namespace>.svc name, answer the same."""
    net, plane, (a, b, c), reviews, web = mesh
    outbound = web.outbound
    plane.apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ghost}\n"
        "spec: {hosts: [ghost], http: [{route: [{destination: {host: ghost}}]}]}\n"
    )
    ratings = net.workload(plane, b, "ratings", "v1", command=BACKEND, extra=("--port", "9081")).start()
    try:
        wait_for(lambda: c.call(http, "GET", "http://ratings:9081/", proxy=outbound)[0] == 200, 15, what="ratings")
    finally:
        ratings.stop()

    def answer(url: str):
        return c.call(http, "GET", url, proxy=outbound)

    wait_for(lambda: answer("http://ratings:9081/")[0] == 503, 15, what="web's sidecar to learn ratings left")
    for url, name in (
        ("http://ratings:9081/", "ratings.default.svc.cluster.local"),
        ("http://ratings.default.svc.cluster.local:9081/x", "ratings.default.svc.cluster.local"),
        ("http://ghost:8000/", "ghost.default.svc.cluster.local"),
        ("http://nothing.prod.svc.cluster.local/", "*.svc.cluster.local"),
    ):
        status, headers, body = answer(url)
        assert status == 503 and headers.get("x-lattice-no-healthy-upstream") == name, (url, status, headers, body)
        assert f"no healthy upstream for {name}".encode() in body, (url, body)


def test_a_workload_answering_5xx_is_ejected_and_traffic_moves_to_the_healthy_one(mesh):
    """No DestinationRule: the mesh's default outlier detection. details v1 on B answers 500 to
    everything (its port still open, so it stays healthy to the control plane); v2 on A is fine.
    web's sidecar on C ejects v1 after five 500s in a row, and from then on every request reaches v2."""
    net, plane, (a, b, c), reviews, web = mesh
    outbound = web.outbound
    extra = ("--port", "9082")
    failing = net.workload(plane, b, "details", "v1", command=BACKEND, extra=extra, env={"BACKEND_STATUS": "500"})
    healthy = net.workload(plane, a, "details", "v2", command=BACKEND, extra=extra)
    answers: list[tuple[int, str | None]] = []
    try:
        failing.start(wait=False), healthy.start(wait=False)
        failing.wait_ready(), healthy.wait_ready()
        wait_for(plane.all_synced, 15, what="web's sidecar to hold both details endpoints")
        while len(answers) < 100 and answers[-20:] != [(200, "details-v2")] * 20:
            status, headers, _ = c.call(http, "GET", "http://details:9082/", proxy=outbound)
            answers.append((status, headers.get("x-served-by")))
    finally:
        failing.stop(), healthy.stop()
    assert (500, "details-v1") in answers, answers  # v1 was reached, and failed
    # Ejected at the fifth (a request or two may be on their way while Envoy's main thread ejects it).
    assert answers.count((500, "details-v1")) <= 7, answers
    # Without ejection v1 takes about half the requests: twenty in a row to v2 would be a 1 in 10^6 chance.
    assert answers[-20:] == [(200, "details-v2")] * 20, answers


def test_vm_mode_captures_the_host_s_own_namespace_and_spares_the_rest(mesh):
    """`lattice run --capture --netns host` on a machine of its own (host D): no namespace of its
    own, yet a client on D that ignores proxies calls reviews (on B) by name and is routed there
    (the name resolves only through the agent's DNS proxy, and Envoy's own connections are not
    captured back, or nothing would arrive); the agent, spared, registered and synced; stopping it
    leaves D's nat table as it was."""
    net, plane, (a, b, c), reviews, web = mesh
    d = net.host("d")
    # A machine has a default route (its gateway): a resolver's or a virtual IP's packets must get as
    # far as the nat table. Here it leads to the switch, where anything not captured goes nowhere.
    d.exec(["ip", "route", "add", "default", "dev", "eth0"])
    before = d.exec(["iptables", "-w", "-t", "nat", "-S"]).stdout
    vm = net.workload(plane, d, "vm", "v1", command=BACKEND, extra=("--capture", "--netns", "host", "--port", "8081"))
    vm.start()
    try:
        assert "capture mode (VM)" in vm.log.read_text()
        assert plane.proxy(vm.id)["address"] == d.address
        result = d.exec(["curl", "--noproxy", "*", "-s", "-m", "10", "-D-", "-o/dev/null", "http://reviews:9080/"])
        assert result.stdout.startswith("HTTP/1.1 200") and "x-served-by: reviews-v1" in result.stdout, result
        assert "LATTICE-" in d.exec(["iptables", "-w", "-t", "nat", "-S", "OUTPUT"]).stdout
    finally:
        vm.stop()
    assert d.exec(["iptables", "-w", "-t", "nat", "-S"]).stdout == before
    # Uncaptured again: the mesh's name no longer resolves on D.
    assert d.exec(["curl", "--noproxy", "*", "-s", "-m", "5", "http://reviews:9080/"]).returncode != 0
