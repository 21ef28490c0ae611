"""Translator behaviours a user relies on, asserted directly (the goldens show the whole picture)."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2

from lattice.translate import CLUSTER, ENDPOINT, ROUTE, translate
from test_golden import CASES, WORKLOADS


def _vhosts(snapshot):
    (table,) = [m for _, m in translate(snapshot, WORKLOADS[0]).by_type[ROUTE]]
    return {v.name: v for v in table.virtual_hosts}


def test_every_service_answers_to_its_kubernetes_names():
    vh = _vhosts(CASES["no-rules"]())["reviews.default.svc.cluster.local:9080"]
    for name in (
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
    ):
        assert name in vh.domains


def test_domains_are_unique_across_virtual_hosts():
    domains = [d for v in _vhosts(CASES["jason-v2-v3"]()).values() for d in v.domains]
    assert len(domains) == len(set(domains))


def test_header_match_routes_to_subset_cluster():
    routes = _vhosts(CASES["jason-v2-v3"]())["reviews.default.svc.cluster.local:9080"].routes
    assert routes[0].match.headers[0].name == "end-user" and routes[0].match.headers[0].string_match.exact == "jason"
    assert routes[0].route.cluster == "outbound|9080|v2|reviews.default.svc.cluster.local"
    assert routes[1].route.cluster == "outbound|9080|v3|reviews.default.svc.cluster.local"


def test_subset_endpoints_follow_labels_and_health():
    resources = translate(CASES["jason-v2-v3"](), WORKLOADS[0])
    assignments = dict(resources.by_type[ENDPOINT])
    v3 = assignments["outbound|9080|v3|reviews.default.svc.cluster.local"].endpoints[0].lb_endpoints
    assert [
        (e.endpoint.address.socket_address.address, health_check_pb2.HealthStatus.Name(e.health_status)) for e in v3
    ] == [("127.0.10.5", "UNHEALTHY")]
    all_reviews = assignments["outbound|9080||reviews.default.svc.cluster.local"].endpoints[0].lb_endpoints
    assert len(all_reviews) == 3
    assert "outbound|9080|v2|ratings.default.svc.cluster.local" in dict(resources.by_type[CLUSTER])


def test_weights_faults_and_retries():
    routes = _vhosts(CASES["faults-retries-headers"]())["ratings.default.svc.cluster.local:9080"].routes
    assert len(routes) == 3  # two matches of the first rule, then the split
    first = routes[0]
    assert first.route.timeout.seconds == 1 and first.route.timeout.nanos == 500_000_000
    assert first.route.retry_policy.num_retries.value == 3 and list(
        first.route.retry_policy.retriable_status_codes
    ) == [503]
    assert "envoy.filters.http.fault" in first.typed_per_filter_config
    split = routes[2].route.weighted_clusters.clusters
    assert [(c.name.split("|")[2], c.weight.value) for c in split] == [("v1", 90), ("v2", 10)]
    assert not routes[2].route.HasField("retry_policy")  # attempts: 0 turns retries off


def _ratings_vs(http: str):
    from test_golden import _snapshot

    return _snapshot(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n"
        f"  hosts: [ratings]\n  http: {http}\n"
    )


def test_a_virtual_service_with_no_rule_for_a_port_leaves_that_port_its_default_route():
    """As an HTTPRoute whose parentRef names another port of the Service (Gateway API MeshPorts)."""
    routes = _vhosts(_ratings_vs("[{match: [{port: 8080}], route: [{destination: {host: ratings, subset: v2}}]}]"))[
        "ratings.default.svc.cluster.local:9080"
    ].routes
    assert [r.route.cluster for r in routes] == ["outbound|9080||ratings.default.svc.cluster.local"]


def test_a_prefix_redirect_becomes_envoys_prefix_rewrite():
    (route,) = _vhosts(_ratings_vs("[{redirect: {uri: '%PREFIX()%/new', authority: example.org}}]"))[
        "ratings.default.svc.cluster.local:9080"
    ].routes
    assert (route.redirect.prefix_rewrite, route.redirect.path_redirect) == ("/new", "")
