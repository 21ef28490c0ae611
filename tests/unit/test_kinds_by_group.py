"""Kinds are keyed by group and kind: Istio's `Gateway` and the Gateway API's live side by side."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, kind_for, parse_documents
from lattice.mesh.analyze import snapshot_of

ISTIO = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"""
K8S = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: lattice
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""


def test_same_name_two_groups_two_keys():
    istio, k8s = parse_documents(ISTIO + "---\n" + K8S)
    assert istio.key == ("Gateway", "default", "edge")
    assert k8s.key == ("Gateway.gateway.networking.k8s.io", "default", "edge")
    assert k8s.to_dict()["kind"] == "Gateway"
    snapshot = snapshot_of([istio, k8s])
    assert snapshot.gateways == (istio,) and snapshot.k8s_gateways == (k8s,)


@pytest.mark.parametrize(
    "name, key",
    [
        ("gateways", "Gateway"),
        ("gw", "Gateway"),
        ("gateways.networking.istio.io", "Gateway"),
        ("gtw", "Gateway.gateway.networking.k8s.io"),
        ("gateways.gateway.networking.k8s.io", "Gateway.gateway.networking.k8s.io"),
        ("Gateway.gateway.networking.k8s.io", "Gateway.gateway.networking.k8s.io"),
        ("gatewayclasses", "GatewayClass"),
        ("refgrant", "ReferenceGrant"),
        ("httproutes.gateway.networking.k8s.io", "HTTPRoute"),
    ],
)
def test_names_the_cli_accepts(name, key):
    assert kind_for(name).key == key


def test_api_version_of_another_group_is_named_in_the_error():
    with pytest.raises(ValidationError) as e:
        parse_documents(K8S.replace("gateway.networking.k8s.io/v1", "networking.k8s.io/v1"))
    assert "networking.istio.io/v1" in str(e.value) and "gateway.networking.k8s.io/v1" in str(e.value)


@pytest.mark.parametrize(
    "listener, why",
    [
        ("{name: https, port: 443, protocol: HTTPS}", "Terminate with certificateRefs"),
        (
            "{name: https, port: 443, protocol: HTTPS, tls: {mode: Passthrough, certificateRefs: [{name: c}]}}",
            "Terminate with certificateRefs",
        ),
        ("{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: a}, {name: b}]}}", "exactly one"),
        ("{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: a, kind: ConfigMap}]}}", "Secret"),
        ("{name: http, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: a}]}}", "takes no tls"),
        ("{name: tls, port: 443, protocol: TLS, tls: {certificateRefs: [{name: a}]}}", "Passthrough"),
        ("{name: tcp, port: 9000, protocol: TCP, tls: {mode: Passthrough}}", "takes no tls"),
        ("{name: udp, port: 53, protocol: UDP}", "use HTTP, HTTPS, TLS or TCP"),
        ("{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}", "Selector"),
    ],
)
def test_listeners_lattice_does_not_serve_are_refused_with_why(listener, why):
    with pytest.raises(ValidationError) as e:
        parse_documents(K8S.replace("[{name: http, port: 80, protocol: HTTP}]", f"[{listener}]"))
    assert why in str(e.value)


def test_hostnames_only_for_gateway_parents():
    route = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  hostnames: [example.com]
  parentRefs: [%s]
"""
    parse_documents(route % "{name: edge}")
    with pytest.raises(ValidationError) as e:
        parse_documents(route % '{group: "", kind: Service, name: web}')
    assert "hostnames has no effect" in str(e.value)
