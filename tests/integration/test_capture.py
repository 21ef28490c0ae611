"""Transparent capture across hosts: apps that know nothing of the mesh (`curl --noproxy '*'`,
Node's http.get, a raw TCP client) call services by name and get routed, load-balanced mTLS.

Control plane on host A (STRICT mTLS mesh-wide); reviews v1 and v2 and a TCP echo on host B; on
host C a captured `web` workload whose network namespace the clients run in (tests/hosts.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import child_pid, wait_for
from hosts import Network

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root (CI runs as root)"),
]
APPS = Path(__file__).parent.parent / "apps"
BACKEND = [sys.executable, str(APPS / "backend.py")]
TCP_ECHO = [sys.executable, str(APPS / "tcp_echo.py")]
SPLIT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""
# A client that knows nothing of proxies: Node's own http.get, n requests, the x-served-by counts.
NODE_CLIENT = """
const http = require('http');
const n = parseInt(process.argv[1]); const counts = {}; let started = 0, done = 0;
function record(key) {
  counts[key] = (counts[key] || 0) + 1;
  if (++done === n) console.log(JSON.stringify(counts)); else if (started < n) one();
}
function one() {
  started++;
  http.get('http://reviews:9080/', res => {
    res.resume();
    res.on('end', () => record(res.statusCode === 200 ? res.headers['x-served-by'] : 'status ' + res.statusCode));
  }).on('error', e => record(e.code));
}
for (let i = 0; i < 8; i++) one();  // eight at a time
"""
TCP_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"hello\\n")
    print(s.makefile().readline().strip())
"""


def app_pid(workload) -> int:
    """The workload's app process (`lattice run` started it in the namespace it made)."""
    return child_pid(workload, "backend.py")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    home = tmp_path_factory.mktemp("capture") / "home"
    with Network() as net:
        a, b, c = net.host("a"), net.host("b"), net.host("c")
        plane = net.control_plane(a, home)
        started = []
        try:
            plane.apply(SPLIT)
            specs = [
                (b, "reviews", "v1", BACKEND, ()),
                (b, "reviews", "v2", BACKEND, ()),
                (b, "tcp-echo", "v1", TCP_ECHO, ("--port", "9000", "--protocol", "tcp")),
                (c, "web", "v1", BACKEND, ("--port", "8080")),
            ]
            for host, service, version, command, extra in specs:
                w = net.workload(plane, host, service, version, command=command, extra=("--capture", *extra))
                started.append(w.start(wait=False))
            for w in started:
                w.wait_ready()
            wait_for(plane.all_synced, 20, what="every proxy to hold the others' endpoints")
            yield net, plane, (a, b, c), {f"{w.service}-{w.version}": w for w in started}
        finally:
            for w in reversed(started):
                w.stop()
            plane.stop()


def in_web(fleet, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """A process beside web's app on C, as the app itself would run: in its network namespace (and
    its mount namespace, for its resolv.conf), captured, knowing nothing of the mesh."""
    net, plane, (a, b, c), w = fleet
    command = ["nsenter", "-t", str(app_pid(w["web-v1"])), "-n", "-m", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_curl_ignoring_proxies_calls_reviews_by_name_across_hosts(fleet):
    result = in_web(fleet, ["curl", "--noproxy", "*", "-s", "-D-", "-o/dev/null", "http://reviews:9080/"])
    assert result.returncode == 0, result.stderr
    assert " 200" in result.stdout.splitlines()[0] and "x-served-by: reviews-v" in result.stdout, result.stdout


@pytest.mark.timeout(300)
def test_node_http_get_gets_the_80_20_split_by_name(fleet):
    import json

    result = in_web(fleet, [shutil.which("node"), "-e", NODE_CLIENT, "500"], timeout=120)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
    assert abs(counts["reviews-v1"] / 500 - 0.8) <= 0.08, counts


def test_a_raw_tcp_client_reaches_a_tcp_service_by_name(fleet):
    result = in_web(fleet, [sys.executable, "-c", TCP_CLIENT, "tcp-echo", "9000"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tcp-echo-v1 hello"


def test_every_proxy_is_synced(fleet):
    net, plane, hosts, w = fleet
    status = plane.cli("status", "-o", "json")
    import json

    proxies = json.loads(status.stdout)["proxies"]
    assert len(proxies) == 4 and all(
        p["connected"] and all(t["state"] == "SYNCED" for t in p["types"].values()) for p in proxies
    ), proxies


def test_dns_answers_service_entry_free_names_and_forwards_nothing_meshy(fleet):
    for name in ("reviews", "reviews.default", "reviews.default.svc.cluster.local", "REVIEWS.default"):
        result = in_web(fleet, ["getent", "ahostsv4", name])
        assert result.returncode == 0 and result.stdout.startswith("240.240."), (name, result)
    time.sleep(0)
