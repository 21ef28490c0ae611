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
import re
import signal
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harness import BACKEND, ControlPlane, Workload, children, running, wait_for
from lattice.agent.address import LEASE_DIR, _try_lock
from load import ConnectProbe, HttpLoad

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


def listener_of(workload: Workload, url: str) -> tuple[str, int]:
    """The listener the load meets on this sidecar: the client's `--upstream` port (the URL), the
    server's inbound port (where the client's sidecar connects)."""
    if workload.service == "hot-client":
        parsed = urllib.parse.urlsplit(url)
        return parsed.hostname, parsed.port
    port = re.search(r"inbound :(\d+)", workload.log.read_text())
    assert port, "the sidecar says its inbound port"
    return workload.address, int(port.group(1))


@pytest.mark.timeout(240)
def test_a_killed_envoy_is_replaced_with_its_listening_sockets(mesh):
    """SIGKILL to either sidecar's Envoy under load (a new connection per request): requests in
    flight on it may fail, but its listener refuses no connection, because the agent kept
    duplicates of the listening sockets and hands them to the Envoy that replaces it
    (agent/hot_parent.py); connections made meanwhile wait in the backlog and are served. A probe
    connects to the killed Envoy's listener every 5 ms throughout; traffic flows again, the app
    runs on. bench/lifecycle.py measures what callers lose."""
    load = HttpLoad(mesh["url"])
    load.start()
    try:
        wait_for(lambda: len(load.outcomes) > 10, 20, what="traffic")
        for side in ("server", "client"):
            workload = mesh[side]
            wait_for(lambda w=workload: "keeping Envoy's" in w.log.read_text(), 20, what="listening sockets kept")
            probe = ConnectProbe(listener_of(workload, mesh["url"]))
            probe.start()
            try:
                wait_for(lambda p=probe: p.outcomes.count("ok") > 10, 20, what="the probe connecting")
                (old,) = envoys(workload)
                text = workload.log.read_text()
                app, handed, settled = app_pid(workload), text.count("handing the new Envoy"), text.count("took over")
                start, killed = len(load.outcomes), time.monotonic()
                os.kill(old, signal.SIGKILL)
                wait_for(lambda w=workload, o=old: (pids := envoys(w)) and o not in pids, 10, what="a new Envoy")
                wait_for(
                    lambda n=start: len(load.outcomes) > n + 20 and set(load.outcomes[-20:]) == {"200"},
                    30,
                    what="traffic served by the new Envoy",
                )
                served = time.monotonic()
            finally:
                probe.stop()
            probed = sum(1 for t in probe.times if killed <= t <= served)
            assert probed > 20, "the probe ran while Envoy was replaced"
            assert probe.refused_between(killed, served) == 0, f"{side}'s Envoy killed: refused {probe.outcomes}"
            during = load.outcomes[start:]
            assert not [o for o in during if "refused" in o.lower()], during
            assert app_pid(workload) == app and workload.process.poll() is None
            text = workload.log.read_text()
            assert text.count("handing the new Envoy") == handed + 1
            assert "envoy exited with -9; starting it again" in text
            # The new Envoy ends the handover (Terminate, --parent-shutdown-time-s after it serves).
            try:
                wait_for(lambda w=workload, n=settled: w.log.read_text().count("took over") > n, 30, what="handover")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{side}'s log:\n{workload.log.read_text()[-6000:]}") from None
    finally:
        load.stop()


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


def test_an_upgrade_whose_sockets_would_not_fit_is_refused_and_the_sidecar_serves_on(mesh):
    """TMPDIR at the deepest the agent accepts (75 bytes): this agent's sockets fit, the next
    generation's (`telemetry-1.sock`) would pass a socket path's 108 bytes. SIGHUP is refused with
    a line saying why; the agent is not re-executed and its proxy stays connected and synced."""
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        deep = Path(short) / ("d" * (75 - len(short) - 1))
        deep.mkdir()
        assert len(str(deep)) == 75
        workload = Workload(mesh["server"].plane, "deep", command=BACKEND, env={"TMPDIR": str(deep)}).start()
        try:
            workload.process.send_signal(signal.SIGHUP)
            refused = "SIGHUP: not upgrading: the next agent's socket"
            wait_for(lambda: refused in workload.log.read_text(), 10, what="the upgrade refused")
            assert "telemetry-1.sock is too long a path" in workload.log.read_text()
            time.sleep(1)  # a re-execution would have begun by now
            assert "re-executing" not in workload.log.read_text() and workload.process.poll() is None
            assert workload.plane.all_synced([workload.id])
        finally:
            workload.stop()


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
    from lattice.agent.hot_parent import shared_memory_path

    return shared_memory_path(base_id).exists()


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


def _direct_response_bootstrap(admin, port: int) -> dict:
    """An Envoy with one static listener that answers `ok`, and its admin socket."""
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    manager = {
        "@type": f"type.googleapis.com/{hcm}",
        "stat_prefix": "test",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "test",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    return {"admin": {"address": {"pipe": {"path": str(admin)}}}, "static_resources": {"listeners": [listener]}}


def _get(port: int) -> bytes:
    """A request on a new connection; the body, if the answer is 200."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200
        return response.read()


async def test_a_killed_envoy_gets_its_listening_sockets_from_the_agent(tmp_path):
    """A real Envoy under the agent's supervision (agent/envoy.py): the agent keeps its listening
    sockets; Envoy SIGKILLed, a connection made right after is not refused, and the next epoch,
    asking the agent as its hot restart parent (agent/hot_parent.py), takes them over and answers
    it. Envoy then ends the handover (Terminate) as it would with a real parent.

    The run directory is 90 characters long: room for the admin socket, none for a hot restart
    socket's absolute name (`hot-restart_parent_` and up to 20 digits), as a pytest directory can
    be. Envoy names them relative to its working directory, the agent through a descriptor."""
    from lattice.agent.envoy import EnvoyProcess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / ("d" * (90 - len(str(tmp_path)) - 1))
    run_dir.mkdir(exist_ok=True)
    assert len(f"{run_dir}/hot-restart_parent_0") >= 108  # too long for a socket's path
    bootstrap, admin = run_dir / "envoy.json", run_dir / "admin.sock"
    bootstrap.write_text(json.dumps(_direct_response_bootstrap(admin, port)))
    envoy = EnvoyProcess(bootstrap, admin, run_dir / "envoy.log")
    supervising = asyncio.create_task(envoy.supervise())
    try:
        for _ in range(600):  # until LIVE (a condition, polled)
            if await envoy.live():
                break
            await asyncio.sleep(0.05)
        envoy.listeners_changed()  # as the relay says after an LDS ACK
        for _ in range(200):
            if envoy.listen_sockets.held:
                break
            await asyncio.sleep(0.05)
        assert envoy.listen_sockets.addresses() == [f"127.0.0.1:{port}"]
        old = envoy.process
        os.kill(old.pid, signal.SIGKILL)
        await old.wait()
        # No Envoy, or the new one starting: not refused, and answered by the new one.
        assert await asyncio.to_thread(_get, port) == b"ok"
        assert envoy.process is not old and envoy.epoch == 1
        await asyncio.wait_for(envoy.stand_in.terminated.wait(), 30)  # Envoy's Terminate: handover done
        assert envoy.stand_in.passed and set(envoy.stand_in.passed) == {f"tcp://127.0.0.1:{port}"}
        assert envoy.process.returncode is None and await envoy.serving_epoch() == 1
        assert await asyncio.to_thread(_get, port) == b"ok"
    finally:
        await envoy.stop()
        await supervising


async def test_a_new_envoy_that_did_not_ask_for_the_kept_sockets_gets_no_connection_stuck(
    tmp_path, monkeypatch, caplog
):
    """Should the new Envoy not find the agent as its parent (here: the agent binds a name Envoy
    does not look for) it starts afresh with sockets of its own, which join the kept ones' port
    (SO_REUSEPORT): the agent lets the kept ones go, so no connection waits in a backlog nobody
    accepts from, and every request is answered."""
    from lattice.agent import hot_parent
    from lattice.agent.envoy import EnvoyProcess

    real = hot_parent.domain_socket_name
    monkeypatch.setattr(
        hot_parent,
        "domain_socket_name",
        lambda path, role, *a: real(path, "elsewhere" if role == "parent" else role, *a),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bootstrap, admin = tmp_path / "envoy.json", tmp_path / "admin.sock"
    bootstrap.write_text(json.dumps(_direct_response_bootstrap(admin, port)))
    envoy = EnvoyProcess(bootstrap, admin, tmp_path / "envoy.log")
    supervising = asyncio.create_task(envoy.supervise())
    try:
        for _ in range(600):
            if await envoy.live():
                break
            await asyncio.sleep(0.05)
        envoy.listeners_changed()
        for _ in range(200):
            if envoy.listen_sockets.held:
                break
            await asyncio.sleep(0.05)
        old = envoy.process
        kept = set(envoy.listen_sockets.held)
        os.kill(old.pid, signal.SIGKILL)
        await old.wait()
        for _ in range(600):
            if "letting them go" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "started without the listening sockets the agent kept" in caplog.text
        assert not envoy.stand_in.contacted and not envoy.stand_in.serving
        assert not kept & set(envoy.listen_sockets.held)  # the dead Envoy's are let go
        for _ in range(20):  # each a new connection: none lands in a socket nobody accepts from
            assert await asyncio.to_thread(_get, port) == b"ok"
    finally:
        await envoy.stop()
        await supervising
