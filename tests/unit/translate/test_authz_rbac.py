"""AuthorizationPolicy translation: which policies a sidecar enforces, the RBAC each field compiles
to (Istio's matchers), the filters' order and modes (dry-run, AUDIT, CUSTOM), TCP's rules, and a
real Envoy accepting the whole result."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.api.authorization import Rule
from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh import MeshSnapshot
from lattice.mesh.model import Workload
from lattice.translate import authz, ext_authz, lds
from lattice.translate.authz import Target


def workload(service: str, namespace: str = "default", protocol: str = "http", n: int = 2) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-v1-{n}.{namespace}",
            "name": f"{service}-v1",
            "namespace": namespace,
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": "v1"},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": protocol,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
    )


SERVER, OTHER_NS, TCP = workload("server"), workload("server", "other", n=3), workload("db", protocol="tcp", n=4)
AUTHZ_SVC = workload("authz", "auth", n=5)
PROVIDERS = parse_mesh_config(
    "extensionProviders:\n"
    "- {name: http-authz, envoyExtAuthzHttp: {service: 127.0.0.1, port: 9191, statusOnError: '503', pathPrefix: "
    "/check, includeRequestHeadersInCheck: [x-allow, 'x-user-*'], headersToDownstreamOnDeny: [x-reason]}}\n"
    "- {name: mesh-authz, envoyExtAuthzGrpc: {service: authz.auth.svc.cluster.local, port: 9080, failOpen: true}}\n",
    "mesh.yaml",
).extension_providers
HTTP_TARGET = Target(SERVER, False, ("https://issuer.example", "other-iss"), 9080, 30002)


def ap(spec: dict, name: str = "p", namespace: str = "default", dry_run: bool = False) -> str:
    metadata = {
        "name": name,
        "namespace": namespace,
        **({"annotations": {"istio.io/dry-run": "true"}} if dry_run else {}),
    }
    return json.dumps(
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec}
    )


def snapshot(*docs: str) -> MeshSnapshot:
    resources = [r for d in docs for r in parse_documents(d)]
    return MeshSnapshot(
        "t",
        (SERVER, OTHER_NS, TCP, AUTHZ_SVC),
        authorization_policies=tuple(r for r in resources if r.kind == "AuthorizationPolicy"),
        peer_authentications=tuple(r for r in resources if r.kind == "PeerAuthentication"),
        extension_providers=tuple(PROVIDERS),
    )


def rule(**fields) -> Rule:
    return Rule.model_validate(fields)


def as_dict(message) -> dict:
    return json_format.MessageToDict(message)


def compiled(r: Rule, action: str = "ALLOW", target: Target = HTTP_TARGET) -> dict:
    return as_dict(authz.compile_rule(r, action, target))


def first_permission(r: Rule) -> list:
    return compiled(r)["permissions"][0]["andRules"]["rules"]


def first_principal(r: Rule) -> list:
    return compiled(r)["principals"][0]["andIds"]["ids"]


# --- scoping ---------------------------------------------------------------------------------------


def test_scope_root_namespace_namespace_and_selector():
    snap = snapshot(
        ap({}, "mesh-wide", "istio-system"),
        ap({"selector": {"matchLabels": {"app": "server"}}}, "root-selector", "istio-system"),
        ap({}, "default-ns", "default"),
        ap({"selector": {"matchLabels": {"app": "db"}}}, "db-only", "default"),
        ap({}, "other-ns", "other"),
    )
    names = lambda w: [p.name for p in snap.authorization_policies_for(w)]  # noqa: E731
    assert names(SERVER) == ["mesh-wide", "root-selector", "default-ns"]
    # Istio: a selector in the root namespace matches workloads of every namespace.
    assert names(OTHER_NS) == ["mesh-wide", "root-selector", "other-ns"]
    assert names(TCP) == ["mesh-wide", "default-ns", "db-only"]


def test_no_policy_no_filter():
    assert authz.rbac_configs(snapshot(), SERVER) == [] and authz.http_filters(snapshot(), SERVER) == []


# --- actions, names, modes ---------------------------------------------------------------------------


def test_allow_nothing_is_an_allow_filter_that_matches_nothing():
    [(action, rbac, shadow)] = authz.rbac_configs(snapshot(ap({}, "allow-nothing")), SERVER)
    assert (action, shadow, rbac.action) == ("ALLOW", False, rbac_pb2.RBAC.ALLOW)
    assert as_dict(rbac)["policies"] == {
        "ns[default]-policy[allow-nothing]-rule[0]": {
            "permissions": [{"notRule": {"any": True}}],
            "principals": [{"notId": {"any": True}}],
        }
    }


def test_evaluation_order_names_and_dry_run():
    snap = snapshot(
        ap({"action": "ALLOW", "rules": [{}, {"to": [{"operation": {"methods": ["GET"]}}]}]}, "allow"),
        ap({"action": "DENY", "rules": [{}]}, "deny-dry", dry_run=True),
        ap({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}, "deny"),
        ap({"action": "AUDIT", "rules": [{}]}, "audit"),
        ap({"action": "CUSTOM", "provider": {"name": "http-authz"}, "rules": [{}]}, "custom"),
    )
    configs = authz.rbac_configs(snap, SERVER)
    assert [(a, s) for a, _, s in configs] == [
        ("CUSTOM", False),
        ("AUDIT", False),
        ("DENY", False),
        ("DENY", True),
        ("ALLOW", False),
    ]
    assert sorted(configs[4][1].policies) == ["ns[default]-policy[allow]-rule[0]", "ns[default]-policy[allow]-rule[1]"]
    assert list(configs[0][1].policies) == ["istio-ext-authz-http-authz-ns[default]-policy[custom]-rule[0]"]
    assert configs[1][1].action == rbac_pb2.RBAC.LOG  # AUDIT: Envoy's LOG action, never denies
    filters = authz.http_filters(snap, SERVER)
    assert [f.name for f in filters] == [
        "lattice.authz.custom",
        "envoy.filters.http.ext_authz",
        "lattice.authz.audit",
        "lattice.authz.deny",
        "lattice.authz.allow",
    ]
    deny = http_rbac.RBAC()
    filters[3].typed_config.Unpack(deny)
    assert list(deny.rules.policies) == ["ns[default]-policy[deny]-rule[0]"]
    assert list(deny.shadow_rules.policies) == ["ns[default]-policy[deny-dry]-rule[0]"]
    assert deny.shadow_rules_stat_prefix == "istio_dry_run_deny_"


def test_only_dry_run_allow_enforces_nothing():
    [filter_] = authz.http_filters(snapshot(ap({}, "would-deny-all", dry_run=True)), SERVER)
    config = http_rbac.RBAC()
    filter_.typed_config.Unpack(config)
    assert not config.HasField("rules") and list(config.shadow_rules.policies) == [
        "ns[default]-policy[would-deny-all]-rule[0]"
    ]
    assert config.shadow_rules_stat_prefix == "istio_dry_run_allow_"


def test_filters_sit_after_authentication_and_before_rate_limits_and_router():
    chain = lds.inbound(snapshot(ap({"action": "DENY", "rules": [{}]})), SERVER).filter_chains[0]
    manager = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    assert [f.name for f in manager.http_filters][-2:] == ["lattice.authz.deny", "envoy.filters.http.router"]


# --- fields ----------------------------------------------------------------------------------------


def test_principals_exact_prefix_suffix_any():
    ids = first_principal(
        rule(
            **{
                "from": [
                    {"source": {"principals": ["cluster.local/ns/a/sa/b", "cluster.local/ns/a/*", "*/sa/admin", "*"]}}
                ]
            }
        )
    )
    matchers = [i["authenticated"]["principalName"] for i in ids[0]["orIds"]["ids"]]
    assert matchers == [
        {"exact": "spiffe://cluster.local/ns/a/sa/b"},
        {"prefix": "spiffe://cluster.local/ns/a/"},
        {"safeRegex": {"regex": "spiffe://.*/sa/admin"}},
        {"safeRegex": {"regex": ".+"}},
    ]


def test_not_fields_are_negated_ors():
    ids = first_principal(rule(**{"from": [{"source": {"notPrincipals": ["x", "y"], "notNamespaces": ["kube-*"]}}]}))
    assert ids[0]["notId"]["orIds"]["ids"][1] == {"authenticated": {"principalName": {"exact": "spiffe://y"}}}
    assert ids[1] == {
        "notId": {
            "orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/kube-.*/.*"}}}}]}
        }
    }


def test_ip_blocks():
    ids = first_principal(
        rule(**{"from": [{"source": {"ipBlocks": ["10.1.2.3", "10.0.0.0/8"], "remoteIpBlocks": ["2001:db8::/32"]}}]})
    )
    assert ids[0] == {"orIds": {"ids": [{"remoteIp": {"addressPrefix": "2001:db8::", "prefixLen": 32}}]}}
    assert ids[1]["orIds"]["ids"] == [
        {"directRemoteIp": {"addressPrefix": "10.1.2.3", "prefixLen": 32}},
        {"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}},
    ]


def test_operation_fields():
    rules = first_permission(
        rule(
            to=[
                {
                    "operation": {
                        "hosts": ["Example.com", "*.example.com"],
                        "methods": ["GET"],
                        "notPaths": ["/private/*"],
                        "ports": ["30002", "8080"],
                    }
                }
            ]
        )
    )
    hosts, methods, not_paths, ports = rules
    assert hosts["orRules"]["rules"][0] == {
        "header": {"name": ":authority", "stringMatch": {"exact": "Example.com", "ignoreCase": True}}
    }
    assert hosts["orRules"]["rules"][1]["header"]["stringMatch"] == {"suffix": ".example.com", "ignoreCase": True}
    assert methods == {"orRules": {"rules": [{"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}]}}
    assert not_paths == {"notRule": {"orRules": {"rules": [{"urlPath": {"path": {"prefix": "/private/"}}}]}}}
    # The app's (container) port is the listener's service port here.
    assert ports == {"orRules": {"rules": [{"destinationPort": 9080}, {"destinationPort": 8080}]}}


@pytest.mark.parametrize(
    ("path", "matcher"),
    [
        ("/exact", {"urlPath": {"path": {"exact": "/exact"}}}),
        ("/a/*", {"urlPath": {"path": {"prefix": "/a/"}}}),
        ("*.png", {"urlPath": {"path": {"suffix": ".png"}}}),
        ("*", {"urlPath": {"path": {"safeRegex": {"regex": ".+"}}}}),
        (
            "/v1/{*}/users/{**}",
            {
                "uriTemplate": {
                    "name": "uri-template",
                    "typedConfig": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                        "pathTemplate": "/v1/*/users/**",
                    },
                }
            },
        ),
    ],
)
def test_paths(path, matcher):
    assert first_permission(rule(to=[{"operation": {"paths": [path]}}])) == [{"orRules": {"rules": [matcher]}}]


def test_when_conditions_go_to_their_side_and_join_every_entry():
    r = rule(
        **{
            "from": [{"source": {"namespaces": ["a"]}}, {"source": {"namespaces": ["b"]}}],
            "when": [
                {"key": "request.headers[X-Tenant]", "values": ["t1", "*"]},
                {"key": "destination.ip", "values": ["127.0.0.1"]},
                {"key": "connection.sni", "values": ["*.local"]},
                {"key": "source.principal", "notValues": ["cluster.local/ns/a/sa/bad"]},
                {"key": "experimental.envoy.filters.network.mysql_proxy[db.table]", "values": ["[update]"]},
            ],
        }
    )
    policy = compiled(r)
    assert len(policy["principals"]) == 2
    for principal in policy["principals"]:
        ids = principal["andIds"]["ids"]
        assert ids[1] == {
            "orIds": {
                "ids": [
                    {"header": {"name": "X-Tenant", "stringMatch": {"exact": "t1"}}},
                    {"header": {"name": "X-Tenant", "presentMatch": True}},
                ]
            }
        }
        assert ids[2]["notId"]["orIds"]["ids"][0]["authenticated"]["principalName"] == {
            "exact": "spiffe://cluster.local/ns/a/sa/bad"
        }
    permissions = policy["permissions"][0]["andRules"]["rules"]
    assert permissions[0] == {
        "orRules": {"rules": [{"destinationIp": {"addressPrefix": "127.0.0.1", "prefixLen": 32}}]}
    }
    assert permissions[1] == {"orRules": {"rules": [{"requestedServerName": {"suffix": ".local"}}]}}
    assert permissions[2]["orRules"]["rules"][0]["metadata"] == {
        "filter": "envoy.filters.network.mysql_proxy",
        "path": [{"key": "db.table"}],
        "value": {"listMatch": {"oneOf": {"stringMatch": {"exact": "update"}}}},
    }


def test_request_principals_read_each_issuers_verified_sub():
    ids = first_principal(
        rule(**{"from": [{"source": {"requestPrincipals": ["https://issuer.example/alice", "other-iss/*", "*"]}}]})
    )[0]["orIds"]["ids"]
    alice, other, anyone = ids
    assert alice == {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": "https://issuer.example"}, {"key": "sub"}],
            "value": {"stringMatch": {"exact": "alice"}},
        }
    }
    assert other["metadata"]["path"][0] == {"key": "other-iss"} and other["metadata"]["value"] == {
        "stringMatch": {"safeRegex": {"regex": ".*"}}
    }
    assert [i["metadata"]["path"][0]["key"] for i in anyone["orIds"]["ids"]] == ["https://issuer.example", "other-iss"]


def test_request_principal_suffix_can_span_the_issuer():
    matcher = authz._sub_matcher("*ple/alice", "https://issuer.example")
    assert matcher.safe_regex.regex == "(?:.*ple/alice)|(?:alice)"
    assert authz._sub_matcher("https://other/x", "https://issuer.example") is None


def test_without_issuers_no_request_has_a_principal_or_claims():
    target = replace(HTTP_TARGET, issuers=())
    ids = compiled(
        rule(**{"from": [{"source": {"requestPrincipals": ["*"], "notRequestPrincipals": ["x/y"]}}]}), target=target
    )["principals"][0]["andIds"]["ids"]
    assert ids == [
        {"orIds": {"ids": [{"notId": {"any": True}}]}},
        {"notId": {"orIds": {"ids": [{"notId": {"any": True}}]}}},
    ]


def test_claims_nested_lists_audiences_presenter():
    r = rule(
        when=[
            {"key": "request.auth.claims[groups][team]", "values": ["dev"]},
            {"key": "request.auth.audiences", "values": ["api"]},
            {"key": "request.auth.presenter", "values": ["web"]},
        ]
    )
    target = replace(HTTP_TARGET, issuers=("iss",))
    ids = compiled(r, target=target)["principals"][0]["andIds"]["ids"]
    claim = ids[0]["orIds"]["ids"][0]["metadata"]
    assert claim["path"] == [{"key": "iss"}, {"key": "groups"}, {"key": "team"}]
    assert claim["value"] == {
        "orMatch": {
            "valueMatchers": [
                {"stringMatch": {"exact": "dev"}},
                {"listMatch": {"oneOf": {"stringMatch": {"exact": "dev"}}}},
            ]
        }
    }
    assert [i["orIds"]["ids"][0]["metadata"]["path"][1]["key"] for i in ids[1:]] == ["aud", "azp"]


# --- TCP -------------------------------------------------------------------------------------------


def test_tcp_allow_rule_with_http_fields_is_dropped_and_deny_drops_the_field():
    tcp = replace(HTTP_TARGET, tcp=True)
    r = rule(to=[{"operation": {"ports": ["5432"], "methods": ["GET"]}}])
    assert authz.compile_rule(r, "ALLOW", tcp) is None
    deny = as_dict(authz.compile_rule(r, "DENY", tcp))
    assert deny["permissions"][0]["andRules"]["rules"] == [{"orRules": {"rules": [{"destinationPort": 5432}]}}]
    only_http = as_dict(authz.compile_rule(rule(to=[{"operation": {"paths": ["/x"]}}]), "DENY", tcp))
    assert only_http["permissions"][0]["andRules"]["rules"] == [{"any": True}]  # denies every connection


def test_tcp_workload_gets_network_rbac_before_tcp_proxy():
    snap = snapshot(
        ap({"selector": {"matchLabels": {"app": "db"}}, "rules": [{"to": [{"operation": {"ports": ["9080"]}}]}]})
    )
    chain = lds.inbound(snap, TCP).filter_chains[0]
    assert [f.name for f in chain.filters] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    config = network_rbac.RBAC()
    chain.filters[0].typed_config.Unpack(config)
    assert config.stat_prefix == "tcp." and list(config.rules.policies) == ["ns[default]-policy[p]-rule[0]"]


# --- CUSTOM ----------------------------------------------------------------------------------------


def test_custom_http_provider_outside_the_mesh():
    snap = snapshot(
        ap(
            {
                "action": "CUSTOM",
                "provider": {"name": "http-authz"},
                "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}],
            }
        )
    )
    marker, check = authz.http_filters(snap, SERVER)
    rbac = http_rbac.RBAC()
    marker.typed_config.Unpack(rbac)
    assert not rbac.HasField("rules") and rbac.shadow_rules_stat_prefix == "istio_ext_authz_"
    config = ext_authz_pb2.ExtAuthz()
    check.typed_config.Unpack(config)
    assert as_dict(config.filter_enabled_metadata) == {
        "filter": "envoy.filters.http.rbac",
        "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"stringMatch": {"prefix": "istio-ext-authz-http-authz-"}},
    }
    service = config.http_service
    assert (service.server_uri.cluster, service.path_prefix, service.server_uri.timeout.seconds) == (
        "outbound|9191||127.0.0.1",
        "/check",
        600,
    )
    assert config.status_on_error.code == 503 and not config.failure_mode_allow
    assert as_dict(config.allowed_headers) == {
        "patterns": [{"exact": "x-allow", "ignoreCase": True}, {"prefix": "x-user-", "ignoreCase": True}]
    }
    assert as_dict(service.authorization_response) == {
        "allowedClientHeaders": {"patterns": [{"exact": "x-reason", "ignoreCase": True}]}
    }
    [cluster] = ext_authz.clusters(snap, SERVER)
    assert (
        cluster.name == "outbound|9191||127.0.0.1"
        and cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 9191
    )


def test_custom_grpc_provider_in_the_mesh_uses_its_outbound_cluster_also_on_tcp():
    doc = ap({"action": "CUSTOM", "provider": {"name": "mesh-authz"}, "rules": [{}]}, "c", "istio-system")
    snap = snapshot(doc)
    assert ext_authz.clusters(snap, SERVER) == []
    check = ext_authz_pb2.ExtAuthz()
    authz.http_filters(snap, SERVER)[1].typed_config.Unpack(check)
    assert (
        check.grpc_service.envoy_grpc.cluster_name == "outbound|9080||authz.auth.svc.cluster.local"
        and check.failure_mode_allow
    )
    assert [f.name for f in lds.inbound(snap, TCP).filter_chains[0].filters] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
        "envoy.filters.network.tcp_proxy",
    ]


def test_custom_http_provider_is_skipped_on_tcp_as_istio_does():
    snap = snapshot(ap({"action": "CUSTOM", "provider": {"name": "http-authz"}, "rules": [{}]}, "c", "istio-system"))
    assert authz.rbac_configs(snap, TCP) == []


def test_unknown_or_several_providers_deny_what_the_policies_select():
    snap = snapshot(
        ap(
            {"action": "CUSTOM", "provider": {"name": "nope"}, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]},
            "c",
        )
    )
    [(action, rbac, shadow)] = authz.rbac_configs(snap, SERVER)
    assert (action, shadow) == ("DENY", False) and list(rbac.policies) == [
        "ns[default]-policy[c]-rule[0]-deny-due-to-bad-CUSTOM-action"
    ]
    assert "not declared in the mesh config" in authz.custom_provider(snap, SERVER)[1]
    several = snapshot(
        ap({"action": "CUSTOM", "provider": {"name": "http-authz"}}, "a"),
        ap({"action": "CUSTOM", "provider": {"name": "mesh-authz"}}, "b"),
        ap({"action": "DENY", "rules": [{}]}, "d"),
    )
    [(action, rbac, _)] = authz.rbac_configs(several, SERVER)
    assert action == "DENY" and len(rbac.policies) == 3


# --- Envoy accepts it ------------------------------------------------------------------------------


ALL_FIELDS = {
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": ["cluster.local/ns/a/sa/b", "*"],
                        "notPrincipals": ["*/sa/x"],
                        "requestPrincipals": ["iss/sub", "*"],
                        "notRequestPrincipals": ["*x"],
                        "namespaces": ["a*"],
                        "notNamespaces": ["b"],
                        "ipBlocks": ["10.0.0.0/8"],
                        "notIpBlocks": ["10.1.0.0/16"],
                        "remoteIpBlocks": ["::1"],
                        "notRemoteIpBlocks": ["1.2.3.4"],
                    }
                }
            ],
            "to": [
                {
                    "operation": {
                        "hosts": ["a.com", "*.b.com", "c*"],
                        "notHosts": ["*"],
                        "ports": ["9080"],
                        "notPorts": ["1"],
                        "methods": ["GET"],
                        "notMethods": ["DELETE"],
                        "paths": ["/a", "/b/*", "*.c", "/d/{*}/e/{**}"],
                        "notPaths": ["*"],
                    }
                }
            ],
            "when": [
                {"key": "request.headers[x-a]", "values": ["1", "*"], "notValues": ["2*"]},
                {"key": "source.ip", "values": ["127.0.0.1"]},
                {"key": "remote.ip", "values": ["127.0.0.0/8"]},
                {"key": "source.namespace", "values": ["default"]},
                {"key": "source.principal", "values": ["cluster.local/*"]},
                {"key": "request.auth.principal", "values": ["iss/*"]},
                {"key": "request.auth.audiences", "values": ["aud"]},
                {"key": "request.auth.presenter", "values": ["azp"]},
                {"key": "request.auth.claims[groups][team]", "values": ["dev"]},
                {"key": "destination.ip", "values": ["127.0.0.1"]},
                {"key": "destination.port", "values": ["9080"]},
                {"key": "connection.sni", "values": ["*.local"]},
                {"key": "experimental.envoy.filters.network.mysql_proxy[db.table]", "values": ["[update]"]},
            ],
        }
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("target", [SERVER, TCP], ids=["http", "tcp"])
def test_envoy_validates_every_field_and_action(tmp_path, target):
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    selector = {"selector": {"matchLabels": {"app": target.service}}}
    disable = json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "d", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "DISABLE"}},
        }
    )
    snap = snapshot(
        disable,
        ap({**selector, **ALL_FIELDS}, "allow"),
        ap({**selector, "action": "DENY", **ALL_FIELDS}, "deny"),
        ap({**selector, "action": "AUDIT", **ALL_FIELDS}, "audit"),
        ap({**selector, "action": "DENY", **ALL_FIELDS}, "dry", dry_run=True),
        ap({**selector, "action": "CUSTOM", "provider": {"name": "mesh-authz"}, **ALL_FIELDS}, "custom"),
    )
    listener = json_format.MessageToDict(lds.inbound(snap, target))
    clusters = [
        {
            "name": n,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": n, "endpoints": []},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
        }
        for n in ("inbound|9080||", "outbound|9080||authz.auth.svc.cluster.local")
    ]
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps({"static_resources": {"listeners": [listener], "clusters": clusters}}))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(bootstrap)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
