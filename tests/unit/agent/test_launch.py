"""`lattice run` becomes the agent: its options cross into a fresh interpreter whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import LATTICE
from lattice.agent.options import RunOptions
from lattice.agent.registration import Upstream


def test_every_option_crosses_into_the_agent_process_unchanged():
    options = RunOptions(
        service="reviews",
        port=9080,
        server="https://127.0.0.1:15012",
        token="lt1.a.b.c",
        command=["python", "-m", "app", "--flag", "with space"],
        labels={"app": "reviews", "tier": "back"},
        upstreams=[Upstream(service="ratings", namespace="default", port=9080, local_port=19080)],
        stats_inclusion=(("cluster.outbound",), (), (r"^http\..*rq_total$",)),
        capture=True,
        netns="ns-1",
        drain_timeout=2.5,
    )
    assert RunOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


def test_the_agent_process_started_by_hand_says_what_to_run_instead():
    done = subprocess.run([sys.executable, "-m", "lattice.agent"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "lattice run" in done.stderr


def test_a_temporary_directory_too_deep_for_the_agents_sockets_is_named_with_what_to_do(tmp_path):
    deep = tmp_path / ("d" * max(1, 80 - len(str(tmp_path))))  # more than the 72 bytes a run directory's base may have
    deep.mkdir()
    done = subprocess.run(
        [LATTICE, "run", "--service", "web", "--port", "8080"] + ["--server", "https://127.0.0.1:9", "--", "true"],
        env=os.environ | {"TMPDIR": str(deep)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"the temporary directory {deep} is too deep" in done.stderr and "set TMPDIR" in done.stderr
    assert list(deep.iterdir()) == []  # no run directory left behind
