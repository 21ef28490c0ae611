"""The Prometheus service-discovery answer and the control plane's build and process metrics."""

from __future__ import annotations

from lattice.mesh import Workload
from lattice.server.discovery import targets
from lattice.server.metrics import ControlPlaneMetrics


def _workload(name: str, version: str, kind: str = "sidecar") -> Workload:
    return Workload(
        id=f"{name}-x1.shop",
        name=name,
        namespace="shop",
        service="reviews",
        service_account="reviews",
        labels={"app": "reviews", "version": version},
        address="127.0.10.4",
        port=9080,
        app_port=3000,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
        kind=kind,
    )


def test_every_proxy_and_the_control_plane_are_targets_with_their_labels():
    groups = targets((_workload("reviews-v2", "v2"),), "10.0.0.1:15080", "istio-system")
    assert groups[0] == {
        "targets": ["10.0.0.1:15080"],
        "labels": groups[0]["labels"] | {"__metrics_path__": "/metrics", "workload": "lattice-server"},
    }
    assert groups[1]["targets"] == ["127.0.10.4:15020"]
    assert {
        "__metrics_path__": "/stats/prometheus",
        "namespace": "shop",
        "workload": "reviews-v2",
        "app": "reviews",
        "version": "v2",
        "role": "sidecar",
    }.items() <= groups[1]["labels"].items()


def test_build_process_and_zero_counters_are_there_before_any_event():
    text = ControlPlaneMetrics().render()
    lines = {line.split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for series in (
        'pilot_push_triggers{type="config"}',
        'pilot_push_triggers{type="endpoint"}',
        "pilot_total_xds_internal_errors",
        'pilot_total_xds_rejects{type="lds"}',
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ):
        assert series in lines, series
    assert any(line.startswith('istio_build{component="pilot",tag="') for line in lines)
    assert "# TYPE process_cpu_seconds_total counter" in text
