"""xDS events into the control plane's metrics: pushes, NACKs and convergence (change -> full ACK)."""

from __future__ import annotations

from lattice.server.metrics import ControlPlaneMetrics
from lattice.translate import CLUSTER, LISTENER, ROUTE
from lattice.xds import StatusBoard

NODE = "web-v1-000001.default"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup():
    clock, metrics = Clock(), ControlPlaneMetrics()
    board = StatusBoard(clock, events=metrics)
    board.connected(NODE, "sotw")
    return clock, metrics, board


def _lines(metrics: ControlPlaneMetrics, prefix: str) -> list[str]:
    return [line for line in metrics.render().splitlines() if line.startswith(prefix)]


def test_convergence_is_observed_once_the_proxy_acks_everything_sent_from_the_snapshot():
    clock, metrics, board = _setup()
    metrics.pushed("5.1", changed_at=1001.0, seconds=0.02)
    clock.now = 1001.5
    board.sent(NODE, CLUSTER, "c1", "5.1", 100)
    board.sent(NODE, ROUTE, "r1", "5.1", 40)
    board.acked(NODE, CLUSTER, "c1")
    assert metrics.convergence.labels().count == 0  # routes not ACKed yet
    clock.now = 1003.5
    board.acked(NODE, ROUTE, "r1")
    board.acked(NODE, ROUTE, "r1")  # a repeated ACK converges nothing new
    assert (metrics.convergence.labels().count, metrics.convergence.labels().sum) == (1, 2.5)
    assert _lines(metrics, "pilot_proxy_convergence_time_bucket")[3] == 'pilot_proxy_convergence_time_bucket{le="3"} 1'
    assert _lines(metrics, "pilot_xds_pushes") == [
        'pilot_xds_pushes{type="cds"} 1',
        'pilot_xds_pushes{type="eds"} 0',
        'pilot_xds_pushes{type="lds"} 0',
        'pilot_xds_pushes{type="rds"} 1',
    ]
    assert _lines(metrics, "pilot_xds_config_size_bytes_sum") == [
        'pilot_xds_config_size_bytes_sum{type="cds"} 100',
        'pilot_xds_config_size_bytes_sum{type="rds"} 40',
    ]
    assert _lines(metrics, "pilot_xds_push_time_count") == ["pilot_xds_push_time_count 1"]


def test_a_nack_counts_as_a_reject_and_holds_convergence_back():
    clock, metrics, board = _setup()
    metrics.pushed("6.1", changed_at=1000.5, seconds=0.01)
    board.sent(NODE, LISTENER, "l1", "6.1")
    board.nacked(NODE, LISTENER, "l1", "bad listener")
    assert metrics.convergence.labels().count == 0
    assert _lines(metrics, "pilot_total_xds_rejects") == [
        'pilot_total_xds_rejects{type="cds"} 0',
        'pilot_total_xds_rejects{type="eds"} 0',
        'pilot_total_xds_rejects{type="lds"} 1',
        'pilot_total_xds_rejects{type="rds"} 0',
    ]
    metrics.pushed("7.1", changed_at=1002.0, seconds=0.01)
    clock.now = 1002.25
    board.sent(NODE, LISTENER, "l2", "7.1")
    board.acked(NODE, LISTENER, "l2")
    assert (metrics.convergence.labels().count, metrics.convergence.labels().sum) == (1, 0.25)


def test_a_proxy_connecting_after_the_change_is_catching_up_not_converging():
    clock, metrics, board = _setup()
    metrics.pushed("8.1", changed_at=999.0, seconds=0.01)  # before the proxy connected at 1000
    board.sent(NODE, CLUSTER, "c1", "8.1")
    board.acked(NODE, CLUSTER, "c1")
    metrics.pushed("9.1", changed_at=None, seconds=0.01)  # a push nothing asked for
    board.sent(NODE, CLUSTER, "c2", "9.1")
    board.acked(NODE, CLUSTER, "c2")
    assert metrics.convergence.labels().count == 0


def test_reject_gauges_count_connected_proxies_whose_last_answer_is_a_nack():
    class Ads:  # the ADS server's part of a scrape, without a gRPC server
        def stats(self):
            return {"connected_proxies": 1}

    _, metrics, board = _setup()
    metrics.read_state(Ads(), board)
    board.sent(NODE, ROUTE, "r1", "1.1")
    board.nacked(NODE, ROUTE, "r1", "no")
    assert "pilot_xds_rds_reject 1" in metrics.render().splitlines()
    assert "pilot_xds 1" in metrics.render().splitlines()
    board.disconnected(NODE)
    assert "pilot_xds_rds_reject 0" in metrics.render().splitlines()


def test_api_methods_outside_the_standard_ones_share_one_label_value():
    metrics = ControlPlaneMetrics()
    metrics.api_request("BREW", "unmatched", 405, 0.001)
    metrics.api_request("GET", "/api/v1/resources/{kind}", 200, 0.002)
    assert _lines(metrics, "lattice_api_requests_total") == [
        'lattice_api_requests_total{method="OTHER",route="unmatched",code="405"} 1',
        'lattice_api_requests_total{method="GET",route="/api/v1/resources/{kind}",code="200"} 1',
    ]
