"""RateLimitPolicy validation: the documented example parses; every bad field is named with a reason."""

from __future__ import annotations

import json

import pytest

from lattice.api import ValidationError, kind_for, parse_documents

FULL = """\
apiVersion: lattice.dev/v1
kind: RateLimitPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector:
    matchLabels: {app: ratings}
  limits:
  - name: overall
    requests: 100
    per: 1s
    burst: 200
  - name: writes-per-client
    requests: 10
    per: 1m
    match:
      path: {prefix: /api/}
      methods: [POST, PUT]
      headers: {x-tenant: {exact: acme}}
    by: {clientIdentity: true}
  - requests: 5
    per: 250ms
    by: {header: x-user}
"""
HEAD = "apiVersion: lattice.dev/v1\nkind: RateLimitPolicy\nmetadata: {name: rl}\nspec:\n"


def _errors(spec: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(HEAD + spec, "f.yaml")
    return [str(x) for x in e.value.errors]


def _limit(body: str) -> list[str]:
    return _errors(f"  limits:\n  - {body}\n")


def test_full_example_parses():
    (r,) = parse_documents(FULL)
    overall, writes, by_user = r.spec.limits
    assert (r.kind, r.spec.match_labels) == ("RateLimitPolicy", {"app": "ratings"})
    assert (overall.requests, overall.period_ms, overall.bucket_size) == (100, 1000, 200)
    assert (writes.period_ms, writes.bucket_size, writes.match.methods, writes.by.client_identity) == (
        60_000,
        10,
        ["POST", "PUT"],
        True,
    )
    assert writes.match.path.prefix == "/api/" and writes.match.headers["x-tenant"].exact == "acme"
    assert (by_user.name, by_user.period_ms, by_user.by.header) == (None, 250, "x-user")


def test_round_trips_with_istio_field_names():
    (r,) = parse_documents(FULL)
    spec = r.to_dict()["spec"]
    assert spec["limits"][1]["by"] == {"clientIdentity": True}
    assert parse_documents(json.dumps(r.to_dict()))[0].spec == r.spec


def test_kind_names():
    assert (
        kind_for("rlp").kind
        == kind_for("ratelimitpolicies").kind
        == kind_for("RateLimitPolicy").kind
        == "RateLimitPolicy"
    )


def test_wrong_api_version_is_named():
    with pytest.raises(ValidationError) as e:
        parse_documents(FULL.replace("lattice.dev/v1", "lattice.dev/v2"))
    assert "use one of lattice.dev/v1" in str(e.value)


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        ("{requests: 0, per: 1s}", "spec.limits[0].requests", "between 1 and"),
        ("{requests: -3, per: 1s}", "spec.limits[0].requests", "between 1 and"),
        ("{requests: 4294967296, per: 1s}", "spec.limits[0].requests", "between 1 and 4294967295"),
        ("{requests: '10', per: 1s}", "spec.limits[0].requests", "valid integer"),
        ("{requests: 1.5, per: 1s}", "spec.limits[0].requests", "valid integer"),
        ("{requests: 10, per: 1s, burst: 0}", "spec.limits[0].burst", "between 1 and"),
        ("{requests: 10}", "spec.limits[0].per", "required"),
        ("{requests: 10, per: soon}", "spec.limits[0].per", "not a duration"),
        ("{requests: 10, per: 10ms}", "spec.limits[0].per", "at most every 50ms"),
        ("{requests: 10, per: 25h}", "spec.limits[0].per", "at most 24h"),
        ("{requests: 10, per: 1.5ms}", "spec.limits[0].per", "whole number of milliseconds"),
        ("{requests: 10, per: 1s, name: Bad_Name}", "spec.limits[0].name", "not a name"),
        ("{requests: 10, per: 1s, window: 1s}", "spec.limits[0].window", "unknown field"),
        ("{requests: 10, per: 1s, by: {}}", "spec.limits[0].by", "exactly one of clientIdentity"),
        (
            "{requests: 10, per: 1s, by: {clientIdentity: true, header: x-user}}",
            "spec.limits[0].by",
            "exactly one of clientIdentity",
        ),
        ("{requests: 10, per: 1s, by: {header: X-User}}", "spec.limits[0].by.header", "lower-case"),
        ("{requests: 10, per: 1s, by: {header: x_user}}", "spec.limits[0].by.header", "no '_'"),
        ("{requests: 10, per: 1s, by: {header: ':authority'}}", "spec.limits[0].by.header", "pseudo-headers"),
        ("{requests: 10, per: 1s, match: {methods: [get]}}", "spec.limits[0].match.methods", "upper case"),
        ("{requests: 10, per: 1s, match: {methods: [GET, GET]}}", "spec.limits[0].match.methods", "more than once"),
        (
            "{requests: 10, per: 1s, match: {headers: {'x y': {exact: a}}}}",
            "spec.limits[0].match.headers",
            "not a header name",
        ),
        (
            "{requests: 10, per: 1s, match: {headers: {x-a: {}}}}",
            "spec.limits[0].match.headers.x-a",
            "exactly one of exact, prefix or regex",
        ),
        ("{requests: 10, per: 1s, match: {path: {prefix: api}}}", "spec.limits[0].match.path", "must start with '/'"),
        (
            "{requests: 10, per: 1s, match: {path: {exact: '/a?b=1'}}}",
            "spec.limits[0].match.path",
            "without its query string",
        ),
        ("{requests: 10, per: 1s, match: {path: {regex: '/a('}}}", "spec.limits[0].match.path", "does not compile"),
        ("{requests: 10, per: 1s, match: {uri: {prefix: /a}}}", "spec.limits[0].match.uri", "unknown field"),
    ],
)
def test_bad_limit_is_named(body, path, reason):
    errors = _limit(body)
    assert any(e.startswith(f"{path}: ") and reason in e for e in errors), errors


def test_limits_are_required_and_non_empty():
    assert any(
        e.startswith("spec.limits: ") and "required" in e.lower()
        for e in _errors("  selector: {matchLabels: {app: a}}\n")
    )
    assert any(e.startswith("spec.limits: ") and "at least one limit" in e for e in _errors("  limits: []\n"))


def test_limit_names_are_unique_within_a_policy():
    errors = _errors("  limits:\n  - {name: a, requests: 1, per: 1s}\n  - {name: a, requests: 2, per: 1s}\n")
    assert any(e.startswith("spec.limits: ") and "a used more than once" in e for e in errors), errors


def test_every_error_is_reported_at_once():
    errors = _errors("  limits:\n  - {requests: 0, per: 1s}\n  - {requests: 1, per: 1us}\n")
    assert [e.split(":")[0] for e in errors] == ["spec.limits[0].requests", "spec.limits[1].per"]


def test_burst_below_requests_smooths_the_rate():
    (r,) = parse_documents(HEAD + "  limits:\n  - {requests: 600, per: 1m, burst: 10}\n")
    assert (r.spec.limits[0].requests, r.spec.limits[0].bucket_size) == (600, 10)
