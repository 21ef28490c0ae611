"""RateLimitPolicy translation: which policies a sidecar enforces, and the local rate limit filter
they become on its inbound listener (a golden file shows the whole filter; tests assert the rules)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.rate_limit_descriptors.expr.v3 import expr_pb2
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot
from lattice.translate import LISTENER, translate
from lattice.translate.ratelimit import FILTER
from test_golden import WORKLOADS

GOLDEN = Path(__file__).parents[2] / "golden" / "translate" / "ratelimit.yaml"
PRODUCTPAGE, RATINGS = WORKLOADS[0], WORKLOADS[4]  # ratings-v1: labels app=ratings, version=v1


def policy(name: str, namespace: str = "default", labels: dict | None = None, limits: list | None = None) -> str:
    spec: dict = {"limits": limits or [{"requests": 10, "per": "1s"}]}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    return json.dumps(
        {
            "apiVersion": "lattice.dev/v1",
            "kind": "RateLimitPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def snapshot(*docs: str, peer_auth: str = "") -> MeshSnapshot:
    resources = [r for d in (*docs, peer_auth) if d for r in parse_documents(d)]
    return MeshSnapshot(
        "t",
        WORKLOADS,
        peer_authentications=tuple(r for r in resources if r.kind == "PeerAuthentication"),
        rate_limit_policies=tuple(r for r in resources if r.kind == "RateLimitPolicy"),
    )


def inbound_managers(snap: MeshSnapshot, proxy=RATINGS) -> list[hcm.HttpConnectionManager]:
    listeners = dict(translate(snap, proxy).by_type[LISTENER])
    (inbound,) = [listener for name, listener in listeners.items() if name.startswith("inbound|")]
    out = []
    for chain in inbound.filter_chains:
        manager = hcm.HttpConnectionManager()
        chain.filters[0].typed_config.Unpack(manager)
        out.append(manager)
    return out


def rate_limit_config(snap: MeshSnapshot, proxy=RATINGS) -> lrl.LocalRateLimit | None:
    (manager, *_) = inbound_managers(snap, proxy)
    found = [f for f in manager.http_filters if f.name == FILTER]
    if not found:
        return None
    config = lrl.LocalRateLimit()
    found[0].typed_config.Unpack(config)
    return config


def limit_keys(snap: MeshSnapshot, proxy=RATINGS) -> list[str]:
    config = rate_limit_config(snap, proxy)
    return (
        []
        if config is None
        else [d.entries[0].value for d in config.descriptors if len(d.entries) == 1 or d.entries[1].key != "lattice.by"]
    )


EXAMPLE = """\
apiVersion: lattice.dev/v1
kind: RateLimitPolicy
metadata: {name: ratings}
spec:
  selector: {matchLabels: {app: ratings}}
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
    match: {path: {regex: '/users/[^/]+/"quoted"'}, methods: [DELETE]}
    by: {header: x-user}
"""


def test_golden_filter(request):
    config = rate_limit_config(snapshot(EXAMPLE))
    rendered = yaml.safe_dump(
        json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True)), sort_keys=False, width=120
    )
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "rate limit filter changed; review and run with --update-golden"


def test_no_policy_means_no_filter():
    assert rate_limit_config(snapshot()) is None
    assert "envoy.filters.http.local_ratelimit" not in [f.name for f in inbound_managers(snapshot())[0].http_filters]


def test_filter_sits_before_the_router_on_every_inbound_chain():
    managers = inbound_managers(snapshot(policy("a", labels={"app": "ratings"})))
    assert len(managers) == 2  # PERMISSIVE by default: an mTLS chain and a plaintext chain
    assert all([f.name for f in m.http_filters][-2:] == [FILTER, "envoy.filters.http.router"] for m in managers)


def test_every_matched_limit_must_pass_and_unmatched_requests_are_not_limited():
    config = rate_limit_config(snapshot(EXAMPLE))
    assert (config.filter_enabled.default_value.numerator, config.filter_enforced.default_value.numerator) == (100, 100)
    assert not config.HasField("token_bucket") and config.always_consume_default_token_bucket.value is False
    assert config.enable_x_ratelimit_headers == 1  # DRAFT_VERSION_03


def test_tokens_refill_at_requests_per_period_up_to_burst():
    overall = rate_limit_config(snapshot(EXAMPLE)).descriptors[0]
    assert [(e.key, e.value) for e in overall.entries] == [("lattice.limit", "default/ratings/overall")]
    bucket = overall.token_bucket
    assert (bucket.max_tokens, bucket.tokens_per_fill.value, bucket.fill_interval.seconds) == (200, 100, 1)


def test_by_limits_get_a_bucket_per_value_and_a_shared_one_for_requests_without_it():
    descriptors = rate_limit_config(snapshot(EXAMPLE)).descriptors
    writes = [
        [(e.key, e.value) for e in d.entries]
        for d in descriptors
        if d.entries[0].value == "default/ratings/writes-per-client"
    ]
    assert writes == [
        [("lattice.limit", "default/ratings/writes-per-client"), ("lattice.path", "true")],
        [("lattice.limit", "default/ratings/writes-per-client"), ("lattice.path", "true"), ("lattice.by", "")],
    ]


def test_client_identity_comes_from_the_verified_peer_certificate():
    source = rate_limit_config(snapshot(EXAMPLE)).rate_limits[1]
    cel = expr_pb2.Descriptor()
    source.actions[-1].extension.typed_config.Unpack(cel)
    assert (cel.descriptor_key, cel.text, cel.skip_if_error) == (
        "lattice.by",
        "connection.uri_san_peer_certificate",
        True,
    )


def test_path_is_matched_without_the_query_and_literals_are_escaped():
    sources = rate_limit_config(snapshot(EXAMPLE)).rate_limits
    texts = []
    for source in sources[1:]:
        cel = expr_pb2.Descriptor()
        source.actions[1].extension.typed_config.Unpack(cel)
        texts.append(cel.text)
    assert texts == [
        'request.url_path.startsWith("/api/")',
        'request.url_path.matches("^(?:/users/[^/]+/\\"quoted\\")$")',
    ]


def test_methods_and_headers_are_typed_header_matchers():
    first = rate_limit_config(snapshot(EXAMPLE)).rate_limits[1].actions[0].header_value_match
    assert [(h.name, h.string_match.WhichOneof("match_pattern")) for h in first.headers] == [
        (":method", "safe_regex"),
        ("x-tenant", "exact"),
    ]
    assert first.headers[0].string_match.safe_regex.regex == "POST|PUT"


@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        ([policy("mesh", "istio-system")], ["istio-system/mesh/limits[0]"]),
        ([policy("mesh", "istio-system"), policy("ns")], ["default/ns/limits[0]"]),
        (
            [policy("mesh", "istio-system"), policy("ns"), policy("mine", labels={"app": "ratings"})],
            ["default/mine/limits[0]"],
        ),
        (
            [policy("a", labels={"app": "ratings"}), policy("b", labels={"version": "v1"})],
            ["default/a/limits[0]", "default/b/limits[0]"],
        ),
        ([policy("other", labels={"app": "reviews"}), policy("ns")], ["default/ns/limits[0]"]),
        ([policy("elsewhere", "foo")], []),
        ([policy("root-selector", "istio-system", labels={"app": "ratings"})], []),
    ],
    ids=[
        "mesh-wide",
        "namespace-beats-mesh",
        "workload-beats-both",
        "same-level-combine",
        "selector-misses",
        "other-namespace",
        "root-selector-is-not-mesh-wide",
    ],
)
def test_most_specific_level_wins_and_policies_at_it_combine(docs, expected):
    assert limit_keys(snapshot(*docs)) == expected


def test_policies_only_reach_the_workloads_they_select():
    snap = snapshot(policy("mine", labels={"app": "ratings"}))
    assert limit_keys(snap, RATINGS) == ["default/mine/limits[0]"]
    assert rate_limit_config(snap, PRODUCTPAGE) is None


def test_strict_mtls_has_one_chain_with_the_filter():
    strict = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: "
        "istio-system}\nspec: {mtls: {mode: STRICT}}\n"
    )
    managers = inbound_managers(snapshot(policy("a"), peer_auth=strict))
    assert len(managers) == 1 and FILTER in [f.name for f in managers[0].http_filters]


def test_output_is_byte_identical_across_runs():
    a = rate_limit_config(snapshot(EXAMPLE)).SerializeToString(deterministic=True)
    assert a == rate_limit_config(snapshot(EXAMPLE)).SerializeToString(deterministic=True)


def test_tcp_workloads_have_no_http_filter_to_limit():
    tcp = replace(RATINGS, protocol="tcp")
    snap = MeshSnapshot(
        "t", (*WORKLOADS[:4], tcp, *WORKLOADS[5:]), rate_limit_policies=tuple(parse_documents(policy("a")))
    )
    listeners = dict(translate(snap, tcp).by_type[LISTENER])
    (inbound,) = [listener for name, listener in listeners.items() if name.startswith("inbound|")]
    assert inbound.filter_chains[0].filters[0].name == "envoy.filters.network.tcp_proxy"
