"""Slow and silent clients (issue 14, finding 9): REST, the agent API, xDS and a sidecar's agent
port used to keep half-open or silent connections forever, so a few thousand sockets trickling
headers a byte at a time (slowloris) starved real clients.

Observed with real sockets: the server closes each slow connection by itself (within a bound of
40 s, the timeouts being 20 s), and meanwhile a real client is answered."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

import pytest
from harness import BACKEND, ControlPlane, Workload, http, wait_for

pytestmark = pytest.mark.slow

BOUND = 40.0  # seconds: any slow connection must have been closed by the server by then
IDLE = 200  # silent connections opened at once against the REST API


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("slow-clients") / "home").start()
    workload = Workload(plane, "patient", command=BACKEND).start()
    try:
        yield plane, workload
    finally:
        workload.stop()
        plane.stop()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname, parts.port


def _connect(address: tuple[str, int], tls: bool = False) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    if tls:  # the attacker needs no certificate to reach the agent API's HTTP layer
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    return sock


def _trickle(sock: socket.socket, outcome: dict, name: str) -> None:
    """Send a request head one byte every 0.2 s, never finishing it; record when the server hung up."""
    start = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    try:
        for byte in head:
            if time.monotonic() - start > BOUND:
                break
            sock.sendall(bytes([byte]))
            time.sleep(0.2)  # the attack's own pace, not synchronization
        outcome[name] = None  # still open after BOUND
    except OSError:
        outcome[name] = time.monotonic() - start
    finally:
        sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.05)
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_and_silent_connections_are_cut_and_real_clients_are_served(mesh):
    plane, workload = mesh
    rest = _address(plane.api)
    slow = {
        "REST API": _connect(rest),
        "agent API": _connect(_address(plane.agent_api), tls=True),
        "agent port": _connect((workload.address, workload.info["agent_port"])),
    }
    outcome: dict = {}
    threads = [threading.Thread(target=_trickle, args=(s, outcome, n), daemon=True) for n, s in slow.items()]
    for t in threads:
        t.start()
    silent_xds = socket.create_connection(_address(plane.xds), timeout=5)  # not even a TLS hello
    idle = [socket.create_connection(rest, timeout=5) for _ in range(IDLE)]
    try:
        # real clients meanwhile: the REST API, the agent port
        assert plane.status()["proxies"], "the REST API did not answer a real client"
        status, _, _ = http("GET", f"http://{workload.address}:{workload.info['agent_port']}/healthz/ready")
        assert status == 200
        wait_for(lambda: _closed_by_server(silent_xds), BOUND, what="xDS to close a connection that never said hello")
        wait_for(
            lambda: all(_closed_by_server(s) for s in idle), BOUND, what=f"the REST API to close {IDLE} idle sockets"
        )
        for t in threads:
            t.join(BOUND + 5)
        assert all(outcome.get(name) is not None for name in slow), f"still open after {BOUND} s: {outcome}"
        assert plane.status()["proxies"], "the REST API stopped answering"
    finally:
        silent_xds.close()
        for s in idle:
            s.close()


def test_a_slow_request_body_is_408(mesh):
    """A request head that arrives, then a body that never does: 408 after the body timeout, not a
    handler waiting forever."""
    plane, _ = mesh
    sock = _connect(_address(plane.api))
    try:
        sock.sendall(
            b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\n"
            b"Authorization: Bearer "
            + (plane.home / "admin-token").read_bytes().strip()
            + b"\r\nContent-Length: 100\r\n\r\nkind"
        )
        sock.settimeout(BOUND + 15)
        answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        sock.close()
