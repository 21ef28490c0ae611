"""Golden files for every translator plugin: the Envoy config generated for the proxy a plugin
changes, as YAML (tests/golden/translate/plugins/), reviewed in diffs.

Refresh with `pytest tests/unit/translate --update-golden` and read the diff before committing.
Each case is the Bookinfo-shaped workloads of test_golden.py plus the resources of one plugin.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_golden import GOLDEN, WORKLOADS, _maps_sorted

from lattice.api import parse_documents
from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.model import SNAPSHOT_FIELDS, Upstream
from lattice.mesh.telemetry import mesh_telemetry
from lattice.translate import TYPE_ORDER, translate

PLUGINS = GOLDEN / "plugins"
PRODUCTPAGE, REVIEWS, RATINGS = WORKLOADS[0], WORKLOADS[1], WORKLOADS[4]
DB = dataclasses.replace(
    RATINGS,
    id="mongodb-v1-000008.default",
    name="mongodb-v1",
    service="mongodb",
    service_account="mongodb",
    address="127.0.10.8",
    port=27017,
    protocol="tcp",
)
# TCP and TLS services are reached through `--upstream` ports, or every port under `--capture`.
CAPTURED = dataclasses.replace(PRODUCTPAGE, capture=True, upstreams=(Upstream("mongodb", "default", 27017, 27017),))
GATEWAY = Workload.from_record(
    {
        "id": "ingressgateway-000009.istio-system",
        "name": "ingressgateway",
        "namespace": "istio-system",
        "service": "ingressgateway",
        "service_account": "istio-ingressgateway",
        "labels": {"istio": "ingressgateway"},
        "address": "127.0.10.9",
        "port": 0,
        "app_port": 0,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
        "kind": "gateway",
        "listen": {"80": 31080, "443": 31443},
    }
)
MESH_CONFIG = """
extensionProviders:
- {name: http-authz, envoyExtAuthzHttp: {service: authz.example.com, port: 9191, pathPrefix: /check}}
- {name: otel, opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317}}
defaultProviders: {tracing: [otel]}
"""


def _policy(
    kind: str,
    name: str,
    spec: str,
    namespace: str = "default",
    group: str = "security.istio.io/v1",
    annotations: str = "",
) -> str:
    meta = f"{{name: {name}, namespace: {namespace}{', annotations: ' + annotations if annotations else ''}}}"
    return f"apiVersion: {group}\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}\n---\n"


AUTHZ = (
    _policy(
        "AuthorizationPolicy",
        "allow-productpage",
        "  selector: {matchLabels: {app: reviews}}\n  action: ALLOW\n  rules:\n"
        "  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]\n"
        "    to: [{operation: {methods: [GET], paths: [/reviews/*]}}]\n",
    )
    + _policy(
        "AuthorizationPolicy",
        "deny-admin",
        "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules:\n"
        "  - to: [{operation: {paths: [/admin*]}}]\n    when: [{key: 'request.headers[x-debug]', values: ['1']}]\n",
    )
    + _policy(
        "AuthorizationPolicy",
        "audit-all",
        "  selector: {matchLabels: {app: reviews}}\n  action: AUDIT\n  rules: [{}]\n",
    )
    + _policy(
        "AuthorizationPolicy",
        "would-deny-ratings",
        "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules:\n"
        "  - from: [{source: {notNamespaces: [default]}}]\n",
        annotations="{istio.io/dry-run: 'true'}",
    )
    + _policy(
        "AuthorizationPolicy",
        "ext-check",
        "  selector: {matchLabels: {app: reviews}}\n  action: CUSTOM\n  provider: {name: http-authz}\n"
        "  rules: [{to: [{operation: {paths: [/reviews/secret*]}}]}]\n",
    )
)
JWT = _policy(
    "RequestAuthentication",
    "jwt",
    "  selector: {matchLabels: {app: reviews}}\n  jwtRules:\n"
    "  - issuer: https://issuer.example\n    jwks: '{\"keys\": [{\"kty\": \"RSA\", \"kid\": \"k\", \"n\": \"sXch\", "
    "\"e\": \"AQAB\"}]}'\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-jwt-payload\n",
) + _policy(
    "AuthorizationPolicy",
    "require-jwt",
    "  selector: {matchLabels: {app: reviews}}\n  rules:\n"
    "  - from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]\n",
)
PEER_AUTH = {
    mode: _policy(
        "PeerAuthentication", "reviews", f"  selector: {{matchLabels: {{app: reviews}}}}\n  mtls: {{mode: {mode}}}\n"
    )
    for mode in ("STRICT", "PERMISSIVE", "DISABLE")
}
SERVICE_ENTRY = _policy(
    "ServiceEntry",
    "httpbin",
    "  hosts: [httpbin.org]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
    "  resolution: DNS\n  location: MESH_EXTERNAL\n",
    group="networking.istio.io/v1",
) + _policy(
    "ServiceEntry",
    "legacy",
    "  hosts: [legacy.internal]\n  addresses: [10.1.2.3]\n"
    "  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 18080}]\n  resolution: STATIC\n"
    "  endpoints: [{address: 10.1.2.3, locality: r1/z1, weight: 3}, {address: 10.1.2.4}]\n",
    group="networking.istio.io/v1",
)
TRACING = _policy(
    "Telemetry",
    "mesh",
    "  tracing: [{randomSamplingPercentage: 25, customTags: {env: {literal: {value: prod}}}}]\n",
    namespace="istio-system",
    group="telemetry.istio.io/v1",
)
TCP_TLS = (
    _policy(
        "VirtualService",
        "mongodb",
        "  hosts: [mongodb]\n  tcp:\n  - match: [{port: 27017}]\n"
        "    route: [{destination: {host: mongodb, port: {number: 27017}}}]\n",
        group="networking.istio.io/v1",
    )
    + _policy(
        "ServiceEntry",
        "partner",
        "  hosts: [api.partner.example]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n",
        group="networking.istio.io/v1",
    )
    + _policy(
        "VirtualService",
        "partner",
        "  hosts: [api.partner.example]\n  tls:\n"
        "  - match: [{port: 443, sniHosts: [api.partner.example]}]\n"
        "    route: [{destination: {host: api.partner.example, port: {number: 443}}}]\n",
        group="networking.istio.io/v1",
    )
)
GATEWAYS = _policy(
    "Gateway",
    "bookinfo",
    "  selector: {istio: ingressgateway}\n  servers:\n"
    "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n"
    "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n"
    "    tls: {mode: SIMPLE, serverCertificate: /certs/cert.pem, privateKey: /certs/key.pem}\n",
    group="networking.istio.io/v1",
) + _policy(
    "VirtualService",
    "bookinfo",
    "  hosts: ['*']\n  gateways: [bookinfo]\n  http:\n"
    "  - match: [{uri: {prefix: /productpage}}]\n    route: [{destination: {host: productpage, port: "
    "{number: 9080}}}]\n",
    group="networking.istio.io/v1",
)
PASSTHROUGH = _policy(
    "Gateway",
    "passthrough",
    "  selector: {istio: ingressgateway}\n  servers:\n"
    "  - port: {number: 8443, name: tls, protocol: TLS}\n    hosts: [api.partner.example]\n"
    "    tls: {mode: PASSTHROUGH}\n",
    group="networking.istio.io/v1",
) + _policy(
    "VirtualService",
    "partner-edge",
    "  hosts: [api.partner.example]\n  gateways: [passthrough]\n  tls:\n"
    "  - match: [{port: 8443, sniHosts: [api.partner.example]}]\n"
    "    route: [{destination: {host: api.partner.example, port: {number: 443}}}]\n",
    group="networking.istio.io/v1",
)

# case -> (resources, the proxy whose config shows the plugin, MeshConfig)
CASES = {
    "authz": (AUTHZ, REVIEWS, MESH_CONFIG),
    "jwt": (JWT, REVIEWS, ""),
    **{f"peer-authentication-{m.lower()}": (PEER_AUTH[m], REVIEWS, "") for m in PEER_AUTH},
    "service-entry": (SERVICE_ENTRY, PRODUCTPAGE, ""),
    "tracing": (TRACING, PRODUCTPAGE, MESH_CONFIG),
    "tcp-tls-routes": (TCP_TLS, CAPTURED, ""),
    "gateway": (GATEWAYS + PASSTHROUGH + TCP_TLS, GATEWAY, ""),
}


def _snapshot(text: str, mesh: str) -> MeshSnapshot:
    resources = parse_documents(text)
    config = parse_mesh_config(mesh, "mesh.yaml") if mesh else None
    return MeshSnapshot(
        "golden",
        workloads=(*WORKLOADS, DB, GATEWAY),
        **{name: tuple(r for r in resources if r.kind == kind) for kind, name in SNAPSHOT_FIELDS.items()},
        extension_providers=tuple(p for p in config.extension_providers if p.authorizer is not None) if config else (),
        **({"mesh_telemetry": mesh_telemetry(config)} if config else {}),
    )


def _render(snapshot: MeshSnapshot, proxy: Workload) -> str:
    import json

    import yaml
    from google.protobuf import json_format

    resources = translate(snapshot, proxy)
    out = {
        t.rsplit(".", 1)[-1]: [
            _maps_sorted(json.loads(json_format.MessageToJson(m, preserving_proto_field_name=True)))
            for _, m in resources.by_type[t]
        ]
        for t in TYPE_ORDER
    }
    return yaml.safe_dump(out, sort_keys=False, width=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_golden(case, request):
    text, proxy, mesh = CASES[case]
    rendered = _render(_snapshot(text, mesh), proxy)
    path = PLUGINS / f"{case}.yaml"
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"no golden file {path}; run with --update-golden"
    assert rendered == path.read_text(), f"translator output for {case} changed; review and run with --update-golden"


def test_each_plugin_shows_in_its_golden_file():
    """A golden file that does not contain what its plugin generates would pass whatever it does."""
    expect = {
        "authz": [
            "lattice.authz.allow",
            "lattice.authz.deny",
            "lattice.authz.audit",
            "istio_dry_run_deny_",
            "envoy.filters.http.ext_authz",
            "istio-ext-authz-http-authz",
        ],
        "jwt": ["envoy.filters.http.jwt_authn", "https://issuer.example"],
        "peer-authentication-strict": ["inbound|9080|mtls"],
        "peer-authentication-permissive": ["inbound|9080|mtls", "inbound|9080|plaintext", "tls_inspector"],
        "peer-authentication-disable": ["inbound|9080|plaintext"],
        "service-entry": ["outbound|80||httpbin.org", "outbound|8080||legacy.internal", "STRICT_DNS"],
        "tracing": ["envoy.tracers.opentelemetry", "collector.observability.svc.cluster.local"],
        "tcp-tls-routes": [
            "outbound|27017||mongodb.default.svc.cluster.local",
            "outbound|443||api.partner.example",
            "TcpProxy",
        ],
        "gateway": ["gateway_http_80", "gateway_https_443", "/certs/cert.pem", "server_names:", "api.partner.example"],
    }
    for case, needles in expect.items():
        text = (PLUGINS / f"{case}.yaml").read_text()
        missing = [n for n in needles if n not in text]
        assert not missing, f"{case}: {missing}"
    strict = (PLUGINS / "peer-authentication-strict.yaml").read_text()
    assert "inbound|9080|plaintext" not in strict
