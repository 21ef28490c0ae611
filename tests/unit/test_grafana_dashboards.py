"""grafana/*.json: every dashboard loads, every panel asks something, and every metric and label
it asks for is one Lattice exports (Istio's standard data-plane metrics, the control plane's own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lattice.server.metrics import ControlPlaneMetrics, exported_series
from promql import labels_used, metrics_used, panels, queries, selectors, undefined_variables, variable_queries

GRAFANA = Path(__file__).parents[2] / "grafana"
DATA_PLANE = ("mesh.json", "service.json", "workload.json")
CONTROL_PLANE = "control-plane.json"
# Istio's standard metrics and labels: https://istio.io/latest/docs/reference/config/metrics/
ISTIO_COUNTERS = {
    "istio_requests_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
}
ISTIO_HISTOGRAMS = {"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"}
ISTIO_METRICS = ISTIO_COUNTERS | {f"{h}_{part}" for h in ISTIO_HISTOGRAMS for part in ("bucket", "sum", "count")}
ISTIO_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}
TCP_METRICS = {m for m in ISTIO_COUNTERS if m.startswith("istio_tcp_")}


def _load(name: str) -> dict:
    return json.loads((GRAFANA / name).read_text())


def test_the_dashboards_are_there():
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted([*DATA_PLANE, CONTROL_PLANE])
    assert (GRAFANA / "README.md").exists()


@pytest.mark.parametrize("name", [*DATA_PLANE, CONTROL_PLANE])
def test_dashboard_is_importable_with_a_datasource_variable(name):
    board = _load(name)
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"].startswith("Lattice / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets") and all(t.get("expr") for t in panel["targets"]), f"{panel['title']} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    assert not undefined_variables(board)


@pytest.mark.parametrize("name", DATA_PLANE)
def test_data_plane_queries_use_only_istio_standard_metrics_and_labels(name):
    board = _load(name)
    asked = queries(board) + [selector for selector, _ in variable_queries(board) if selector]
    for expr in asked:
        assert metrics_used(expr) <= ISTIO_METRICS, (expr, metrics_used(expr) - ISTIO_METRICS)
        assert labels_used(expr) <= ISTIO_LABELS | {"le"}, (expr, labels_used(expr) - ISTIO_LABELS)
        assert all(metric is not None for metric, _ in selectors(expr)), expr
    assert {label for _, label in variable_queries(board)} <= ISTIO_LABELS


@pytest.mark.parametrize("name", DATA_PLANE)
def test_data_plane_queries_ask_each_metric_only_for_labels_it_has(name):
    # Istio's TCP metrics carry no response code; `le` belongs to a histogram's buckets only.
    for expr in queries(_load(name)):
        for metric, labels in selectors(expr):
            if metric in TCP_METRICS:
                assert not labels & {"response_code", "grpc_response_status"}, expr
            if not metric.endswith("_bucket"):
                assert "le" not in labels, expr
        if "histogram_quantile" in expr:
            assert "le" in labels_used(expr) and all(m.endswith("_bucket") for m in metrics_used(expr)), expr


@pytest.mark.parametrize("name", DATA_PLANE)
def test_data_plane_requests_say_whose_view_they_are(name):
    # Every request is counted twice, by the source's sidecar and the destination's: a query that
    # does not pick a reporter counts it twice.
    for expr in queries(_load(name)):
        for _metric, labels in selectors(expr):
            assert "reporter" in labels, expr


def test_control_plane_queries_use_exported_metrics_and_their_labels():
    exported = exported_series()
    asked = queries(_load(CONTROL_PLANE))
    for expr in asked:
        for metric, labels in selectors(expr):
            assert metric in exported, f"{metric} is not exported by lattice/server/metrics.py: {expr}"
            assert labels <= set(exported[metric]), (expr, labels - set(exported[metric]))
        names = {name for metric in metrics_used(expr) for name in exported[metric]}
        assert labels_used(expr) <= names, (expr, labels_used(expr) - names)
    shown = {m for expr in asked for m in metrics_used(expr)}
    unshown = [
        f for f in ControlPlaneMetrics().registry.names() if not shown & {f, f"{f}_bucket", f"{f}_sum", f"{f}_count"}
    ]
    assert not unshown, f"exported but on no panel: {unshown}"
