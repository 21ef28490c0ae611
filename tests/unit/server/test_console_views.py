"""The console's service and workload pages: sync state in one word, charts merged per step, each
side of a sidecar's traffic, and the config that applies to a service's workloads."""

from __future__ import annotations

from lattice.api import parse_documents
from lattice.mesh.analyze import snapshot_of
from lattice.server import console_views as views

from test_stat_reporters import _row, _w


def test_sync_state_is_nack_over_stale_over_synced():
    synced = {"Cluster": {"state": "SYNCED"}, "Listener": {"state": "SYNCED"}}
    assert views.sync_state(synced) == "SYNCED"
    assert views.sync_state(synced | {"Listener": {"state": "STALE"}}) == "STALE"
    assert views.sync_state(synced | {"Listener": {"state": "NOT SENT"}}) == "STALE"
    assert views.sync_state({"Cluster": {"state": "STALE"}, "Listener": {"state": "NACKED"}}) == "NACK"


def test_a_chart_point_per_step_merges_the_services_sidecars_as_stat_does():
    v1, v2 = _w("backend-v1", "backend"), _w("backend-v2", "backend")
    steps = lambda *counts: [  # noqa: E731
        {"start": 100 + 5 * i, "peers": [_row("destination", "client-v1", "backend", n, n // 5)]}
        for i, n in enumerate(counts)
    ]
    points = views.chart([(v1, steps(10, 20)), (v2, steps(0, 30))], 5, "backend", "default", "service")
    assert [p["start"] for p in points] == [100, 105]
    assert [p["rps"] for p in points] == [2.0, 10.0]
    assert points[1]["success_rate"] == 0.8 and points[1]["p99_ms"] is not None


def test_traffic_splits_what_a_sidecar_served_from_what_it_called():
    summary = {
        "peers": [
            _row("destination", "client-v1", "backend", 40, 4),
            _row("source", "unknown", "db.default.svc.cluster.local", 10, 0),
            _row("source", "ratings-v1", "ratings", 0, 0),
        ]
    }
    t = views.traffic(summary, 10)
    assert t["inbound"]["total"]["rps"] == 4.0 and t["inbound"]["peers"][0]["success_rate"] == 0.9
    assert [p["peer"] for p in t["outbound"]["peers"]] == ["db.default.svc.cluster.local"]  # idle rows left out


def test_the_config_that_applies_names_routes_and_policies_with_the_workloads_they_select():
    resources = parse_documents(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec: {hosts: [backend], http: [{route: [{destination: {host: backend}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-v2}
spec: {selector: {matchLabels: {version: v2}}, action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other}
spec: {selector: {matchLabels: {app: other}}, action: DENY, rules: [{}]}
""",
        "test",
    )
    v1, v2 = _w("backend-v1", "backend"), _w("backend-v2", "backend")
    v2 = type(v2)(**{**v2.__dict__, "id": "backend-v2-1.default", "labels": {"app": "backend", "version": "v2"}})
    found = views.applies_to(snapshot_of(resources, workloads=(v1, v2)), [v1, v2])
    assert [(f["kind"], f["name"], f["workloads"]) for f in found] == [
        ("AuthorizationPolicy", "only-v2", ["backend-v2"]),
        ("VirtualService", "backend", ["backend-v1", "backend-v2"]),
    ]


def test_reach_says_who_may_call_whom_as_authz_check_decides_it():
    resources = parse_documents(
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-client}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
""",
        "test",
    )
    client, backend = _w("client-v1", "client"), _w("backend-v1", "backend")
    backend = type(backend)(**{**backend.__dict__, "address": "127.0.10.3"})
    reach = views.reach(snapshot_of(resources, workloads=(client, backend)))
    table = {(r["source"], c["destination"]): c["decision"] for r in reach["rows"] for c in r["cells"]}
    assert table == {
        ("anonymous", "backend"): "DENY",
        ("anonymous", "client"): "ALLOW",
        ("backend", "backend"): "DENY",
        ("backend", "client"): "ALLOW",
        ("client", "backend"): "ALLOW",
        ("client", "client"): "ALLOW",
    }


def test_config_lists_each_resource_with_its_warnings_and_the_workloads_it_decides():
    from lattice.api import KINDS
    from lattice.store.model import StoredResource

    resources = parse_documents(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec: {hosts: [backend], http: [{route: [{destination: {host: backend}, weight: 80}]}]}
""",
        "test",
    )
    stored = [StoredResource("VirtualService", "default", "backend", "networking.istio.io/v1", {}, {}, 3, 0, 0)]
    page = views.config(snapshot_of(resources, workloads=(_w("backend-v1", "backend"),)), stored, KINDS)
    (item,) = page["items"]
    assert item["decides"] == ["backend-v1"] and "weight 80" in item["findings"][0]["message"]


def test_a_waterfall_puts_sidecar_records_and_spans_on_one_axis():
    record = {
        "proxy": "client-v1",
        "reporter": "source",
        "method": "GET",
        "authority": "backend:9080",
        "path": "/",
        "time": 100.0,
        "duration_ms": 20.0,
        "status": 502,
        "flags": "-",
    }
    inner = record | {"proxy": "backend-v1", "reporter": "destination", "time": 100.005, "duration_ms": 10.0}
    span = {
        "service": "backend.default",
        "kind": "SERVER",
        "name": "backend:9080/*",
        "start_unix_nano": 100_004_000_000,
        "duration_ms": 12.0,
        "http": {"status_code": "502"},
        "error": True,
        "span_id": "b",
        "parent_span_id": "a",
    }
    w = views.waterfall("id", [inner, record], {"trace_id": "t", "spans": [span]})
    assert [(r["proxy"], r["source"], r["offset_ms"]) for r in w["rows"]] == [
        ("client-v1", "sidecar", 0.0),
        ("backend.default", "trace", 4.0),
        ("backend-v1", "sidecar", 5.0),
    ]
    assert w["total_ms"] == 20.0 and w["rows"][1]["status"] == 502 and w["rows"][2]["side"] == "inbound"


def test_a_request_id_matches_whatever_envoy_wrote_in_its_version_digit():
    sent = "c15fc532-fe68-4b1e-81ef-6538d063518a"
    assert views.same_request(sent, "C15FC532-FE68-9b1e-81ef-6538d063518a")
    assert not views.same_request(sent, "c15fc532-fe68-4b1e-81ef-6538d063518b")
    assert views.same_request("plain-id", "plain-id") and not views.same_request("plain-id", "plain-ie")
