"""Gateway API routes as sidecar route tables: precedence, merging, conversion, and the Istio rule
when an HTTPRoute and a VirtualService claim one host."""

from __future__ import annotations

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot

REVIEWS = "reviews.default.svc.cluster.local"


def _http(
    name: str,
    rules: str,
    namespace: str = "default",
    parent: str = "{group: '', kind: Service, name: reviews, namespace: default}",
    kind: str = "HTTPRoute",
):
    text = (
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: "
        f"{{name: {name}, namespace: {namespace}}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n{rules}"
    )
    return parse_documents(text)[0]


def _vs(name: str, namespace: str = "default"):
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: "
        f"{{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http: "
        f"[{{route: [{{destination: {{host: reviews}}}}]}}]"
    )
    return parse_documents(text)[0]


def _snapshot(*resources, ages: dict | None = None) -> MeshSnapshot:
    ages = ages or {}
    created = {r.key: ages.get(r.name, float(i)) for i, r in enumerate(resources)}
    pick = lambda kind: tuple(r for r in resources if r.kind == kind)  # noqa: E731
    return MeshSnapshot(
        "1",
        virtual_services=pick("VirtualService"),
        http_routes=pick("HTTPRoute"),
        grpc_routes=pick("GRPCRoute"),
        created=created,
    )


def _table(snapshot: MeshSnapshot, namespace: str | None = None) -> list[dict]:
    winner = snapshot.virtual_service_for(REVIEWS, namespace)
    return winner.spec_dict()["http"]


def _backend(name: str) -> str:
    return f"    backendRefs: [{{name: {name}, port: 9080}}]\n"


def _hosts(rules: list[dict]) -> list[str]:
    return [r["route"][0]["destination"]["host"].split(".")[0] if "route" in r else "-" for r in rules]


def test_rules_across_routes_merge_by_gateway_api_precedence_not_list_order():
    old = _http(
        "old",
        "  - matches: [{path: {type: PathPrefix, value: /}}]\n"
        + _backend("catchall")
        + "  - matches: [{path: {type: PathPrefix, value: /a}}]\n"
        + _backend("short"),
    )
    new = _http(
        "new",
        "  - matches: [{path: {type: PathPrefix, value: /a/b}}]\n"
        + _backend("long")
        + "  - matches: [{path: {type: Exact, value: /a}}]\n"
        + _backend("exact")
        + "  - matches: [{path: {value: /a}, method: GET}]\n"
        + _backend("method")
        + "  - matches: [{path: {value: /a}, headers: [{name: x, value: '1'}], method: GET}]\n"
        + _backend("header"),
    )
    rules = _table(_snapshot(old, new))
    # Exact first; longest prefix; same prefix: method, then more headers; then the rest; "/" last.
    assert _hosts(rules) == [
        "exact",
        "long",
        "long",
        "header",
        "header",
        "method",
        "method",
        "short",
        "short",
        "catchall",
    ]


def test_ties_go_to_the_oldest_route_then_name_then_list_order():
    rules = (
        "  - matches: [{path: {value: /x}}]\n"
        + _backend("{}")
        + "  - matches: [{path: {value: /x}}]\n"
        + _backend("{}-second")
    )
    b, a, c = (_http(n, rules.replace("{}", n)) for n in ("b", "a", "c"))
    table = _table(_snapshot(b, a, c, ages={"b": 1.0, "a": 2.0, "c": 2.0}))
    assert _hosts(table)[::2] == ["b", "b-second", "a", "a-second", "c", "c-second"]


def test_path_prefix_matches_whole_segments_and_rewrites_them():
    route = _http(
        "r",
        "  - matches: [{path: {value: /api/}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: "
        "ReplacePrefixMatch, replacePrefixMatch: /}}}]\n" + _backend("reviews"),
    )
    rules = _table(_snapshot(route))
    assert [(r["match"][0]["uri"], r["rewrite"]["uri"]) for r in rules] == [
        ({"exact": "/api"}, "/"),
        ({"prefix": "/api/"}, "/"),
    ]


def test_a_prefix_redirect_replaces_whole_segments_as_envoy_prefix_rewrites():
    route = _http(
        "r",
        "  - matches: [{path: {value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: "
        "ReplacePrefixMatch, replacePrefixMatch: /new}, hostname: example.org}}]\n",
    )
    rules = _table(_snapshot(route))
    assert [(r["match"][0]["uri"], r["redirect"]["uri"], r["redirect"]["authority"]) for r in rules] == [
        ({"exact": "/old"}, "%PREFIX()%/new", "example.org"),
        ({"prefix": "/old/"}, "%PREFIX()%/new/", "example.org"),
    ]


def test_filters_timeouts_and_retries_become_their_virtual_service_fields():
    route = _http(
        "r",
        """  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}], remove: [x-c]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-d, value: "3"}]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9080}, fraction: {numerator: 1,
    denominator: 4}}}
    - {type: URLRewrite, urlRewrite: {hostname: example.com, path: {type: ReplaceFullPath, replaceFullPath: /new}}}
    - {type: CORS, cors: {allowOrigins: ["https://*.example.com", "https://a.com"], maxAge: 60}}
    backendRefs: [{name: reviews, port: 9080, weight: 3, filters: [{type: ResponseHeaderModifier,
    responseHeaderModifier: {set: [{name: x-v, value: v1}]}}]}, {name: ratings, port: 9080, weight: 0}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [500, 503]}
""",
    )
    (rule,) = _table(_snapshot(route))
    assert rule["headers"] == {"request": {"set": {"x-a": "1"}, "remove": ["x-c"]}, "response": {"add": {"x-d": "3"}}}
    assert rule["mirrors"] == [
        {
            "destination": {"host": "shadow.default.svc.cluster.local", "port": {"number": 9080}},
            "percentage": {"value": 25.0},
        }
    ]
    assert rule["rewrite"] == {"authority": "example.com", "uriRegexRewrite": {"match": "/.*", "rewrite": "/new"}}
    assert rule["corsPolicy"]["allowOrigins"] == [
        {"regex": "https://[^/]+\\.example\\.com"},
        {"exact": "https://a.com"},
    ]
    assert rule["corsPolicy"]["maxAge"] == "60s"
    # A zero-weight backend gets no traffic; the other keeps its own header filter.
    assert rule["route"] == [
        {
            "destination": {"host": "reviews.default.svc.cluster.local", "port": {"number": 9080}},
            "weight": 3,
            "headers": {"response": {"set": {"x-v": "v1"}}},
        }
    ]
    assert rule["timeout"] == "2s"
    assert rule["retries"] == {
        "attempts": 3,
        "retryOn": "connect-failure,refused-stream,unavailable,cancelled,500,503",
        "perTryTimeout": "500ms",
    }


def test_redirect_defaults_to_302_and_a_new_scheme_brings_its_port():
    route = _http(
        "r",
        "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, path: {type: ReplaceFullPath, "
        "replaceFullPath: /login}}}]\n",
    )
    (rule,) = _table(_snapshot(route))
    assert rule["redirect"] == {
        "redirectCode": 302,
        "scheme": "https",
        "derivePort": "FROM_PROTOCOL_DEFAULT",
        "uri": "/login",
    }
    assert "route" not in rule


def test_a_rule_with_no_backend_answers_500():
    (rule,) = _table(_snapshot(_http("r", "  - matches: [{path: {value: /}}]\n")))
    assert rule["directResponse"] == {"status": 500}


def test_a_parent_port_limits_the_rules_to_that_port():
    route = _http(
        "r",
        _backend("reviews").replace("    backendRefs", "  - backendRefs"),
        parent="{group: '', kind: Service, name: reviews, port: 9080}",
    )
    (rule,) = _table(_snapshot(route))
    assert rule["match"] == [{"port": 9080}]


def test_grpc_methods_become_paths_ranked_by_service_then_method():
    route = _http(
        "g",
        """  - matches: [{method: {service: lattice.test.Echo}}]
    backendRefs: [{name: any, port: 9080}]
  - matches: [{method: {service: lattice.test.Echo, method: Unary}, headers: [{name: X-User, value: jason}]}]
    backendRefs: [{name: unary, port: 9080}]
  - matches: [{method: {method: Bidi}}, {method: {type: RegularExpression, service: 'lattice\\..+'}}]
    backendRefs: [{name: other, port: 9080}]
""",
        kind="GRPCRoute",
    )
    rules = _table(_snapshot(route))
    assert [r["match"][0].get("uri") for r in rules] == [
        {"exact": "/lattice.test.Echo/Unary"},
        {"prefix": "/lattice.test.Echo/"},
        {"regex": "/lattice\\..+/[^/]+"},
        {"regex": "/[^/]+/Bidi"},
    ]
    assert rules[0]["match"][0]["headers"] == {"x-user": {"exact": "jason"}}


def test_the_older_of_a_virtual_service_and_an_http_route_claims_the_host_and_status_says_so():
    route, vs = _http("split", _backend("ratings").replace("    backendRefs", "  - backendRefs")), _vs("pinned")
    newer_route = _snapshot(vs, route, ages={"pinned": 1.0, "split": 2.0})
    assert newer_route.virtual_service_for(REVIEWS).kind == "VirtualService"
    (message,) = newer_route.conflicts()
    assert message.startswith(
        "HTTPRoute default/split: host reviews.default.svc.cluster.local is already claimed by VirtualService "
        "default/pinned"
    )
    older_route = _snapshot(vs, route, ages={"pinned": 3.0, "split": 2.0})
    assert older_route.virtual_service_for(REVIEWS).kind == "HTTPRoute"
    (message,) = older_route.conflicts()
    assert (
        "VirtualService default/pinned: host reviews.default.svc.cluster.local is already claimed by HTTPRoute "
        "default/split" in message
    )


def test_a_consumer_route_applies_only_in_its_namespace_and_there_first():
    producer = _http("producer", _backend("reviews").replace("    backendRefs", "  - backendRefs"))
    consumer = _http("consumer", _backend("ratings").replace("    backendRefs", "  - backendRefs"), namespace="shop")
    snapshot = _snapshot(producer, consumer)
    assert _hosts(_table(snapshot, "shop")) == ["ratings"]  # backends resolve in the route's namespace
    assert _table(snapshot, "shop")[0]["route"][0]["destination"]["host"] == "ratings.shop.svc.cluster.local"
    assert _hosts(_table(snapshot, "default")) == ["reviews"]
    assert snapshot.conflicts() == []


def test_http_and_grpc_routes_for_one_service_do_not_merge():
    http = _http("h", _backend("a").replace("    backendRefs", "  - backendRefs"))
    grpc = _http("g", _backend("b").replace("    backendRefs", "  - backendRefs"), kind="GRPCRoute")
    snapshot = _snapshot(http, grpc)
    assert _hosts(_table(snapshot)) == ["a"]
    assert snapshot.conflicts()[0].startswith(
        "GRPCRoute default/g: host reviews.default.svc.cluster.local is already claimed by HTTPRoute default/h"
    )
