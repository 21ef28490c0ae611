"""RequestAuthentication validation: Istio's examples parse; every bad field is named with the reason."""

from __future__ import annotations

import json

import pytest

from lattice.api import ValidationError, kind_for, parse_documents

JWKS = json.dumps(
    {
        "keys": [
            {"kty": "RSA", "kid": "k", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": "AQ", "y": "Ag"},
        ]
    }
)

# Istio's reference examples (selector + jwksUri; mesh-wide in the root namespace), both versions.
ISTIO_EXAMPLES = """\
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: req-authn-for-all, namespace: istio-system}
spec:
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
    fromHeaders:
    - name: x-goog-iap-jwt-assertion
    fromParams: [my_token]
    fromCookies: [session]
    audiences: [bookstore_android.apps.example.com, bookstore_web.apps.example.com]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {header: x-jwt-group, claim: groups}
    forwardOriginalToken: true
    timeout: 10s
"""


def _spec(**rule) -> str:
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "ra"},
            "spec": {"jwtRules": [rule]},
        }
    )


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(text)
    return {err.path: err.message for err in e.value.errors}


def test_istio_examples_parse_in_both_versions():
    first, second = parse_documents(ISTIO_EXAMPLES)
    assert first.spec.match_labels == {"app": "httpbin"} and first.spec.jwt_rules[0].issuer == "issuer-foo"
    rule = second.spec.jwt_rules[0]
    assert (
        second.spec.match_labels == {}
        and rule.from_headers[0].name == "x-goog-iap-jwt-assertion"
        and rule.from_headers[0].prefix == ""
    )
    assert (rule.timeout_seconds, rule.output_claim_to_headers[0].claim, rule.forward_original_token) == (
        10.0,
        "groups",
        True,
    )


def test_short_name_and_inline_jwks():
    assert kind_for("ra").kind == kind_for("requestauthentications").kind == "RequestAuthentication"
    (r,) = parse_documents(_spec(issuer="i", jwks=JWKS))
    assert r.spec.jwt_rules[0].jwks == JWKS and r.spec.jwt_rules[0].timeout_seconds == 5.0


@pytest.mark.parametrize(
    "rule, path, message",
    [
        ({"jwksUri": "https://x/j"}, "spec.jwtRules[0].issuer", "Field required"),
        ({"issuer": "", "jwksUri": "https://x/j"}, "spec.jwtRules[0].issuer", "at least 1 character"),
        ({"issuer": "i"}, "spec.jwtRules[0]", "OpenID discovery"),
        ({"issuer": "i", "jwksUri": "https://x/j", "jwks": JWKS}, "spec.jwtRules[0].jwks", "not both"),
        ({"issuer": "i", "jwksUri": "file:///etc/keys"}, "spec.jwtRules[0].jwksUri", "http:// or https://"),
        ({"issuer": "i", "jwksUri": "https:///nohost"}, "spec.jwtRules[0].jwksUri", "with a host"),
        ({"issuer": "i", "jwksUri": "https://x:99999/j"}, "spec.jwtRules[0].jwksUri", "invalid port"),
        ({"issuer": "i", "jwks": "not json"}, "spec.jwtRules[0].jwks", "is not JSON"),
        ({"issuer": "i", "jwks": "{}"}, "spec.jwtRules[0].jwks", '"keys" list'),
        (
            {"issuer": "i", "jwks": '{"keys": [{"kty": "RSA", "n": "AQ"}]}'},
            "spec.jwtRules[0].jwks",
            "keys[0] (RSA) needs e",
        ),
        (
            {"issuer": "i", "jwks": '{"keys": [{"kty": "EC", "x": "AQ", "y": "AQ"}]}'},
            "spec.jwtRules[0].jwks",
            "needs crv",
        ),
        ({"issuer": "i", "jwks": '{"keys": [{"kty": "DSA"}]}'}, "spec.jwtRules[0].jwks", "kty 'DSA'"),
        (
            {"issuer": "i", "jwks": '{"keys": [{"kty": "oct", "k": "a b"}]}'},
            "spec.jwtRules[0].jwks",
            "needs k as a base64url",
        ),
        ({"issuer": "i", "jwks": JWKS, "audiences": ["a", ""]}, "spec.jwtRules[0].audiences", "non-empty"),
        (
            {"issuer": "i", "jwks": JWKS, "fromHeaders": [{"name": ""}]},
            "spec.jwtRules[0].fromHeaders[0].name",
            "at least 1 character",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "fromHeaders": [{"name": "x token"}]},
            "spec.jwtRules[0].fromHeaders[0].name",
            "not a valid header name",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "fromHeaders": [{"name": "x_token"}]},
            "spec.jwtRules[0].fromHeaders[0].name",
            "underscores",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "fromHeaders": ["x-token"]},
            "spec.jwtRules[0].fromHeaders[0]",
            "valid dictionary",
        ),
        ({"issuer": "i", "jwks": JWKS, "fromParams": [""]}, "spec.jwtRules[0].fromParams", "non-empty"),
        (
            {"issuer": "i", "jwks": JWKS, "fromCookies": ["a;b"]},
            "spec.jwtRules[0].fromCookies",
            "not a valid cookie name",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "outputPayloadToHeader": ":authority"},
            "spec.jwtRules[0].outputPayloadToHeader",
            "not a valid header name",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "outputClaimToHeaders": [{"header": "x-sub"}]},
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "Field required",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "outputClaimToHeaders": [{"header": "x sub", "claim": "sub"}]},
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "not a valid header name",
        ),
        ({"issuer": "i", "jwks": JWKS, "timeout": "soon"}, "spec.jwtRules[0].timeout", "is not a duration"),
        ({"issuer": "i", "jwks": JWKS, "timeout": "0s"}, "spec.jwtRules[0].timeout", "longer than 0s"),
        (
            {"issuer": "i", "jwks": JWKS, "spaceDelimitedClaims": ["roles"]},
            "spec.jwtRules[0].spaceDelimitedClaims",
            "does not support",
        ),
    ],
)
def test_bad_rules_are_refused_with_path_and_reason(rule, path, message):
    errors = _errors(_spec(**rule))
    assert path in errors and message in errors[path], errors


@pytest.mark.parametrize("field", ["targetRef", "targetRefs"])
def test_target_refs_are_refused_with_the_reason(field):
    doc = json.loads(_spec(issuer="i", jwks=JWKS))
    doc["spec"][field] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]
    errors = _errors(json.dumps(doc))
    assert "selector" in errors[f"spec.{field}"] and "not supported" in errors[f"spec.{field}"]


def test_every_problem_is_reported_at_once():
    errors = _errors(_spec(issuer="", jwksUri="ftp://x", audiences=[""], fromParams=[""]))
    assert {
        "spec.jwtRules[0].issuer",
        "spec.jwtRules[0].jwksUri",
        "spec.jwtRules[0].audiences",
        "spec.jwtRules[0].fromParams",
    } <= set(errors)
