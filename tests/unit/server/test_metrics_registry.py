"""The metrics registry's Prometheus text (format 0.0.4): exact output for each metric type."""

from __future__ import annotations

import math
import threading

import pytest

from lattice.server.metrics import ControlPlaneMetrics, MetricRegistry, exported_series, format_value


def test_unlabeled_counter_is_written_from_the_start_at_zero():
    r = MetricRegistry()
    c = r.counter("jobs_done", "Jobs done.")
    assert r.render() == "# HELP jobs_done Jobs done.\n# TYPE jobs_done counter\njobs_done 0\n"
    c.inc()
    c.inc(2.5)
    assert r.render().splitlines()[-1] == "jobs_done 3.5"


def test_labeled_counter_writes_one_line_per_label_set_in_first_use_order():
    r = MetricRegistry()
    c = r.counter("pilot_xds_pushes", "Pushes.", ["type"])
    assert r.render() == "# HELP pilot_xds_pushes Pushes.\n# TYPE pilot_xds_pushes counter\n"
    c.labels("rds").inc()
    c.labels("cds").inc(3)
    c.labels("rds").inc()
    assert r.render() == (
        "# HELP pilot_xds_pushes Pushes.\n"
        "# TYPE pilot_xds_pushes counter\n"
        'pilot_xds_pushes{type="rds"} 2\n'
        'pilot_xds_pushes{type="cds"} 3\n'
    )


def test_label_values_are_strings_so_200_and_the_int_200_are_one_series():
    r = MetricRegistry()
    c = r.counter("requests_total", "Requests.", ["method", "code"])
    c.labels("GET", 200).inc()
    c.labels("GET", "200").inc()
    assert 'requests_total{method="GET",code="200"} 2' in r.render().splitlines()


def test_a_counter_only_goes_up():
    c = MetricRegistry().counter("c", "C.")
    with pytest.raises(ValueError):
        c.inc(-1)


def test_gauge_set_inc_dec():
    r = MetricRegistry()
    g = r.gauge("queue_depth", "Depth.", ["queue"])
    g.labels("a").set(7)
    g.labels("a").inc(2)
    g.labels("a").dec(0.5)
    assert r.render() == '# HELP queue_depth Depth.\n# TYPE queue_depth gauge\nqueue_depth{queue="a"} 8.5\n'


def test_collected_gauge_is_read_at_scrape_time():
    r = MetricRegistry()
    connected = [3]
    r.gauge("pilot_xds", "Connected proxies.", collect=lambda: connected[0])
    r.gauge("workloads", "By health.", ["healthy"], collect=lambda: {("true",): 2, ("false",): 0})
    connected[0] = 4
    assert r.render() == (
        "# HELP pilot_xds Connected proxies.\n# TYPE pilot_xds gauge\npilot_xds 4\n"
        '# HELP workloads By health.\n# TYPE workloads gauge\nworkloads{healthy="true"} '
        '2\nworkloads{healthy="false"} 0\n'
    )


def test_a_failing_collector_leaves_its_metric_empty_and_the_scrape_whole():
    r = MetricRegistry()
    r.gauge("broken", "Broken.", collect=lambda: 1 / 0)
    r.counter("fine", "Fine.").inc()
    assert r.render() == "# HELP broken Broken.\n# TYPE broken gauge\n# HELP fine Fine.\n# TYPE fine counter\nfine 1\n"


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    r = MetricRegistry()
    h = r.histogram("latency_seconds", "Latency.", [0.1, 1, 5])
    for value in (0.05, 0.1, 0.5, 1, 2, 10):  # a value equal to a bound falls in that bound's bucket
        h.observe(value)
    assert r.render() == (
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 2\n'
        'latency_seconds_bucket{le="1"} 4\n'
        'latency_seconds_bucket{le="5"} 5\n'
        'latency_seconds_bucket{le="+Inf"} 6\n'
        "latency_seconds_sum 13.65\n"
        "latency_seconds_count 6\n"
    )


def test_labeled_histogram_puts_le_after_its_labels():
    r = MetricRegistry()
    h = r.histogram("size_bytes", "Size.", [10], ["type"])
    h.labels("lds").observe(3)
    h.labels("lds").observe(30)
    assert r.render() == (
        "# HELP size_bytes Size.\n"
        "# TYPE size_bytes histogram\n"
        'size_bytes_bucket{type="lds",le="10"} 1\n'
        'size_bytes_bucket{type="lds",le="+Inf"} 2\n'
        'size_bytes_sum{type="lds"} 33\n'
        'size_bytes_count{type="lds"} 2\n'
    )


def test_empty_unlabeled_histogram_writes_zero_buckets():
    r = MetricRegistry()
    r.histogram("push_seconds", "Push.", [1])
    assert r.render().splitlines()[2:] == [
        'push_seconds_bucket{le="1"} 0',
        'push_seconds_bucket{le="+Inf"} 0',
        "push_seconds_sum 0",
        "push_seconds_count 0",
    ]


def test_label_values_and_help_are_escaped():
    r = MetricRegistry()
    c = r.counter("odd", 'Help with a \\ backslash\nand a "quote".', ["path"])
    c.labels('a"b\\c\nd').inc()
    assert r.render() == (
        '# HELP odd Help with a \\\\ backslash\\nand a "quote".\n# TYPE odd counter\nodd{path="a\\"b\\\\c\\nd"} 1\n'
    )


def test_values_are_written_as_prometheus_reads_them():
    assert [format_value(v) for v in (0, 3.0, 0.25, 1e-7, math.inf, -math.inf, math.nan, 2**60)] == [
        "0",
        "3",
        "0.25",
        "1e-07",
        "+Inf",
        "-Inf",
        "NaN",
        "1.152921504606847e+18",
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r.counter("bad-name", "x"),
        lambda r: r.counter("ok", "x", ["bad-label"]),
        lambda r: r.counter("ok", "x", ["__reserved"]),
        lambda r: r.histogram("ok", "x", [1], ["le"]),
        lambda r: r.histogram("ok", "x", [5, 1]),
        lambda r: r.histogram("ok", "x", []),
    ],
)
def test_invalid_names_labels_and_buckets_are_refused(make):
    with pytest.raises(ValueError):
        make(MetricRegistry())


def test_names_and_histogram_series_cannot_collide():
    r = MetricRegistry()
    r.histogram("push", "x", [1])
    with pytest.raises(ValueError):
        r.counter("push_count", "x")
    with pytest.raises(ValueError):
        r.counter("push", "x")


def test_wrong_number_of_label_values_is_refused():
    c = MetricRegistry().counter("c", "C.", ["a", "b"])
    with pytest.raises(ValueError):
        c.labels("only-one")


def test_updates_from_threads_are_not_lost():
    r = MetricRegistry()
    c = r.counter("hits", "Hits.", ["k"])
    h = r.histogram("obs", "Obs.", [1])

    def work():
        for _ in range(5000):
            c.labels("x").inc()
            h.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = r.render().splitlines()
    assert 'hits{k="x"} 20000' in lines and "obs_count 20000" in lines and 'obs_bucket{le="1"} 20000' in lines


def test_control_plane_exports_istio_names():
    series = set(exported_series())
    for name in (
        "pilot_xds",
        "pilot_xds_pushes",
        "pilot_proxy_convergence_time_bucket",
        "pilot_xds_push_time_count",
        "pilot_total_xds_rejects",
        "pilot_xds_rds_reject",
        "pilot_xds_config_size_bytes_sum",
        "citadel_server_csr_count",
        "citadel_server_success_cert_issuance_count",
        "citadel_server_csr_parsing_err_count",
        "citadel_server_authentication_failure_count",
        "citadel_server_root_cert_expiry_timestamp",
        "lattice_api_requests_total",
        "lattice_api_request_duration_seconds_bucket",
        "lattice_registry_workloads",
        "lattice_config_resources",
    ):
        assert name in series, name


def test_control_plane_convergence_buckets_are_istios():
    text = ControlPlaneMetrics().render()
    les = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("pilot_proxy_convergence_time_bucket")
    ]
    assert les == ["0.1", "0.5", "1", "3", "5", "10", "20", "30", "+Inf"]
