"""HTTPRoute and GRPCRoute validation: Gateway API's own rules, and every unsupported field refused by
path and reason."""

from __future__ import annotations

import pytest
import yaml

from lattice.api import ValidationError, kind_for, parse_documents

PARENT = '{group: "", kind: Service, name: reviews, port: 9080}'


def _route(rules: str, kind: str = "HTTPRoute", parents: str = f"[{PARENT}]", extra: str = "") -> str:
    return (
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r}}\nspec:\n  parentRefs: "
        f"{parents}\n{extra}  rules:\n{rules}"
    )


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(text)
    return {err.path: err.message for err in e.value.errors}


FULL = _route("""
  - name: canary
    matches:
    - path: {type: PathPrefix, value: /api}
      method: GET
      headers: [{name: end-user, value: jason}, {type: RegularExpression, name: x-id, value: "[0-9]+"}]
      queryParams: [{name: debug, value: "1"}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value:
    "2"}], remove: [x-c]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-d, value: "3"}]}}
    - {type: URLRewrite, urlRewrite: {hostname: example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9080}, fraction: {numerator: 1,
    denominator: 4}}}
    - {type: CORS, cors: {allowOrigins: ["https://*.example.com"], allowMethods: [GET], maxAge: 60}}
    backendRefs:
    - {name: reviews, port: 9080, weight: 80, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set:
    [{name: x-v, value: v1}]}}]}
    - {name: reviews-v2, namespace: other, port: 9080, weight: 20}
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [503]}
""")


def test_every_supported_field_validates_and_reads_back_as_written():
    (route,) = parse_documents(FULL)
    assert route.kind == "HTTPRoute" and route.api_version == "gateway.networking.k8s.io/v1"
    again = parse_documents(yaml.safe_dump(route.to_dict()))[0]
    assert again.to_dict() == route.to_dict()
    assert route.to_dict()["spec"]["rules"][0]["backendRefs"][1] == {
        "name": "reviews-v2",
        "namespace": "other",
        "port": 9080,
        "weight": 20,
    }
    # Defaults apply on conversion, not to the stored form: nothing the user did not write appears.
    assert (
        "weight"
        not in parse_documents(_route("  - backendRefs: [{name: reviews, port: 9080}]"))[0].to_dict()["spec"]["rules"][
            0
        ]["backendRefs"][0]
    )


def test_kinds_are_known_to_the_cli_and_accept_istio_versions():
    assert kind_for("httproutes").kind == "HTTPRoute" and kind_for("grpcroute").kind == "GRPCRoute"
    assert parse_documents(FULL.replace("/v1\n", "/v1beta1\n", 1))
    errors = _errors(FULL.replace("/v1\n", "/v1alpha1\n", 1))
    assert "apiVersion" in errors


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        (
            _route(
                "  - backendRefs: [{name: reviews, port: 9080}]", parents="[{group: apps, kind: Deployment, name: gw}]"
            ),
            "spec.parentRefs[0]",
            "a route attaches to a Gateway",
        ),
        (
            _route(
                "  - backendRefs: [{name: reviews, port: 9080}]",
                parents='[{group: "", kind: Service, name: reviews, sectionName: http}]',
            ),
            "spec.parentRefs[0]",
            "sectionName is not supported",
        ),
        (
            _route("  - backendRefs: [{name: reviews, port: 9080}]", extra="  hostnames: [reviews.example.com]\n"),
            "spec",
            "no effect on a route attached to a Service",
        ),
        (_route("  - backendRefs: [{name: reviews}]"), "spec.rules[0].backendRefs[0]", "port is required"),
        (
            _route("  - backendRefs: [{kind: Pod, name: reviews, port: 1}]"),
            "spec.rules[0].backendRefs[0]",
            "Lattice routes to Services",
        ),
        (
            _route("  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]"),
            "spec.rules[0].filters[0]",
            "ExtensionRef filters are not supported",
        ),
        (
            _route("  - filters: [{type: RequestHeaderModifier}]"),
            "spec.rules[0].filters[0]",
            "takes exactly its `requestHeaderModifier`",
        ),
        (
            _route(
                "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: RequestRedirect, "
                "requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]"
            ),
            "spec.rules[0]",
            "RequestRedirect with ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        ),
        (
            _route("  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]"),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301",
        ),
        (
            _route(
                "  - filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: "
                "{hostname: a}}]"
            ),
            "spec.rules[0].filters",
            "cannot both be set",
        ),
        (
            _route(
                "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: "
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]"
            ),
            "spec.rules[0]",
            "needs every match of the rule to be a PathPrefix",
        ),
        (
            _route("  - matches: [{path: {type: RegularExpression, value: '(?=a)'}}]"),
            "spec.rules[0].matches[0].path",
            "look-around",
        ),
        (_route("  - matches: [{path: {value: 'no-slash'}}]"), "spec.rules[0].matches[0].path", "must start with '/'"),
        (
            _route("  - matches: [{headers: [{name: a, value: '1'}, {name: A, value: '2'}]}]"),
            "spec.rules[0].matches[0].headers",
            "listed twice",
        ),
        (_route("  - matches: [{method: FETCH}]"), "spec.rules[0].matches[0].method", "GET"),
        (_route("  - timeouts: {request: 1.5s}"), "spec.rules[0].timeouts.request", "not a Gateway API duration"),
        (_route("  - retry: {attempts: 2, backoff: 100ms}"), "spec.rules[0].retry.backoff", "backoff is not supported"),
        (
            _route("  - sessionPersistence: {sessionName: s}"),
            "spec.rules[0].sessionPersistence",
            "sessionPersistence is not supported",
        ),
        (
            _route(
                "  - backendRefs: [{name: a, port: 1, filters: [{type: RequestMirror, requestMirror: {backendRef: "
                "{name: b, port: 1}}}]}]"
            ),
            "spec.rules[0].backendRefs[0].filters",
            "only header filters per backend",
        ),
        (
            _route(
                "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 1}, percent: 5, "
                "fraction: {numerator: 1}}}]"
            ),
            "spec.rules[0].filters[0].requestMirror",
            "percent or fraction, not both",
        ),
        (_route("  - bogus: 1"), "spec.rules[0].bogus", "unknown field"),
        (
            _route(
                "  - matches: [{method: {service: a.B}}]\n    filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]",
                kind="GRPCRoute",
            ),
            "spec.rules[0].filters[0].type",
            "not a GRPCRoute filter",
        ),
        (
            _route("  - matches: [{method: {}}]", kind="GRPCRoute"),
            "spec.rules[0].matches[0].method",
            "set service, method or both",
        ),
        (
            _route("  - matches: [{method: {service: 'a/b'}}]", kind="GRPCRoute"),
            "spec.rules[0].matches[0].method",
            "dotted service name",
        ),
        (_route("  - timeouts: {request: 1s}", kind="GRPCRoute"), "spec.rules[0].timeouts", "unknown field"),
    ],
)
def test_bad_or_unsupported_fields_are_refused_by_path_with_the_reason(text, path, reason):
    errors = _errors(text)
    assert path in errors, errors
    assert reason in errors[path], errors[path]


def test_grpc_route_validates_method_and_header_matches():
    (route,) = parse_documents(
        _route(
            """
  - matches:
    - method: {service: lattice.test.Echo, method: Unary}
      headers: [{name: x-user, value: jason}]
    - method: {type: RegularExpression, service: 'lattice\\.test\\..*'}
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9090}}}]
    backendRefs: [{name: echo, port: 9090}]
""",
            kind="GRPCRoute",
        )
    )
    assert route.spec.rules[0].matches[1].method.type == "RegularExpression"
