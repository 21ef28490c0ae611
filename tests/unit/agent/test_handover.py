"""The in-place upgrade's handover (agent/handover.py): what the next agent reads, and children it
adopts from the previous one (real processes; the re-exec itself is tested end to end in
tests/integration/test_envoy_restart.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from lattice.agent import handover
from lattice.agent.handover import AdoptedProcess, Handover


def _state(tmp_path) -> Handover:
    return Handover(
        run_dir=str(tmp_path),
        generation=0,
        registration={"id": "web-v1-abc123.default"},
        placed=("127.0.10.7", ""),
        lease_address="127.0.10.7",
        lease_fd=None,
        app_pid=123,
        app_healthy=True,
        envoy_pid=456,
        envoy_epoch=2,
        envoy_base_id=17,
        config=Handover.encode({"t": discovery_pb2.DiscoveryResponse(version_info="v9", type_url="t")}),
    )


def test_the_next_agent_reads_what_the_previous_one_left_and_ignores_what_it_does_not_know(tmp_path, monkeypatch):
    state = _state(tmp_path)
    path = tmp_path / handover.FILE
    path.write_text(json.dumps({**handover.asdict(state), "added_later": 1}))
    monkeypatch.setenv(handover.ENV, str(path))
    got = handover.incoming()
    assert got == state and got.decoded_config()["t"].version_info == "v9"
    assert not path.exists() and handover.ENV not in os.environ  # read once; the app never sees it


def test_a_broken_handover_is_named(tmp_path, monkeypatch):
    path = tmp_path / handover.FILE
    path.write_text("{not json")
    monkeypatch.setenv(handover.ENV, str(path))
    with pytest.raises(RuntimeError, match=f"cannot read the previous agent's handover {path}"):
        handover.incoming()


def test_no_handover_on_a_first_start(monkeypatch):
    monkeypatch.delenv(handover.ENV, raising=False)
    assert handover.incoming() is None


def _child(code: str, exited: bool = False) -> subprocess.Popen:
    """A real child; with `exited`, returned once it has exited but is not reaped (a zombie)."""
    child = subprocess.Popen([sys.executable, "-c", code])
    if exited:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


async def test_an_adopted_child_is_signalled_and_its_exit_status_read():
    child = _child("import time; time.sleep(60)")
    adopted = AdoptedProcess(child.pid)
    assert adopted.returncode is None
    adopted.terminate()
    assert await adopted.wait() == -signal.SIGTERM and adopted.returncode == -signal.SIGTERM
    child.returncode = adopted.returncode  # reaped by the adopter: Popen must not wait for it again


async def test_an_adopted_child_that_already_exited_reports_its_code():
    child = _child("raise SystemExit(3)", exited=True)
    assert await AdoptedProcess(child.pid).wait() == 3
    child.returncode = 3


def test_the_registration_comes_back_as_the_agent_built_it():
    from lattice.agent.registration import Registration, Upstream

    built = Registration(
        id="gw-abc123.istio-system",
        name="gw",
        service="istio-gw",
        service_account="istio-gw",
        address="127.0.10.9",
        port=8080,
        app_port=8080,
        outbound_port=15001,
        agent_port=15020,
        upstreams=[Upstream("web", "default", 9080, 19080)],
        listen={80: 8080},
    )
    assert handover.registration_from(json.loads(json.dumps(built.dump()))) == built


def test_the_options_flag_is_the_one_launch_reads():
    from lattice.agent import launch

    assert handover.OPTIONS_FD == launch.OPTIONS_FD
