"""RequestAuthentication translation: the jwt_authn filter first on the inbound listener, providers
and requirement exactly as Istio builds them, keys inline (fetched copies or a key nobody holds)."""

from __future__ import annotations

import json

import pytest

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot
from lattice.translate.jwt import FILTER, UNFETCHED_JWKS
from lattice.translate.ratelimit import FILTER as RATE_LIMIT
from test_golden import WORKLOADS
from test_ratelimit_filter import inbound_managers, policy

RATINGS = WORKLOADS[4]  # default/ratings-v1
JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "k", "n": "sXch", "e": "AQAB"}]})
URI = "https://keys.example/jwks.json"


def ra(name: str, *rules: dict, namespace: str = "default", labels: dict | None = None) -> str:
    spec: dict = {"jwtRules": list(rules)}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def snapshot(*docs: str, jwks: dict | None = None) -> MeshSnapshot:
    resources = [r for d in docs for r in parse_documents(d)]
    return MeshSnapshot(
        "t",
        WORKLOADS,
        jwks=jwks or {},
        request_authentications=tuple(r for r in resources if r.kind == "RequestAuthentication"),
        rate_limit_policies=tuple(r for r in resources if r.kind == "RateLimitPolicy"),
    )


def jwt_config(snap: MeshSnapshot, proxy=RATINGS) -> dict | None:
    """The filter's config as JSON (Envoy's field names), checked identical on every inbound chain."""
    found = []
    for manager in inbound_managers(snap, proxy):
        configs = [f for f in manager.http_filters if f.name == FILTER]
        if configs:
            config = jwt.JwtAuthentication()
            configs[0].typed_config.Unpack(config)
            found.append(json_format.MessageToDict(config, preserving_proto_field_name=True))
    assert all(f == found[0] for f in found)
    return found[0] if found else None


def test_no_request_authentication_no_filter():
    assert jwt_config(snapshot()) is None
    assert jwt_config(snapshot(ra("other", {"issuer": "i", "jwks": JWKS}, labels={"app": "reviews"}))) is None


def test_jwt_filter_comes_first_on_every_inbound_chain():
    """First after the caller's workload is moved out of the headers (metrics): nothing else reads that."""
    snap = snapshot(ra("jwt", {"issuer": "i", "jwks": JWKS}), policy("limits", labels={"app": "ratings"}))
    for manager in inbound_managers(snap):
        assert [f.name for f in manager.http_filters] == [
            "lattice.path_policy",  # ambiguous paths refused before anything reads them
            "lattice.path_policy.utf8",
            "envoy.filters.http.header_to_metadata",
            "lattice.jwt_ambiguity.0",  # two tokens: refused before either is judged
            "lattice.jwt_ambiguity.1",
            "lattice.jwt_ambiguity.2",
            FILTER,
            RATE_LIMIT,
            "envoy.filters.http.router",
        ]


def test_one_rule_becomes_istios_provider_with_defaults():
    config = jwt_config(snapshot(ra("jwt", {"issuer": "https://issuer.example", "jwks": JWKS})))
    assert config == {
        "providers": {
            "origins-0": {
                "issuer": "https://issuer.example",
                "local_jwks": {"inline_string": JWKS},
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"],
                "payload_in_metadata": "https://issuer.example",
                "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
            }
        },
        "rules": [
            {
                "match": {"prefix": "/"},
                "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}},
            }
        ],
        "bypass_cors_preflight": True,
    }


def test_every_rule_field_reaches_the_provider():
    rule = {
        "issuer": "i",
        "jwks": JWKS,
        "audiences": ["a", "b"],
        "fromHeaders": [{"name": "x-token", "prefix": "Tok "}, {"name": "x-other"}],
        "fromParams": ["tok"],
        "fromCookies": ["session"],
        "forwardOriginalToken": True,
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "org.team"}],
    }
    provider = jwt_config(snapshot(ra("jwt", rule)))["providers"]["origins-0"]
    assert provider["audiences"] == ["a", "b"]
    assert provider["from_headers"] == [
        {"name": "x-token", "value_prefix": "Tok "},
        {"name": "x-other"},
    ]  # no default locations added
    assert (provider["from_params"], provider["from_cookies"]) == (["tok"], ["session"])
    assert (provider["forward"], provider["forward_payload_header"]) == (True, "x-payload")
    assert provider["claim_to_headers"] == [
        {"header_name": "x-sub", "claim_name": "sub"},
        {"header_name": "x-team", "claim_name": "org.team"},
    ]


def test_policies_combine_sorted_by_issuer_with_istios_requirement():
    mesh = ra("mesh", {"issuer": "zeta", "jwks": JWKS}, namespace="istio-system")
    own = ra("own", {"issuer": "alpha", "jwks": JWKS}, {"issuer": "mid", "jwks": JWKS}, labels={"app": "ratings"})
    config = jwt_config(snapshot(mesh, own))
    assert [config["providers"][f"origins-{i}"]["issuer"] for i in range(3)] == ["alpha", "mid", "zeta"]
    names = ["origins-0", "origins-1", "origins-2"]
    each_valid_if_present = [
        {"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}} for n in names
    ]
    expected = {
        "requires_any": {
            "requirements": [
                *({"provider_name": n} for n in names),
                {"requires_all": {"requirements": each_valid_if_present}},
            ]
        }
    }
    assert config["rules"] == [{"match": {"prefix": "/"}, "requires": expected}]


def test_jwks_uri_uses_the_fetched_keys_or_a_key_nobody_holds():
    doc = ra("jwt", {"issuer": "i", "jwksUri": URI})
    fetched = jwt_config(snapshot(doc, jwks={URI: JWKS}))["providers"]["origins-0"]["local_jwks"]
    assert fetched == {"inline_string": JWKS}
    unfetched = jwt_config(snapshot(doc))["providers"]["origins-0"]["local_jwks"]
    assert unfetched == {"inline_string": UNFETCHED_JWKS}
    (key,) = json.loads(UNFETCHED_JWKS)["keys"]
    assert key["kty"] == "RSA" and len(key["n"]) > 300  # a real 2048-bit modulus: Envoy loads it, no token matches


def test_output_is_byte_identical_across_runs():
    doc = ra("jwt", {"issuer": "b", "jwks": JWKS}, {"issuer": "a", "jwksUri": URI})
    a, b = (inbound_managers(snapshot(doc, jwks={URI: JWKS}))[0] for _ in range(2))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _matches(matcher, headers: dict) -> bool:
    """Envoy's header matching as far as these filters use it: a regex against the whole value (of
    a repeated header, its values joined by ','), or mere presence (Python's re reads these
    patterns as RE2 does)."""
    import re as _re

    value = headers.get(matcher.name)
    if value is None:
        return False
    if matcher.HasField("present_match"):
        return True
    return _re.fullmatch(matcher.string_match.safe_regex.regex, value) is not None


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({"authorization": "Bearer a", ":path": "/x?access_token=b"}, True),
        ({"authorization": "Bearer a,Bearer b", ":path": "/x"}, True),  # two Authorization headers
        ({":path": "/x?access_token=a&access_token=b"}, True),
        ({":path": "/x?q=1&access_token=a&y=2&access_token=b"}, True),
        ({"authorization": "Bearer a", ":path": "/x?q=access_token"}, False),
        ({"authorization": "Bearer a", ":path": "/x"}, False),
        ({":path": "/x?access_token=a"}, False),
        ({"authorization": "Basic dXNlcjpwdw==", ":path": "/x?access_token=a"}, False),
        ({":path": "/access_token=a/b?access_token=c"}, False),  # in the path, not the query
    ],
)
def test_a_request_with_two_tokens_is_refused_with_401(headers, refused):
    from envoy.extensions.filters.http.fault.v3 import fault_pb2

    from lattice.translate.jwt import ambiguity_filters

    (doc,) = parse_documents(ra("jwt", {"issuer": "i", "jwks": JWKS}))
    (rule,) = doc.spec.jwt_rules
    verdicts = []
    for f in ambiguity_filters([rule]):
        fault = fault_pb2.HTTPFault()
        f.typed_config.Unpack(fault)
        assert fault.abort.http_status == 401
        verdicts.append(all(_matches(m, headers) for m in fault.headers))
    assert any(verdicts) == refused
