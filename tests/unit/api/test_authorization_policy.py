"""AuthorizationPolicy validation: Istio's examples parse; what Istio refuses is refused here, with
the path of the field and the reason; the MeshConfig extensionProviders file likewise."""

from __future__ import annotations

import json

import pytest

from lattice.api import ValidationError, kind_for, parse_documents, validate_object
from lattice.api.mesh_config import parse_mesh_config

# Istio's reference examples (authorization-policy docs), as written there.
ISTIO_EXAMPLES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: httpbin-deny
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: CUSTOM
  provider:
    name: my-custom-authz
  rules:
  - to:
    - operation:
        paths: ["/admin/*", "/v1/{*}/users/{**}"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  action: DENY
  rules:
  - to:
    - operation:
        notPorts: ["8080"]
    when:
    - key: request.auth.claims[groups][team]
      notValues: ["admins"]
    - key: source.ip
      values: ["10.1.0.0/16", "2001:db8::1"]
    - key: experimental.envoy.filters.network.mysql_proxy[db.table]
      values: ["[update]"]
"""


def errors(spec: dict, metadata: dict | None = None) -> list[tuple[str, str]]:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata or {"name": "p"},
        "spec": spec,
    }
    with pytest.raises(ValidationError) as e:
        validate_object(doc)
    return [(f.path, f.message) for f in e.value.errors]


def test_istio_examples_parse():
    resources = parse_documents(ISTIO_EXAMPLES)
    assert [r.name for r in resources] == ["httpbin", "httpbin-deny", "allow-nothing", "ext-authz", "dry"]
    assert resources[0].spec.rules[0].sources[1].namespaces == ["dev"]
    assert resources[2].spec.action == "ALLOW" and resources[2].spec.rules == []


def test_kind_is_known_by_its_short_name():
    assert kind_for("ap").kind == "AuthorizationPolicy"
    assert kind_for("authorizationpolicies").kind == "AuthorizationPolicy"


def test_a_round_trip_keeps_from_as_written():
    resource = parse_documents(ISTIO_EXAMPLES)[0]
    assert "from" in resource.spec_dict()["rules"][0]
    assert validate_object(json.loads(json.dumps(resource.to_dict()))).spec == resource.spec


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"rules": [{"from": []}]}, "spec.rules[0].from", "must not be empty"),
        ({"rules": [{"to": []}]}, "spec.rules[0].to", "must not be empty"),
        ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source", "must not be empty"),
        ({"rules": [{"from": [{}]}]}, "spec.rules[0].from[0].source", "required"),
        ({"rules": [{"to": [{"operation": {}}]}]}, "spec.rules[0].to[0].operation", "must not be empty"),
        (
            {"rules": [{"from": [{"source": {"principals": [""]}}]}]},
            "spec.rules[0].from[0].source.principals",
            "empty value",
        ),
        (
            {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]},
            "spec.rules[0].from[0].source.ipBlocks",
            "not an IP address",
        ),
        (
            {"rules": [{"from": [{"source": {"notRemoteIpBlocks": ["x/8"]}}]}]},
            "spec.rules[0].from[0].source.notRemoteIpBlocks",
            "not an IP address",
        ),
        (
            {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]},
            "spec.rules[0].to[0].operation.ports",
            "not a port",
        ),
        (
            {"rules": [{"to": [{"operation": {"notPorts": [70000]}}]}]},
            "spec.rules[0].to[0].operation.notPorts",
            "not a port",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{**}/{*}"]}}]}]},
            "spec.rules[0].to[0].operation.paths",
            "{**} must be the last",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{x}"]}}]}]},
            "spec.rules[0].to[0].operation.paths",
            "beyond a supported template",
        ),
        (
            {"rules": [{"to": [{"operation": {"notPaths": ["/a{*}"]}}]}]},
            "spec.rules[0].to[0].operation.notPaths",
            "beyond a supported template",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{*}/b c"]}}]}]},
            "spec.rules[0].to[0].operation.paths",
            "not a valid path literal",
        ),
        (
            {"rules": [{"when": [{"key": "request.headers[x]"}]}]},
            "spec.rules[0].when[0]",
            "at least one of `values` or `notValues`",
        ),
        (
            {"rules": [{"when": [{"key": "request.method", "values": ["GET"]}]}]},
            "spec.rules[0].when[0].key",
            "unknown attribute",
        ),
        ({"rules": [{"when": [{"key": "request.headers", "values": ["x"]}]}]}, "spec.rules[0].when[0].key", "[name]"),
        (
            {"rules": [{"when": [{"key": "request.headers[a][b]", "values": ["x"]}]}]},
            "spec.rules[0].when[0].key",
            "one header name",
        ),
        (
            {"rules": [{"when": [{"key": "request.auth.claims[a]b", "values": ["x"]}]}]},
            "spec.rules[0].when[0].key",
            "[name]",
        ),
        (
            {"rules": [{"when": [{"key": "experimental.envoy.filters.x", "values": ["x"]}]}]},
            "spec.rules[0].when[0].key",
            "experimental.envoy.filters.<filter>[<metadata key>]",
        ),
        ({"rules": [{"when": [{"key": "destination.port", "values": ["x"]}]}]}, "spec.rules[0].when[0]", "not a port"),
        (
            {"rules": [{"when": [{"key": "remote.ip", "notValues": ["nope"]}]}]},
            "spec.rules[0].when[0]",
            "not an IP address",
        ),
        ({"action": "CUSTOM"}, "spec", "`provider` must be set"),
        ({"provider": {"name": "x"}}, "spec", "only allowed with action CUSTOM"),
        ({"action": "allow"}, "spec.action", "ALLOW"),
        ({"targetRefs": [{"kind": "Service", "name": "x"}]}, "spec.targetRefs", "waypoint"),
        (
            {"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "x"}},
            "spec.targetRef",
            "Gateway API gateways",
        ),
        (
            {"rules": [{"from": [{"source": {"serviceAccounts": ["a/b"]}}]}]},
            "spec.rules[0].from[0].source.serviceAccounts",
            "unknown field",
        ),
        ({"rules": [None]}, "spec.rules[0]", "dictionary"),
    ],
)
def test_refusals_name_the_field_and_the_reason(spec, path, reason):
    found = errors(spec)
    assert any(p == path and reason in m for p, m in found), found


def test_dry_run_annotation_is_checked():
    assert errors({}, {"name": "p", "annotations": {"istio.io/dry-run": "maybe"}}) == [
        ("metadata.annotations.istio.io/dry-run", "'maybe' is not a boolean; use \"true\" or \"false\"")
    ]
    found = errors(
        {"action": "CUSTOM", "provider": {"name": "x"}}, {"name": "p", "annotations": {"istio.io/dry-run": "true"}}
    )
    assert found[0][0] == "metadata.annotations.istio.io/dry-run" and "CUSTOM" in found[0][1]


def test_ports_written_as_numbers_mean_the_same():
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p"},
        "spec": {"rules": [{"to": [{"operation": {"ports": [8080, "9090"]}}]}]},
    }
    assert validate_object(doc).spec.rules[0].operations[0].ports == ["8080", "9090"]


def test_mesh_config_extension_providers():
    config = parse_mesh_config(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000, "
        "timeout: 2s, headersToUpstreamOnAllow: [x-user]}\n"
        "- name: b\n  envoyExtAuthzGrpc: {service: foo/authz-grpc.foo.svc.cluster.local, port: 9000, failOpen: true}\n",
        "mesh.yaml",
    )
    a, b = config.extension_providers
    assert a.authorizer.timeout_seconds == 2 and a.envoy_ext_authz_http.headers_to_upstream_on_allow == ["x-user"]
    assert b.authorizer.host == "authz-grpc.foo.svc.cluster.local" and b.authorizer.timeout_seconds == 600


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        (
            "extensionProviders:\n- name: a\n",
            "extensionProviders[0]",
            "exactly one of envoyExtAuthzHttp or envoyExtAuthzGrpc",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: x, port: 0}\n",
            "extensionProviders[0].envoyExtAuthzHttp.port",
            "greater than or equal to 1",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: x, port: 1, statusOnError: '999'}\n",
            "extensionProviders[0].envoyExtAuthzHttp.statusOnError",
            "unsupported statusOnError",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: x, port: 1, pathPrefix: check}\n",
            "extensionProviders[0].envoyExtAuthzHttp.pathPrefix",
            "must begin with '/'",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: 'a b', port: 1}\n",
            "extensionProviders[0].envoyExtAuthzHttp.service",
            "not a host name",
        ),
        (
            "extensionProviders:\n- {name: a, envoyExtAuthzGrpc: {service: x, port: 1}}\n- {name: a, "
            "envoyExtAuthzGrpc: {service: y, port: 1}}\n",
            "extensionProviders",
            "repeated: a",
        ),
        (
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            "outboundTrafficPolicy",
            "MeshConfig field Lattice does not read",
        ),
    ],
)
def test_mesh_config_refusals(text, path, reason):
    with pytest.raises(ValidationError) as e:
        parse_mesh_config(text, "mesh.yaml")
    assert any(f.path == path and reason in f.message for f in e.value.errors), e.value.errors
