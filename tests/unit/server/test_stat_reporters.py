"""`lattice stat` from both sides: what a workload's sidecar served, and what its callers saw."""

from __future__ import annotations

from lattice.mesh import Workload
from lattice.server.observe import stat


def _w(name: str, service: str) -> Workload:
    return Workload(
        id=f"{name}-1.default",
        name=name,
        namespace="default",
        service=service,
        service_account=service,
        labels={"app": service},
        address="127.0.10.2",
        port=9080,
        app_port=3000,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
    )


def _row(reporter: str, peer: str, service: str, requests: int, failures: int) -> dict:
    return {
        "reporter": reporter,
        "peer_workload": peer,
        "peer_namespace": "default" if peer != "unknown" else "unknown",
        "peer_principal": "unknown",
        "service": service,
        "mtls": True,
        "requests": requests,
        "failures": failures,
        "latency": {"20": requests},
        "tcp_opened": 0,
        "tcp_bytes": 0,
    }


HOST = "backend.default.svc.cluster.local"
SUMMARIES = [
    # The caller saw 10 requests reach backend-v1 (1 failed there) and 5 refused by its circuit breaker.
    (
        _w("client-v1", "client"),
        {"peers": [_row("source", "backend-v1", HOST, 10, 1), _row("source", "unknown", HOST, 5, 5)]},
    ),
    (_w("backend-v1", "backend"), {"peers": [_row("destination", "client-v1", HOST, 10, 1)]}),
]


def test_by_workload_the_callers_view_is_what_reached_the_workload():
    (row,) = stat(SUMMARIES, 10, name="backend")
    assert (row["requests"], row["success_rate"]) == (10, 0.9)
    assert (row["client"]["requests"], row["client"]["success_rate"], row["client"]["rps"]) == (10, 0.9, 1.0)


def test_by_service_the_callers_view_counts_what_never_arrived():
    (row,) = stat(SUMMARIES, 10, name="backend", by="service")
    assert row["success_rate"] == 0.9
    assert (row["client"]["requests"], row["client"]["success_rate"]) == (15, 0.6)
    assert stat(SUMMARIES, 10, name="backend", by="service", caller="someone-else")[0]["client"]["requests"] == 0
