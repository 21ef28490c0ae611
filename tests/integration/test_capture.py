"""Transparent capture across hosts: apps that know nothing of the mesh (`curl --noproxy '*'`,
Node's http.get, a raw TCP client) call services by name and get routed, load-balanced mTLS.

Control plane on host A (STRICT mTLS mesh-wide); reviews v1 and v2 and a TCP echo on host B; on
host C a captured `web` workload whose network namespace the clients run in (tests/hosts.py).
"""

from __future__ import annotations

import os
import re
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
        plane = net.control_plane(a, home, "--heartbeat-timeout", "4")  # silent soon, kept (--endpoint-grace)
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


def _curl(fleet, timeout: float = 2) -> str:
    """One request by name from web's namespace: the status and who served it ("000" when none)."""
    result = in_web(fleet, ["curl", "--noproxy", "*", "-s", "-o/dev/null", "-m", str(timeout), "-w", "%{http_code}",
                            "http://reviews:9080/"])  # fmt: skip
    return result.stdout.strip() or "000"


def test_only_tls_crosses_the_wire_between_hosts(fleet, tmp_path):
    net, plane, (a, b, c), w = fleet
    pcap = tmp_path / "b.pcap"
    dump = b.popen(["tcpdump", "-Z", "root", "-i", "eth0", "--immediate-mode", "-U", "-n", "-w", str(pcap)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "listening on" in dump.stderr.readline()
        assert [_curl(fleet) for _ in range(10)] == ["200"] * 10
        assert (
            in_web(fleet, [sys.executable, "-c", TCP_CLIENT, "tcp-echo", "9000"]).stdout.strip() == "tcp-echo-v1 hello"
        )
        # Written as captured (--immediate-mode, -U): wait for the packets to be on disk, not for a time.
        wait_for(lambda: len(_tcp_payloads(pcap)) >= 20, 10, what=f"tcpdump to write the packets ({pcap})")
    finally:
        dump.terminate()
        dump.wait(10)
    payloads = [data for src, dst, data in _tcp_payloads(pcap) if {src, dst} == {b.address, c.address} and data]
    assert len(payloads) >= 20, len(payloads)  # the traffic was there
    for plain in (b"HTTP/1.1", b"x-served-by", b"reviews-v", b"hello"):
        assert not any(plain in data for data in payloads), f"{plain!r} in clear on B's link"
    # Segments that open a TLS record (handshake 0x16 or application data 0x17, version 0x03xx): the
    # requests and answers above travel in them.
    records = [data for data in payloads if data[0] in (0x16, 0x17) and data[1] == 3]
    assert len(records) >= 10, "expected TLS records between the sidecars (one request each way at least)"


def _tcp_payloads(pcap: Path) -> list[tuple[str, str, bytes]]:
    """(source, destination, TCP payload) of each IPv4 frame in a pcap file (Ethernet link type)."""
    import socket
    import struct

    raw, out, offset = pcap.read_bytes(), [], 24
    while offset + 16 <= len(raw):
        length = struct.unpack("<I", raw[offset + 8 : offset + 12])[0]
        frame, offset = raw[offset + 16 : offset + 16 + length], offset + 16 + length
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:  # IPv4, TCP
            continue
        ip = frame[14:]
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        out.append((socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), tcp[(tcp[12] >> 4) * 4 :]))
    return out


def test_a_process_on_another_host_outside_the_mesh_is_refused_under_strict(fleet):
    net, plane, (a, b, c), w = fleet
    result = c.exec(["curl", "--noproxy", "*", "-s", "-m", "5", "-w", "%{http_code}", f"http://{b.address}:9080/"])
    assert result.returncode != 0 and "reviews-v" not in result.stdout, result  # reset: no TLS, no answer


def test_a_process_on_b_outside_the_namespace_cannot_use_the_outbound_listener_or_the_agent_port(fleet):
    net, plane, (a, b, c), w = fleet
    reviews = plane.proxy(w["reviews-v1"].id)

    def reachable(host: str, port: int) -> bool:
        import socket

        try:
            socket.create_connection((host, port), timeout=2).close()
            return True
        except OSError:
            return False

    namespace_address = _inbound_address(w["reviews-v1"])
    for host, port in ((namespace_address, 15001), ("127.0.0.1", 15001), (b.address, reviews["agent_port"])):
        assert not b.call(reachable, host, port), f"{host}:{port} reachable from B outside the workload's namespace"
    # The control plane (host A) still reads the agent port: its config dump comes back.
    status, body = plane.call("GET", f"/api/v1/proxies/{w['reviews-v1'].id}/config_dump")
    assert status == 200 and "configs" in body, (status, str(body)[:300])


def test_an_unprivileged_user_on_the_host_gets_no_identity_no_dump_no_tap_no_token(fleet):
    """Issue 14, done when: on a host running the mesh in capture mode, a local unprivileged user
    (`nobody`, via setpriv, in the host's network namespace) cannot obtain a response carrying a
    workload's identity (no outbound listener or upstream port is reachable), a config dump or a tap
    (the agent port lets only the control plane in), nor any join token."""
    net, plane, (a, b, c), w = fleet
    workload = w["reviews-v1"]
    reviews = plane.proxy(workload.id)
    inside = _inbound_address(workload)
    nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]

    def curl(*args: str) -> str:
        done = b.exec([*nobody, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *args])
        return done.stdout.strip()

    for host in (inside, "127.0.0.1", b.address):  # the outbound listener, as the app's HTTP proxy
        assert curl("-x", f"http://{host}:15001", "http://reviews:9080/") == "000", host
    for host in (inside, b.address):
        for path in ("/config_dump", "/lattice/v1/tap", "/stats/prometheus"):
            assert curl(f"http://{host}:{reviews['agent_port']}{path}") == "000", (host, path)
    # the inbound port, in plaintext, under STRICT: no answer from the app around the sidecar
    assert curl(f"http://{b.address}:9080/") == "000"
    assert curl(f"http://{inside}:9080/") == "000"
    listing = b.exec([*nobody, "ps", "-eo", "pid,args", "ww"])
    lines = {int(line.split(None, 1)[0]): line for line in listing.stdout.splitlines()[1:] if line.strip()}
    assert "run --service reviews" in lines.get(workload.process.pid, ""), (
        workload.process.pid,
        listing.stdout[-2000:],
    )
    assert "--token " not in listing.stdout and "LATTICE_TOKEN" not in listing.stdout
    for pid in (workload.process.pid, app_pid(workload)):
        environ = b.exec([*nobody, "cat", f"/proc/{pid}/environ"])
        assert environ.returncode != 0 and "LATTICE_TOKEN" not in environ.stdout, pid


def _inbound_address(workload) -> str:
    found = re.search(r"network namespace \S+ \((\S+)\)", workload.log.read_text())
    assert found, workload.log.read_text()
    return found.group(1)


def test_losing_the_control_plane_is_not_an_outage(fleet):
    """A and B cut: B's workloads fall silent (no heartbeats) but keep their endpoints; C still calls them."""
    net, plane, (a, b, c), w = fleet
    net.cut(a, b)
    try:
        wait_for(lambda: plane.proxy(w["reviews-v1"].id)["silent"], 20, what="reviews-v1 to fall silent")
        assert [_curl(fleet) for _ in range(10)] == ["200"] * 10
    finally:
        net.restore(a, b)
    wait_for(lambda: not plane.proxy(w["reviews-v1"].id)["silent"], 20, what="reviews-v1 to heartbeat again")


def test_a_cut_between_b_and_c_recovers_within_5s_of_restoring_without_restarts(fleet):
    net, plane, (a, b, c), w = fleet
    envoys = {name: child_pid(x, "envoy") for name, x in w.items()}
    assert _curl(fleet) == "200"
    net.cut(b, c)
    cut = time.monotonic()
    try:
        assert _curl(fleet, timeout=2) != "200"  # the cut is real
        time.sleep(max(0.0, 15 - (time.monotonic() - cut)))  # the link stays down for 15 s: that is the scenario
    finally:
        net.restore(b, c)
    restored = time.monotonic()
    wait_for(lambda: _curl(fleet, timeout=1) == "200", 5, interval=0.1, what="traffic to recover after restoring")
    assert time.monotonic() - restored <= 5
    assert [_curl(fleet) for _ in range(10)] == ["200"] * 10
    assert {name: child_pid(x, "envoy") for name, x in w.items()} == envoys  # nothing restarted
    assert all(x.process.poll() is None for x in w.values())


def test_what_a_killed_captured_workload_left_is_swept_by_the_next(fleet):
    """SIGKILL leaves no chance to clean up: the next captured workload on the host, taking the
    freed lease of its link, removes the dead one's namespace and host chains."""
    net, plane, (a, b, c), w = fleet

    def chains() -> set[str]:
        rules = c.exec(["iptables", "-w", "-t", "nat", "-S"]).stdout
        return set(re.findall(r"^-N (LATTICE-\w+-IN)$", rules, re.M))

    before = chains()
    ghost = net.workload(plane, c, "ghost", "v1", command=BACKEND, extra=("--capture", "--port", "7000")).start()
    left = chains() - before
    assert len(left) == 1, left
    envoy = child_pid(ghost, "envoy")
    ghost.process.kill()
    ghost.process.wait(10)
    wait_for(lambda: _gone(envoy), 10, what="the killed sidecar's Envoy to die with it")
    # Silent (no heartbeat for 4 s) before its successor takes its address and port: replaced, not refused.
    wait_for(lambda: plane.proxy(ghost.id)["silent"], 20, what="the killed workload to fall silent")
    assert chains() - before == left  # SIGKILL: nothing undone
    successor = net.workload(plane, c, "ghost", "v2", command=BACKEND, extra=("--capture", "--port", "7000")).start()
    try:
        assert left.isdisjoint(chains()) and len(chains() - before) == 1
    finally:
        successor.stop()
    assert chains() == before


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_mesh_name_without_workloads_resolves_and_answers_503_or_closes_at_once(fleet):
    """A VirtualService's host that no workload serves yet: a captured app resolves it (a virtual IP),
    HTTP gets 503 "no healthy upstream for <name>", a raw TCP connection is closed at once."""
    net, plane, hosts, w = fleet
    plane.apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ghost}\n"
        "spec: {hosts: [ghost], http: [{route: [{destination: {host: ghost}}]}]}\n"
    )
    try:
        wait_for(lambda: in_web(fleet, ["getent", "ahostsv4", "ghost"]).returncode == 0, 15, what="ghost to resolve")
        result = in_web(fleet, ["curl", "--noproxy", "*", "-s", "-m", "5", "-D-", "http://ghost:8000/"])
        assert result.stdout.startswith("HTTP/1.1 503"), result
        assert "x-lattice-no-healthy-upstream: ghost.default.svc.cluster.local" in result.stdout, result.stdout
        started = time.monotonic()
        raw = in_web(fleet, [sys.executable, "-c", TCP_CLIENT, "ghost", "9000"])
        assert raw.stdout.strip() == "" and time.monotonic() - started < 4, raw  # closed, not left to time out
    finally:
        plane.cli("delete", "virtualservice", "ghost", check=False)
