"""Istio's stats tag rules, checked the way Envoy applies them: each rule's first capture group is
cut from the name and its second is the tag's value (Envoy runs them as ECMAScript regexes; the
POSIX class `[:digit:]` is spelled for Python's `re` here)."""

from __future__ import annotations

import re

import pytest

from lattice.agent.bootstrap import bootstrap
from lattice.agent.stats_tags import stats_config, stats_tags


def _extract(name: str) -> tuple[str, dict[str, str]]:
    cut, tags = [], {}
    for rule in stats_tags():
        m = re.search(rule["regex"].replace("[:digit:]", r"\d"), name)
        if m and m.group(1) is not None:
            cut.append(m.span(1))
            tags[rule["tag_name"]] = m.group(2) if m.re.groups >= 2 else ""
    kept = "".join(c for i, c in enumerate(name) if not any(a <= i < b for a, b in cut))
    return kept, tags


@pytest.mark.parametrize(
    "stat, name, tags",
    [
        (
            "http.inbound_0.0.0.0_9080.rbac.istio_dry_run_deny_.shadow_denied",
            "http.inbound_0.0.0.0_9080.rbac",
            {"authz_dry_run_action": "deny", "authz_dry_run_result": "denied"},
        ),
        ("http.inbound_0.0.0.0_9080.rbac.denied", "http.inbound_0.0.0.0_9080.rbac", {"authz_enforce_result": "denied"}),
        (
            "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total",
            "cluster.upstream_rq_total",
            {"cluster_name": "outbound|9080||reviews.default.svc.cluster.local"},
        ),
        (
            "cluster.xds-agent.upstream_rq_200",
            "cluster.upstream_rq",
            {"cluster_name": "xds-agent", "response_code": "200"},
        ),
        (
            "http.10.0.0.1_80.downstream_rq_total",
            "http.downstream_rq_total",
            {"http_conn_manager_prefix": "10.0.0.1_80"},
        ),
    ],
)
def test_istio_names_and_labels(stat, name, tags):
    assert _extract(stat) == (name, tags)


def test_every_tag_name_once_and_the_bootstrap_carries_them(tmp_path):
    names = [t["tag_name"] for t in stats_tags()]
    assert len(names) == len(set(names))
    config = bootstrap("id", "cluster", {}, tmp_path / "a", tmp_path / "x", tmp_path / "s", tmp_path / "t")
    assert config["stats_config"] == stats_config() and stats_config()["use_all_default_tags"] is False
    matcher = {"stats_matcher": {"inclusion_list": {"patterns": [{"prefix": "server"}]}}}
    both = bootstrap("id", "c", {}, tmp_path / "a", tmp_path / "x", tmp_path / "s", tmp_path / "t", matcher)
    assert both["stats_config"] == stats_config() | matcher
