"""The RBAC evaluator behind `lattice authz check`: Envoy's semantics on hand-built RBAC configs."""

from __future__ import annotations

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, string_pb2, value_pb2

from lattice.translate.explain import Request, Unexplainable, decide, template_regex

ANY = rbac_pb2.Principal(any=True)


def _policy(permission: rbac_pb2.Permission, principal: rbac_pb2.Principal = ANY) -> rbac_pb2.Policy:
    return rbac_pb2.Policy(permissions=[permission], principals=[principal])


def _path(prefix: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(prefix=prefix)))


def _stage(action, policies: dict, shadow: bool = False):
    return ("rbac", rbac_pb2.RBAC(action=action, policies=policies), shadow)


DENY_ADMIN = _stage(rbac_pb2.RBAC.DENY, {"ns[default]-policy[no-admin]-rule[0]": _policy(_path("/admin"))})
ALLOW_PUBLIC = _stage(rbac_pb2.RBAC.ALLOW, {"ns[default]-policy[public]-rule[0]": _policy(_path("/public/"))})


def test_no_stages_allows():
    assert decide([], Request()).allowed


def test_deny_then_allow_in_filter_order():
    stages = [DENY_ADMIN, ALLOW_PUBLIC]
    d = decide(stages, Request(path="/admin/users"))
    assert (d.allowed, d.reason) == (False, "denied by ns[default]-policy[no-admin]-rule[0]")
    d = decide(stages, Request(path="/public/x?y=1"))
    assert (d.allowed, d.reason) == (True, "allowed by ns[default]-policy[public]-rule[0]")
    d = decide(stages, Request(path="/private"))
    assert not d.allowed and "none of their rules matched" in d.reason


def test_an_allow_stage_with_no_policies_denies_everything():
    assert not decide([_stage(rbac_pb2.RBAC.ALLOW, {})], Request()).allowed


def test_shadow_stages_are_reported_not_enforced():
    d = decide([_stage(rbac_pb2.RBAC.DENY, DENY_ADMIN[1].policies, shadow=True)], Request(path="/admin"))
    assert d.allowed and d.dry_run[0].denies and d.dry_run[0].matched == ("ns[default]-policy[no-admin]-rule[0]",)


def test_principals_need_a_verified_certificate():
    principal = rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(exact="spiffe://cluster.local/ns/default/sa/a")
        )
    )
    stages = [_stage(rbac_pb2.RBAC.ALLOW, {"p": _policy(rbac_pb2.Permission(any=True), principal)})]
    assert decide(stages, Request(peer_uri="spiffe://cluster.local/ns/default/sa/a")).allowed
    assert not decide(stages, Request(peer_uri="spiffe://cluster.local/ns/default/sa/b")).allowed
    assert not decide(stages, Request(peer_uri=None)).allowed


def test_headers_ports_ips_and_not_rules():
    header = rbac_pb2.Permission(
        header=rc.HeaderMatcher(name="x-role", string_match=string_pb2.StringMatcher(exact="admin"))
    )
    port = rbac_pb2.Permission(destination_port=9080)
    both = rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=[header, rbac_pb2.Permission(not_rule=port)]))
    stages = [
        _stage(
            rbac_pb2.RBAC.ALLOW,
            {
                "p": _policy(
                    both, rbac_pb2.Principal(remote_ip={"address_prefix": "10.0.0.0", "prefix_len": {"value": 8}})
                )
            },
        )
    ]
    ok = Request(headers={"x-role": "admin"}, destination_port=8080, source_ip="10.1.2.3")
    assert decide(stages, ok).allowed
    assert not decide(stages, Request(headers={"x-role": "admin"}, destination_port=9080, source_ip="10.1.2.3")).allowed
    assert not decide(
        stages, Request(headers={"x-role": "admin"}, destination_port=8080, source_ip="192.168.1.1")
    ).allowed
    assert not decide(stages, Request(headers={}, destination_port=8080, source_ip="10.1.2.3")).allowed


def test_jwt_claims_from_metadata():
    matcher = metadata_pb2.MetadataMatcher(
        filter="envoy.filters.http.jwt_authn",
        path=[
            metadata_pb2.MetadataMatcher.PathSegment(key="https://issuer"),
            metadata_pb2.MetadataMatcher.PathSegment(key="groups"),
        ],
        value=value_pb2.ValueMatcher(
            list_match=value_pb2.ListMatcher(
                one_of=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact="admins"))
            )
        ),
    )
    stages = [
        _stage(rbac_pb2.RBAC.ALLOW, {"p": _policy(rbac_pb2.Permission(any=True), rbac_pb2.Principal(metadata=matcher))})
    ]
    assert decide(
        stages, Request(metadata={"envoy.filters.http.jwt_authn": {"https://issuer": {"groups": ["dev", "admins"]}}})
    ).allowed
    assert not decide(
        stages, Request(metadata={"envoy.filters.http.jwt_authn": {"https://issuer": {"groups": ["dev"]}}})
    ).allowed
    assert not decide(stages, Request()).allowed


def test_uri_templates():
    assert template_regex("/users/{*}/profile") == "/users/[^/?#]+/profile"
    import re

    assert re.fullmatch(template_regex("/files/{**}"), "/files/a/b/c")
    assert not re.fullmatch(template_regex("/users/{*}/profile"), "/users/a/b/profile")


def test_unmodelled_constructs_are_refused_not_guessed():
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[ANY])
    policy.condition.const_expr.bool_value = True
    with pytest.raises(Unexplainable):
        decide([_stage(rbac_pb2.RBAC.ALLOW, {"p": policy})], Request())
