"""Istio Gateway: Istio's files apply as they are; what Lattice cannot do is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from lattice.api import ValidationError, kind_for, parse_documents
from lattice.api.registration import Registration, gateway_local_port

BOOKINFO_GATEWAY = Path("/work/shared/conformance/istio-bookinfo/bookinfo-gateway.yaml")
GW = (
    "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: "
    "ingressgateway}\n  servers:\n"
)
CERTS = "serverCertificate: /etc/certs/server.pem, privateKey: /etc/certs/key.pem"


def _server(port: str, tls: str | None = None, extra: str = "") -> str:
    return f"  - port: {port}\n    hosts: ['*']\n" + (f"    tls: {tls}\n" if tls else "") + extra


def _parse(*servers: str):
    (r,) = parse_documents(GW + "".join(servers))
    return r.spec


def _errors(*servers: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(GW + "".join(servers), "f.yaml")
    return [str(x) for x in e.value.errors]


HTTP = "{number: 80, name: http, protocol: HTTP}"
HTTPS = "{number: 443, name: https, protocol: HTTPS}"


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
def test_bookinfo_gateway_applies_unchanged_in_every_version(version):
    text = BOOKINFO_GATEWAY.read_text().replace("networking.istio.io/v1alpha3", f"networking.istio.io/{version}")
    gw, vs = parse_documents(text)
    assert gw.kind == "Gateway" and gw.spec.selector == {"istio": "ingressgateway"}
    assert gw.spec.servers[0].port.protocol == "HTTP" and vs.spec.gateways == ["bookinfo-gateway"]
    assert kind_for("gw").kind == kind_for("gateways").kind == "Gateway"


@pytest.mark.parametrize(
    "tls",
    [
        f"{{mode: SIMPLE, {CERTS}, minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3,"
        " cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]}",
        f"{{mode: MUTUAL, {CERTS}, caCertificates: /etc/certs/ca.pem, subjectAltNames: [client.example.com],"
        " caCrl: /etc/certs/crl.pem}",
        f"{{mode: OPTIONAL_MUTUAL, {CERTS}, caCertificates: /etc/certs/ca.pem, verifyCertificateSpki: [abc=],"
        " verifyCertificateHash: ['01:02']}",
        "{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/client']}",
        "{mode: PASSTHROUGH}",
        "{}",
        "{mode: SIMPLE, credentialName: httpbin-credential}",
        "{mode: MUTUAL, credentialName: httpbin-credential, subjectAltNames: [client.example.com]}",
    ],
)
def test_each_tls_mode_is_accepted(tls):
    (server,) = _parse(_server(HTTPS, tls)).servers
    assert server.tls_mode == (server.tls.mode or "PASSTHROUGH")


def test_names_hosts_bind_and_redirect_are_accepted():
    spec = _parse(
        _server(HTTP, "{httpsRedirect: true}", "    name: web\n    bind: 127.0.0.1\n"),
        "  - port: {number: 8443, name: tls, protocol: tls}\n    hosts: ['./a.example.com', 'prod/*.example.com', "
        "'*/b.example.com']\n    tls: {mode: PASSTHROUGH}\n",
        "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']\n",
    )
    assert spec.servers[0].bind == "127.0.0.1" and spec.servers[0].tls.https_redirect
    assert spec.servers[1].port.protocol == "TLS"  # Istio parses protocols in any case


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (_server(HTTPS, "{mode: SIMPLE, credentialName: Bookinfo_Secret}"), "is not a secret name"),
        (_server(HTTPS, "{mode: SIMPLE, credentialNames: [a, b]}"), "give one credentialName"),
        (_server(HTTPS, f"{{mode: SIMPLE, credentialName: s, {CERTS}}}"), "brings the certificate, key and CA"),
        (_server(HTTPS, "{mode: ISTIO_MUTUAL, credentialName: s}"), "not ISTIO_MUTUAL"),
        (_server("TLS", "{mode: PASSTHROUGH, credentialName: s}"), "not PASSTHROUGH"),
        (_server(HTTPS, "{mode: AUTO_PASSTHROUGH}"), "AUTO_PASSTHROUGH routes by cluster names"),
        (
            _server(HTTPS, f"{{mode: SIMPLE, {CERTS}, tlsCertificates: [{{serverCertificate: /a}}]}}"),
            "tlsCertificates (several server certificates) is not supported",
        ),
        (
            _server("{number: 80, name: http, protocol: HTTP, targetPort: 8080}"),
            "targetPort applies to ServiceEntry ports",
        ),
        (_server(HTTP, None, "    defaultEndpoint: 127.0.0.1:8080\n"), "defaultEndpoint is for Sidecar ingress"),
        (_server(HTTP, None, "    bind: unix:///var/run/gw.sock\n"), "Unix domain socket is not supported"),
        (_server(HTTP, None, "    bind: localhost\n"), "'localhost' is not an IP address"),
        (_server("{number: 27017, name: mongo, protocol: MONGO}"), "'MONGO' is not a protocol Lattice gateways serve"),
        (_server("{number: 80, protocol: HTTP}"), "spec.servers[0].port.name: Field required"),
        (_server(HTTPS), "protocol HTTPS needs tls"),
        (
            _server(HTTPS, "{mode: SIMPLE}"),
            "SIMPLE terminates TLS with your certificate: set serverCertificate, privateKey",
        ),
        (
            _server(HTTPS, f"{{mode: SIMPLE, {CERTS}, caCertificates: /ca.pem}}"),
            "SIMPLE asks no client certificate, so caCertificates would be unused",
        ),
        (
            _server(HTTPS, f"{{mode: MUTUAL, {CERTS}}}"),
            "MUTUAL terminates TLS and checks client certificates: set caCertificates",
        ),
        (_server(HTTPS, f"{{mode: ISTIO_MUTUAL, {CERTS}}}"), "ISTIO_MUTUAL uses the gateway's mesh certificate"),
        (_server(HTTPS, f"{{mode: PASSTHROUGH, {CERTS}}}"), "PASSTHROUGH forwards TLS unopened"),
        (_server(HTTPS, "{httpsRedirect: true, mode: PASSTHROUGH}"), "httpsRedirect applies to HTTP servers"),
        (_server(HTTP, f"{{mode: SIMPLE, {CERTS}}}"), "protocol HTTP is plaintext"),
        (
            _server(HTTPS, f"{{mode: SIMPLE, {CERTS}, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}"),
            "minProtocolVersion TLSV1_3 is above maxProtocolVersion TLSV1_2",
        ),
        (_server(HTTPS, f"{{mode: SIMPLE, {CERTS}, cipherSuites: ['bad;cipher']}}"), "is not a cipher suite name"),
        (
            _server(HTTPS, f"{{mode: SIMPLE, {CERTS}, verifyCertificatePin: x}}"),
            "verifyCertificatePin: unknown field, or one Lattice does not support yet",
        ),
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['foo*.example.com']\n",
            "is not [namespace/]host",
        ),
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['Bad_NS/a.example.com']\n",
            "namespace 'Bad_NS' is not",
        ),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: []\n", "at least 1 item"),
    ],
)
def test_refusals_name_the_field_and_the_reason(server, message):
    errors = _errors(server)
    assert any(message in e for e in errors), errors
    assert all(e.startswith("spec.servers[0]") for e in errors), errors


def test_servers_sharing_a_port_must_agree_and_names_must_be_unique():
    clash = _errors(_server(HTTP), _server("{number: 80, name: tcp, protocol: TCP}"))
    assert any(
        "servers[0] and servers[1] share port 80 but one is plaintext HTTP and the other TCP" in e for e in clash
    ), clash
    dupes = _errors(_server(HTTP, None, "    name: a\n"), _server(HTTPS, "{mode: PASSTHROUGH}", "    name: a\n"))
    assert any("server names must be unique; repeated: a" in e for e in dupes), dupes


def test_gateway_needs_servers_and_selects_by_labels():
    with pytest.raises(ValidationError):
        parse_documents(GW.replace("  servers:\n", "  servers: []\n"))
    spec = _parse(_server(HTTP))
    assert spec.selects({"istio": "ingressgateway", "app": "x"}) and not spec.selects({"istio": "egressgateway"})


def test_gateway_ports_map_to_local_ports():
    assert gateway_local_port(80, {}) == 8080 and gateway_local_port(443, {}) == 8443
    assert gateway_local_port(31400, {}) == 31400 and gateway_local_port(80, {80: 18080}) == 18080


def test_registration_marks_gateways_and_checks_listen_ports():
    base = dict(
        id="ingressgateway-1.istio-system",
        name="ingressgateway",
        namespace="istio-system",
        service="istio-ingressgateway",
        service_account="istio-ingressgateway",
        address="127.0.0.1",
        port=8080,
        app_port=8080,
        outbound_port=15001,
        agent_port=15020,
    )
    reg = Registration.model_validate(base | {"kind": "gateway", "listen": {"80": 18080}})
    assert reg.kind == "gateway" and reg.listen == {80: 18080}
    assert Registration.model_validate(base).kind == "sidecar"
    with pytest.raises(ValueError, match="ports must be 1-65535"):
        Registration.model_validate(base | {"listen": {80: 70000}})
    with pytest.raises(ValueError):
        Registration.model_validate(base | {"kind": "egress"})
