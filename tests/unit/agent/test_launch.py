"""`lattice run` becomes the agent: its options cross into a fresh interpreter whole."""

from __future__ import annotations

import json
import subprocess
import sys

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
