"""tests/promql.py: metrics and labels read out of tricky PromQL, and Grafana's variables."""

from __future__ import annotations

import json

import pytest

from promql import (
    PromQLError,
    labels_used,
    metrics_used,
    queries,
    selectors,
    substitute,
    tokens,
    undefined_variables,
    variable_queries,
)


def test_functions_aggregations_durations_and_numbers_are_not_metrics():
    expr = (
        'histogram_quantile(0.99, sum by (le, destination_service) '
        '(rate(istio_request_duration_milliseconds_bucket{reporter="destination"}[5m])))'
    )
    assert selectors(expr) == {("istio_request_duration_milliseconds_bucket", frozenset({"reporter"}))}
    assert labels_used(expr) == {"le", "destination_service", "reporter"}


def test_grouping_after_the_aggregation_and_keywords_in_any_case():
    expr = "SUM(rate(istio_requests_total[1m])) BY (source_workload) > bool 0.5"
    assert selectors(expr) == {("istio_requests_total", frozenset())}
    assert labels_used(expr) == {"source_workload"}


def test_vector_matching_labels():
    expr = "a * on (x, y) group_left (z) b + ignoring(le) c / on() group_right d unless without_metric"
    assert metrics_used(expr) == {"a", "b", "c", "d", "without_metric"}
    assert labels_used(expr) == {"x", "y", "z", "le"}


def test_group_left_without_a_label_list():
    assert labels_used("a * on(job) group_left b") == {"job"}
    assert metrics_used("a * on(job) group_left b") == {"a", "b"}


def test_keywords_and_function_names_inside_braces_are_label_names():
    expr = 'rate{by="x", offset="y", sum!~"z", on=~"w"}'
    assert selectors(expr) == {("rate", frozenset({"by", "offset", "sum", "on"}))}


def test_a_function_name_without_a_call_is_a_metric():
    assert selectors("time - process_start_time_seconds") == {
        ("time", frozenset()),
        ("process_start_time_seconds", frozenset()),
    }
    assert metrics_used("time() - process_start_time_seconds") == {"process_start_time_seconds"}


def test_strings_hold_anything_without_it_being_read():
    expr = """sum(rate(x{path=~"/api/(v1|v2)/\\"quoted\\"/{id}", method='GET', note=`raw \\ string`}[5m]))"""
    assert selectors(expr) == {("x", frozenset({"path", "method", "note"}))}


def test_label_replace_and_label_join_arguments_are_labels():
    assert labels_used('label_replace(up{job="api"}, "service", "$1", "instance", "(.*):.*")') == {
        "job",
        "service",
        "instance",
    }
    assert labels_used('label_join(up, "endpoint", ":", "host", "port", "path")') == {
        "endpoint",
        "host",
        "port",
        "path",
    }
    assert labels_used('count_values without (instance) ("version", build_info)') == {"instance", "version"}
    assert labels_used('sort_by_label(sum by (a, b) (x), "b", "a")') == {"a", "b"}


def test_a_label_function_nested_inside_another_reads_only_its_own_label_arguments():
    expr = 'label_replace(label_join(m, "j", ",", "a"), "dst", "x", "src", ".*")'
    assert labels_used(expr) == {"j", "a", "dst", "src"}
    assert metrics_used(expr) == {"m"}


def test_selectors_by_name_matcher_and_without_a_name():
    found = selectors(
        '{__name__="istio_requests_total", reporter="source"} / {__name__=~"istio_.*"} + {"quoted.name", le="1"}'
    )
    assert found == {
        ("istio_requests_total", frozenset({"reporter"})),
        (None, frozenset()),
        ("quoted.name", frozenset({"le"})),
    }


def test_subqueries_offsets_at_modifiers_and_numbers():
    expr = "max_over_time(rate(http_total[5m])[1h:30s] offset 1d @ start()) * 1e3 + 0x1f - Inf + NaN + .5"
    assert selectors(expr) == {("http_total", frozenset())}


def test_recording_rule_names_with_colons_and_comments():
    expr = "# the mesh's request rate\njob:istio_requests:rate5m{namespace=\"a\"} # trailing\n"
    assert selectors(expr) == {("job:istio_requests:rate5m", frozenset({"namespace"}))}


def test_durations_and_numbers_are_told_apart():
    kinds = [(t.kind, t.text) for t in tokens("x[1h30m] offset 90s + 1e3 - 5 * 10ms")]
    assert (
        ("range", "[1h30m]") in kinds
        and ("duration", "90s") in kinds
        and ("number", "1e3") in kinds
        and ("duration", "10ms") in kinds
    )


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(x[5m])",  # unclosed parenthesis
        "x{a=\"b\"",  # unclosed brace
        "x{a}",  # a matcher without an operator
        'x{a=b}',  # an unquoted value
        'x{a=="b"}',  # not a matcher operator
        "x[5 minutes]",  # not a duration
        "rate(x[5m]) ? 1",  # a stray character
        "sum by x (y)",  # grouping without parentheses
        "not_a_function(x)",
        "x{a='b',,}",
    ],
)
def test_malformed_expressions_are_refused(expr):
    with pytest.raises(PromQLError):
        selectors(expr)


def test_grafana_variables_are_substituted_inside_and_outside_strings():
    expr = (
        'sum(rate(istio_requests_total{destination_service=~"$service", ns=~"${ns:regex}", '
        'w="[[wl]]"}[$__rate_interval]))'
    )
    assert (
        substitute(expr, {"service": "reviews.*", "ns": "default", "wl": "x"})
        == 'sum(rate(istio_requests_total{destination_service=~"reviews.*", ns=~"default", w="x"}[1m]))'
    )
    assert (
        substitute('label_replace(x, "a", "$1", "b", "(.*)")') == 'label_replace(x, "a", "$1", "b", "(.*)")'
    )  # as Grafana leaves it
    assert selectors("rate(x{a=\"$unknown\"}[$__interval])") == {("x", frozenset({"a"}))}


DASHBOARD = {
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {
                "name": "service",
                "type": "query",
                "current": {"value": "reviews.default.svc.cluster.local"},
                "query": {"query": 'label_values(istio_requests_total{reporter="destination"}, destination_service)'},
            },
            {
                "name": "src",
                "type": "query",
                "includeAll": True,
                "current": {"value": "$__all"},
                "query": "label_values(source_workload)",
            },
            {"name": "versions", "type": "custom", "current": {"value": ["v1", "v2"]}},
        ]
    },
    "panels": [
        {
            "type": "stat",
            "targets": [{"expr": 'sum(rate(istio_requests_total{destination_service="$service"}[$__rate_interval]))'}],
        },
        {
            "type": "row",
            "collapsed": True,
            "panels": [
                {
                    "type": "timeseries",
                    "targets": [
                        {
                            "expr": 'sum by (source_workload) (rate(istio_requests_total{source_workload=~"$src", '
                            'destination_version=~"${versions}"}[5m]))'
                        },
                        {"expr": ""},
                        {"refId": "B"},
                    ],
                },
            ],
        },
        {"type": "text"},
    ],
}


def test_queries_walk_rows_and_substitute_current_values():
    assert queries(json.dumps(DASHBOARD)) == [
        'sum(rate(istio_requests_total{destination_service="reviews.default.svc.cluster.local"}[1m]))',
        'sum by (source_workload) (rate(istio_requests_total{source_workload=~".*", '
        'destination_version=~"v1|v2"}[5m]))',
    ]


def test_variable_queries_and_undefined_variables():
    assert variable_queries(DASHBOARD) == [
        ('istio_requests_total{reporter="destination"}', "destination_service"),
        (None, "source_workload"),
    ]
    broken = {
        "panels": [{"targets": [{"expr": 'x{a="$nope", b="$service"} + label_replace(y, "c", "$1", "d", ".*")'}]}],
        "templating": DASHBOARD["templating"],
    }
    assert undefined_variables(broken) == {"nope"}
