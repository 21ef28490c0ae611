"""Envoy replaced under a running sidecar (agent/envoy.py): by hot restart with no request lost,
and after being killed, by a new one at once; the agent itself replaced in place (SIGHUP,
agent/handover.py) with no request lost and the app running on.

One control plane, a `hot` backend and a client whose sidecar forwards a local port to it
(`--upstream`), retries off. The load opens a new connection per request through both sidecars:
a listening socket missing for a moment on either would show as a failed request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket

import pytest

from harness import BACKEND, ControlPlane, Workload, children, running, wait_for
from lattice.agent.address import LEASE_DIR, _try_lock
from load import HttpLoad

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("envoy-restart")]
NO_RETRIES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hot}
spec:
  hosts: [hot]
  http:
  - route: [{destination: {host: hot}}]
    retries: {attempts: 0}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("envoy-restart") / "home").start()
    plane.apply(NO_RETRIES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Workload(plane, "hot", command=BACKEND)
    client = Workload(plane, "hot-client", command=BACKEND, extra=("--upstream", f"hot:9080={port}"))
    state = {"server": server, "client": client}
    try:
        with running(plane, [server, client]):
            state["url"] = f"http://{client.address}:{port}/"
            yield state
            state["server"].stop()  # a replacement a test started
    finally:
        plane.stop()


def envoys(workload: Workload) -> list[int]:
    return [pid for pid, command in children(workload.process.pid) if "envoy" in command.split(" ", 1)[0]]


def app_pid(workload: Workload) -> int:
    (pid,) = [pid for pid, command in children(workload.process.pid) if "backend.py" in command]
    return pid


def hot_restarts(workload: Workload) -> int:
    return workload.log.read_text().count("envoy hot restarted")


def hot_restarted(workload: Workload, before: list[int], count: int) -> int:
    """The sidecar's log says a new epoch serves, and the Envoys that ran before have exited."""
    wait_for(lambda: hot_restarts(workload) > count, 30, what="a new Envoy epoch to serve")
    wait_for(lambda: not set(envoys(workload)) & set(before), 20, what="the old Envoy to hand over and exit")
    (new,) = envoys(workload)
    return new


@pytest.mark.timeout(180)
def test_a_hot_restart_of_either_envoy_under_load_fails_no_request(mesh):
    """SIGUSR1 to `lattice run` restarts its Envoy by hot restart: the new Envoy takes the
    listening sockets over, the old one drains; the caller sees no failure, and the app runs on."""
    load = HttpLoad(mesh["url"])
    load.start()
    try:
        wait_for(lambda: len(load.outcomes) > 10, 20, what="traffic")
        for workload in (mesh["server"], mesh["client"]):  # inbound side, then the caller's own sidecar
            before, app, count = envoys(workload), app_pid(workload), hot_restarts(workload)
            assert len(before) == 1
            workload.process.send_signal(signal.SIGUSR1)
            new = hot_restarted(workload, before, count)
            assert new not in before and app_pid(workload) == app
            seen = len(load.outcomes)
            wait_for(lambda n=seen: len(load.outcomes) > n + 20, 20, what="traffic through the new Envoy")
    finally:
        load.stop()
    assert len(load.outcomes) > 100 and load.failures() == []


@pytest.mark.timeout(180)
def test_a_killed_envoy_is_replaced_at_once(mesh):
    """SIGKILL to the server's Envoy: requests in flight there and connections in the moment
    before the new Envoy listens may fail (the listening socket died with it); the agent starts a
    new one at once and traffic flows again. bench/lifecycle.py measures what callers lose."""
    server = mesh["server"]
    load = HttpLoad(mesh["url"])
    load.start()
    try:
        wait_for(lambda: len(load.outcomes) > 10, 20, what="traffic")
        (old,) = envoys(server)
        app = app_pid(server)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: (pids := envoys(server)) and old not in pids, 10, what="a new Envoy")
        seen = len(load.outcomes)
        wait_for(
            lambda: len(load.outcomes) > seen + 20 and set(load.outcomes[-20:]) == {"200"},
            30,
            what="traffic served by the new Envoy",
        )
    finally:
        load.stop()
    assert app_pid(server) == app and server.process.poll() is None
    assert "envoy exited with -9; starting it again (restart 1)" in server.log.read_text()


@pytest.mark.timeout(180)
def test_a_sidecar_upgraded_in_place_under_load_fails_no_request(mesh):
    """SIGHUP to `lattice run` re-executes it (the code installed now): same PID, same proxy id,
    the app untouched, a new Envoy epoch taking over the listening sockets from the old one.
    Both sidecars on the path are upgraded in turn while the load runs."""
    plane = mesh["server"].plane
    load = HttpLoad(mesh["url"])
    load.start()
    try:
        wait_for(lambda: len(load.outcomes) > 10, 20, what="traffic")
        for workload in (mesh["server"], mesh["client"]):
            before, app, count = envoys(workload), app_pid(workload), hot_restarts(workload)
            agent = workload.process.pid
            upgrades = workload.log.read_text().count("re-executing")
            workload.process.send_signal(signal.SIGHUP)
            wait_for(lambda w=workload, n=upgrades: w.log.read_text().count("re-executing") > n, 10, what="re-exec")
            new = hot_restarted(workload, before, count)
            assert new not in before and app_pid(workload) == app and workload.process.pid == agent
            assert workload.process.poll() is None
            wait_for(lambda w=workload: plane.all_synced([w.id]), 20, what="the same proxy id connected and synced")
            seen = len(load.outcomes)
            wait_for(lambda n=seen: len(load.outcomes) > n + 20, 20, what="traffic through the upgraded sidecar")
    finally:
        load.stop()
    assert len(load.outcomes) > 100 and load.failures() == []
    # Each agent got its certificate again (re-attested, or with its join token while that is valid).
    assert all(w.log.read_text().count("certificate for spiffe://") >= 2 for w in (mesh["server"], mesh["client"]))


@pytest.mark.timeout(180)
def test_a_killed_sidecar_restarted_at_once_takes_its_address_back(mesh):
    """SIGKILL to `lattice run` (Envoy and app die with it); started again at once on the same
    address, as systemd's Restart=always does, it registers there although its predecessor's
    registration has not expired yet: the control plane finds that agent's port closed."""
    old = mesh["server"]
    old.process.send_signal(signal.SIGKILL)
    old.process.wait()
    # Its address lease died with it: held here until the restart binds the address, so that no
    # other workload on this shared machine leases it meanwhile (what a fixed --address assumes).
    held = _try_lock(LEASE_DIR / old.address)
    try:
        new = Workload(old.plane, old.service, command=old.command, extra=("--address", old.address))
        mesh["server"] = new
        new.start()  # ready: registered, healthy, synced (a refusal would end it: "already workload ...'s")
    finally:
        if held is not None:
            os.close(held)
    wait_for(lambda: new.plane.all_synced(), 20, what="the client to hold the new endpoint")
    load = HttpLoad(mesh["url"])
    load.start()
    try:
        wait_for(lambda: load.outcomes.count("200") > 20, 30, what="traffic to the restarted workload")
    finally:
        load.stop()
    assert old.id not in {p["id"] for p in new.plane.status()["proxies"]}


def _hot_restart_memory(base_id: int) -> bool:
    return os.path.exists(f"/dev/shm/envoy_shared_memory_{base_id * 10}")


async def test_a_stopped_envoy_leaves_no_hot_restart_memory_behind(tmp_path):
    """Envoy keeps its hot restart shared memory in /dev/shm and leaves it there when it exits;
    the agent removes it when it stops Envoy for good (a real Envoy, admin only)."""
    from lattice.agent.envoy import EnvoyProcess

    bootstrap = tmp_path / "envoy.json"
    admin = tmp_path / "admin.sock"
    bootstrap.write_text(json.dumps({"admin": {"address": {"pipe": {"path": str(admin)}}}}))
    envoy = EnvoyProcess(bootstrap, admin, tmp_path / "envoy.log")
    supervising = asyncio.create_task(envoy.supervise())
    try:
        for _ in range(600):  # until LIVE (a condition, polled)
            if await envoy.live():
                break
            await asyncio.sleep(0.05)
        base_id = int((tmp_path / "envoy.base-id").read_text())
        assert _hot_restart_memory(base_id)
    finally:
        await envoy.stop()
        await supervising
    assert not _hot_restart_memory(base_id)
