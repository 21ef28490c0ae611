"""Endpoint changes reach a sidecar as a delta: the control plane sends the agent's relay only the
ClusterLoadAssignment that changed, the relay gives its Envoy the whole merged view, and the app's
requests reach the new endpoint. Real control plane, real sidecars (agent + Envoy)."""

from __future__ import annotations

import pytest

from harness import Workload, served_by, start_all, wait_for

pytestmark = pytest.mark.slow
REVIEWS = "http://reviews:9080/reviews/0"
EDS = "ClusterLoadAssignment"


def _envoy_assignments(plane, w: Workload) -> list[str]:
    """The clusters whose endpoints the sidecar's Envoy holds (its config dump, through the
    control plane as `lattice proxy-config` reads it)."""
    query = "resource=dynamic_endpoint_configs&include_eds=true"
    status, body = plane.call("GET", f"/api/v1/proxies/{w.id}/config_dump?{query}")
    assert status == 200, body
    return [c["endpoint_config"]["cluster_name"] for c in body.get("configs", [])]


def test_a_new_endpoint_reaches_the_sidecar_as_one_assignment_and_gets_traffic(plane):
    ws = start_all(plane, [("productpage", "v1"), ("reviews", "v1"), ("ratings", "v1")])
    client = ws[0]
    try:
        before = plane.proxy(client.id)
        assert before["xds"] == "delta"  # the relay speaks delta ADS to the control plane
        held = wait_for(lambda: len(_envoy_assignments(plane, client)) >= 3 and _envoy_assignments(plane, client), 10)
        sent = before["types"][EDS]["sent_in_all"]
        assert served_by(client, REVIEWS, 3) == {"reviews-v1": 3}

        ws.append(Workload(plane, "reviews", "v3").start())
        wait_for(lambda: "reviews-v3" in served_by(client, REVIEWS, 4), 10, what="requests to reach reviews v3")
        wait_for(lambda: plane.all_synced([client.id]), 10, what="the client to ACK the change")

        after = plane.proxy(client.id)["types"][EDS]["sent_in_all"]
        responses, resources = after["responses"] - sent["responses"], after["resources"] - sent["resources"]
        # Every endpoint push since carried one assignment (reviews'), not the sidecar's every one.
        assert responses >= 1 and resources == responses, (sent, after)
        assert len(_envoy_assignments(plane, client)) == len(held)  # and Envoy still holds them all
        assert plane.proxy(client.id)["types"][EDS]["state"] == "SYNCED"
    finally:
        for w in reversed(ws):
            w.stop()
