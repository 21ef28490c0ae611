"""Stopping and rolling workloads under load: no caller loses a request (agent/drain.py).

One control plane and one client for the module. The client's sidecar forwards local ports
(`--upstream`) to `web` (3 replicas of the WebSocket/HTTP echo app) and `grpc-roll` (2 replicas of
the gRPC echo app); retries are off (VirtualService `retries: {attempts: 0}`), so a request sent
to a replica that went away would fail, not be hidden by a retry.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import sys
import threading
from pathlib import Path

import aiohttp
import grpc
import pytest

from harness import BACKEND, ControlPlane, Workload, wait_for
from load import HttpLoad

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lifecycle")]
APPS = Path(__file__).parents[1] / "apps"
WS_APP = [sys.executable, str(APPS / "ws_echo.py")]
GRPC_APP = [sys.executable, str(APPS / "grpc_echo.py")]
DRAIN = ("--drain-timeout", "3s")
NO_RETRIES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %(host)s}
spec:
  hosts: [%(host)s]
  http:
  - route: [{destination: {host: %(host)s}}]
    retries: {attempts: 0}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("lifecycle") / "home").start()
    for host in ("web", "grpc-roll"):
        plane.apply(NO_RETRIES % {"host": host})
    web_port, grpc_port = _free_port(), _free_port()
    client = Workload(
        plane,
        "roll-client",
        command=BACKEND,
        extra=("--upstream", f"web:9080={web_port}", "--upstream", f"grpc-roll:9080={grpc_port}"),
    )
    web = [Workload(plane, "web", command=WS_APP, extra=DRAIN) for _ in range(3)]
    grpcs = [Workload(plane, "grpc-roll", command=GRPC_APP, extra=(*DRAIN, "--protocol", "GRPC")) for _ in range(2)]
    try:
        for w in (client, *web, *grpcs):  # one by one: on a loaded machine six starting at once are slow
            w.start()
        wait_for(plane.all_synced, 15, what="every proxy to hold the others' endpoints")
        yield {
            "plane": plane,
            "client": client,
            "web": web,
            "grpc": grpcs,
            "web_url": f"{client.address}:{web_port}",
            "grpc_target": f"{client.address}:{grpc_port}",
        }
    finally:
        _stop_all([client, *web, *grpcs])  # the replicas now running, replacements included
        plane.stop()


def _stop_all(workloads: list[Workload]) -> None:
    """SIGTERM to all at once, then wait for each: their drains overlap."""
    for w in workloads:
        if w.process is not None and w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
    for w in workloads:
        w.stop()


class GrpcStreams(threading.Thread):
    """A bidi stream sending a message every 50 ms; when a stream ends, its status is kept and a
    new one starts (on whichever replica the client's sidecar picks)."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.ended: list[str] = []  # status code name of every stream that ended
        self.replies = 0
        self.broken: list[str] = []  # replies that were not whole JSON messages
        self.stopping = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            bidi = channel.stream_stream("/lattice.test.Echo/Bidi")
            while not self.stopping.is_set():
                outgoing: queue.Queue = queue.Queue()
                call = bidi(iter(outgoing.get, None), timeout=60)
                try:
                    outgoing.put(b"first")
                    for reply in call:
                        try:
                            json.loads(reply)
                            self.replies += 1
                        except ValueError:
                            self.broken.append(reply[:80])
                        if self.stopping.is_set():
                            outgoing.put(None)
                        else:
                            self.stopping.wait(0.05)  # pacing
                            outgoing.put(b"next")
                    self.ended.append(call.code().name)
                except grpc.RpcError as e:
                    self.ended.append(f"{e.code().name}: {e.details()}")


class WebSockets(threading.Thread):
    """A WebSocket sending a message every 50 ms; when the server closes it, the close code is kept
    and a new one opens."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.closes: list[str] = []
        self.replies = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self.stopping.is_set():
                try:
                    async with session.ws_connect(self.url) as ws:
                        while not self.stopping.is_set():
                            await ws.send_str("ping")
                            message = await ws.receive(timeout=10)
                            if message.type != aiohttp.WSMsgType.TEXT:
                                break
                            self.replies += 1
                            await asyncio.sleep(0.05)  # pacing
                        if self.stopping.is_set():
                            await ws.close()
                        self.closes.append(f"{message.type.name} {ws.close_code}")
                except (aiohttp.ClientError, TimeoutError, ConnectionResetError) as e:
                    self.closes.append(f"error {type(e).__name__}: {e}")
                    await asyncio.sleep(0.05)


def _roll(replicas: list[Workload]) -> list[int]:
    """Each replica in turn: SIGTERM, then a new `lattice run` in its place, ready before the next."""
    codes = []
    for i, old in enumerate(replicas):
        codes.append(old.stop())
        replicas[i] = Workload(old.plane, old.service, command=old.command, extra=old.extra).start()
    return codes


@pytest.mark.timeout(300)  # six sidecars started one by one, then five rolled: minutes on a loaded machine
def test_rolling_every_replica_under_load_fails_no_request(mesh):
    load = HttpLoad(f"http://{mesh['web_url']}/")
    streams = GrpcStreams(mesh["grpc_target"])
    sockets = WebSockets(f"http://{mesh['web_url']}/ws")
    for t in (load, streams, sockets):
        t.start()
    wait_for(lambda: streams.replies > 3 and sockets.replies > 3 and len(load.outcomes) > 10, 20, what="traffic")
    try:
        codes = _roll(mesh["web"]) + _roll(mesh["grpc"])
    finally:
        for t in (load, streams, sockets):
            t.stopping.set()
        for t in (load, streams, sockets):
            t.join(15)
    assert codes == [0] * 5  # each app stopped by its SIGTERM, in time
    assert len(load.outcomes) > 300 and load.failures() == []
    # Streams on a stopping replica ended at a message boundary with the server's own status,
    # and a new stream went elsewhere; the last one is the client's.
    assert streams.broken == [] and streams.replies > 50
    assert set(streams.ended) == {"OK"} and len(streams.ended) >= 2, streams.ended
    # WebSockets on a stopping replica got the app's close frame (1001, going away), not a reset.
    assert sockets.replies > 50
    assert set(sockets.closes[:-1]) == {"CLOSE 1001"} and len(sockets.closes) >= 2, sockets.closes


@pytest.mark.timeout(180)
def test_a_restarted_workload_re_attests_without_its_join_token(mesh):
    """The token is single-use and spent by the first start; restarts pay with the certificate the
    agent kept: with the spent token still configured (refused, 401) and with no token at all."""
    plane = mesh["plane"]
    token = plane.token("keeper", uses=1)
    first = Workload(plane, "keeper", command=BACKEND, token=token).start()
    kept = plane.home / "identity" / "default" / "keeper"
    assert kept.stat().st_mode & 0o777 == 0o700 and (kept / "identity.json").stat().st_mode & 0o777 == 0o600
    assert first.stop() == 0
    for env in ({}, {"LATTICE_TOKEN": ""}):
        again = Workload(plane, "keeper", command=BACKEND, token=token, env=env).start()
        try:
            assert "re-attested with the certificate kept" in again.log.read_text()
            answer = wait_for(
                lambda: (r := mesh["client"].call("http://keeper:9080/"))[0] == 200 and json.loads(r[2]),
                10,
                what="the restarted workload to serve over mesh mTLS",
            )
            assert "spiffe://cluster.local/ns/default/sa/roll-client" in answer["headers"]["x-forwarded-client-cert"]
        finally:
            assert again.stop() == 0
