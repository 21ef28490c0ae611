"""A root with a short life rotates itself under traffic (server/ca_duty.py): warned of first, in
`lattice status` and in the `citadel_server_cert_expiry_warnings` metric, then rotated the way
`lattice ca rotate-root` rotates it, with no failed request."""

from __future__ import annotations

import re
import time

import pytest

from harness import ControlPlane, http, start_all, wait_for
from test_rotation import STRICT, Traffic, served_certificate

pytestmark = pytest.mark.slow


def _root_warning_metric(plane: ControlPlane) -> int:
    text = http("GET", f"{plane.api}/metrics")[2].decode()
    found = re.search(r'^citadel_server_cert_expiry_warnings\{kind="root"\} (\d+)', text, re.M)
    return int(found.group(1)) if found else 0


def test_a_short_lived_root_rotates_itself_under_traffic_after_a_warning(tmp_path):
    # Warned of from 40% of its life (24 s), rotated from 50% (30 s).
    plane = ControlPlane(tmp_path / "home", "--root-lifetime", "60s", "--root-rotate-at", "0.5").start()
    started = []
    try:
        plane.apply(STRICT)
        client, server = started = start_all(plane, [("productpage", "v1"), ("ratings", "v1")])
        first_root = plane.get("/api/v1/ca")["roots"][0]["fingerprint"]
        first_issuer = served_certificate(server.address)["issuer"]
        events: dict[str, float] = {}
        table = ""
        with Traffic(client) as traffic:

            def watch() -> bool:
                nonlocal table
                now = time.monotonic()
                if "root" in [w["kind"] for w in plane.status()["server"]["expiry_warnings"]]:
                    if "status warns" not in events:
                        events["status warns"] = now
                        table = plane.cli("status").stdout
                if _root_warning_metric(plane):
                    events.setdefault("metric warns", now)
                ca = plane.get("/api/v1/ca")
                if ca["rotation"] != "none":
                    events.setdefault("rotating", now)
                signing = next(r["fingerprint"] for r in ca["roots"] if r["signing"])
                return ca["rotation"] == "none" and signing != first_root and len(ca["roots"]) == 1

            wait_for(watch, 90, interval=0.2, what="the root to rotate itself")
        assert events["status warns"] < events["rotating"] and events["metric warns"] < events["rotating"], events
        assert "WARNING root" in table and "the root expires in" in table, table
        assert len(traffic.codes) > 300
        assert traffic.failed == [], f"{len(traffic.failed)} of {len(traffic.codes)} requests failed"
        # The sidecar presents a certificate from the new root, not the first one.
        assert served_certificate(server.address)["issuer"] != first_issuer
    finally:
        for w in reversed(started):
            w.stop()
        plane.stop()
