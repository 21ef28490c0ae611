"""Which Envoy stats a sidecar keeps: Istio's short default list, and what a workload asks for."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from lattice.agent.bootstrap import bootstrap, stats_matcher


def patterns(config: dict) -> list[dict]:
    return config["stats_matcher"]["inclusion_list"]["patterns"]


def test_the_default_list_is_istios_plus_lattices_own_series():
    default = patterns(stats_matcher())
    assert {"prefix": "lattice."} in default and {"prefix": "server"} in default
    assert {"suffix": "shadow_denied"} in default
    assert not [p for p in default if p.get("prefix", "").startswith("cluster.outbound")]
    # Of the inbound listener's many series, the request counts `lattice demo` reads, and the open
    # requests to the app a stopping sidecar waits for (agent/drain.py) — which Envoy would
    # otherwise not even count.
    regexps = [re.compile(p["safe_regex"]["regex"]) for p in default if "safe_regex" in p]
    kept = [
        "http.inbound_0.0.0.0_9080.downstream_rq_total",
        "http.inbound_0.0.0.0_9080.downstream_rq_5xx",
        "cluster.inbound|9080||.upstream_rq_active",
        "cluster.inbound|9000||.upstream_cx_active",
    ]
    assert all(any(r.search(name) for r in regexps) for name in kept)
    dropped = ["http.inbound_0.0.0.0_9080.downstream_cx_length_ms", "cluster.outbound|9080||reviews.upstream_rq_active"]
    assert not [name for name in dropped if any(r.search(name) for r in regexps)]


def test_a_workload_asks_for_more_and_envoy_takes_the_bootstrap(tmp_path):
    config = stats_matcher(("cluster.outbound",), ("update_time",), (r"^http\..*rq_total$",))
    asked = patterns(config)
    assert {"prefix": "cluster.outbound"} in asked and {"suffix": "update_time"} in asked
    assert {"safe_regex": {"regex": r"^http\..*rq_total$"}} in asked
    sockets = [tmp_path / f"{name}.sock" for name in ("admin", "xds", "sds", "telemetry")]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap("n", "c", {}, *sockets, config)))
    envoy = str(Path(sys.executable).parent / "envoy")
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
