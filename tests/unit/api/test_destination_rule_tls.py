"""DestinationRule trafficPolicy.tls: Istio's ClientTLSSettings, checked for consistency (the rest of
trafficPolicy: test_destination_rule_policy.py)."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, parse_documents

DR = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n"
CERTS = "clientCertificate: /etc/certs/client.pem, privateKey: /etc/certs/key.pem"


def _parse(spec: str):
    (r,) = parse_documents(DR + spec)
    return r.spec


def _errors(spec: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(DR + spec, "f.yaml")
    return [str(x) for x in e.value.errors]


@pytest.mark.parametrize(
    "tls",
    [
        "{mode: DISABLE}",
        "{mode: SIMPLE}",
        "{mode: SIMPLE, caCertificates: /etc/certs/ca.pem, sni: r.example.com, subjectAltNames: [r.example.com], "
        "caCrl: /etc/certs/crl.pem}",
        "{mode: SIMPLE, insecureSkipVerify: true}",
        f"{{mode: MUTUAL, {CERTS}, caCertificates: /etc/certs/ca.pem}}",
        "{mode: ISTIO_MUTUAL}",
        "{mode: ISTIO_MUTUAL, sni: r.default, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/r']}",
    ],
)
def test_each_tls_mode_is_accepted(tls):
    spec = _parse(f"  trafficPolicy:\n    tls: {tls}\n")
    assert spec.traffic_policy.tls.mode in tls


def test_fields_are_istios():
    spec = _parse(
        f"  trafficPolicy:\n    tls: {{mode: MUTUAL, {CERTS}, caCertificates: /ca.pem, insecureSkipVerify: false}}\n"
    )
    tls = spec.traffic_policy.tls
    assert (tls.client_certificate, tls.private_key, tls.ca_certificates, tls.insecure_skip_verify) == (
        "/etc/certs/client.pem",
        "/etc/certs/key.pem",
        "/ca.pem",
        False,
    )


def test_port_level_and_subset_level_tls():
    spec = _parse(
        "  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: SIMPLE}\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"
    )
    assert spec.traffic_policy.tls is None
    assert spec.traffic_policy.port_level_settings[0].port.number == 443
    assert spec.traffic_policy.port_level_settings[0].tls.mode == "SIMPLE"
    assert spec.subsets[0].traffic_policy.tls.mode == "ISTIO_MUTUAL"


def test_round_trip_keeps_camel_case():
    (r,) = parse_documents(
        DR + "  trafficPolicy: {tls: {mode: SIMPLE, subjectAltNames: [a], insecureSkipVerify: false}}\n"
    )
    assert r.to_dict()["spec"] == {
        "host": "r",
        "trafficPolicy": {"tls": {"mode": "SIMPLE", "subjectAltNames": ["a"], "insecureSkipVerify": False}},
    }


TP = "  trafficPolicy:\n    tls: "


@pytest.mark.parametrize(
    "spec, expected",
    [
        (TP + "{}\n", "spec.trafficPolicy.tls.mode: Field required"),
        (
            TP + "{mode: mutual}\n",
            "spec.trafficPolicy.tls.mode: Input should be 'DISABLE', 'SIMPLE', 'MUTUAL' or 'ISTIO_MUTUAL'",
        ),
        (
            TP + "{mode: MUTUAL}\n",
            "spec.trafficPolicy.tls: MUTUAL presents a client certificate: set clientCertificate, privateKey",
        ),
        (
            TP + "{mode: MUTUAL, clientCertificate: /c.pem}\n",
            "spec.trafficPolicy.tls: MUTUAL presents a client certificate: set privateKey",
        ),
        (
            TP + f"{{mode: ISTIO_MUTUAL, {CERTS}}}\n",
            "spec.trafficPolicy.tls: ISTIO_MUTUAL uses the mesh's own certificates, issued by Lattice; remove "
            "clientCertificate, privateKey",
        ),
        (TP + "{mode: ISTIO_MUTUAL, caCertificates: /ca.pem, caCrl: /crl.pem}\n", "remove caCertificates, caCrl"),
        (
            TP + "{mode: DISABLE, caCertificates: /ca.pem}\n",
            "spec.trafficPolicy.tls: DISABLE sends plaintext, so caCertificates would be unused",
        ),
        (
            TP + "{mode: DISABLE, sni: r.example.com}\n",
            "spec.trafficPolicy.tls: DISABLE sends plaintext, so sni would be unused",
        ),
        (TP + f"{{mode: SIMPLE, {CERTS}}}\n", "spec.trafficPolicy.tls: SIMPLE presents no client certificate"),
        (
            TP + "{mode: SIMPLE, credentialName: r-secret}\n",
            "spec.trafficPolicy.tls.credentialName: credentialName is not supported on DestinationRules: "
            "`lattice secret` secrets reach only gateways' servers, not the clusters a proxy originates TLS on; "
            "give clientCertificate, privateKey and caCertificates file paths on the proxy's host (an egress "
            "gateway's own host)",
        ),
        (
            TP + "{mode: ISTIO_MUTUAL, credentialName: r-secret}\n",
            "spec.trafficPolicy.tls.credentialName: credentialName is not supported on DestinationRules",
        ),
        (
            TP + "{mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}\n",
            "spec.trafficPolicy.tls: insecureSkipVerify turns off the server-certificate check that caCertificates "
            "configure",
        ),
        (
            TP + "{mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}\n",
            "insecureSkipVerify turns off the server-certificate check that subjectAltNames configure",
        ),
        (TP + "{mode: SIMPLE, verifyCertificate: true}\n", "spec.trafficPolicy.tls.verifyCertificate: unknown field"),
        (
            "  trafficPolicy: {tunnel: {targetHost: h, targetPort: 80}}\n",
            "spec.trafficPolicy.tunnel: tunnel (TCP carried over HTTP CONNECT or POST to a tunnel target) is not "
            "supported by Lattice",
        ),
        (
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, burst: 2}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.burst: unknown field",
        ),
        (
            "  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, ejectAll: true}}\n",
            "spec.trafficPolicy.outlierDetection.ejectAll: unknown field",
        ),
        (
            "  trafficPolicy: {portLevelSettings: [{port: {number: 80}, tunnel: {targetHost: h, targetPort: 80}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0].tunnel: unknown field",
        ),
        (
            "  trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0].port: Field required",
        ),
        (
            "  trafficPolicy: {portLevelSettings: [{port: {number: 0}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0].port.number: Input should be greater than or equal to 1",
        ),
        (
            "  trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}, {port: {number: 80}, "
            "tls: {mode: DISABLE}}]}\n",
            "spec.trafficPolicy.portLevelSettings: each port may appear once; repeated: 80",
        ),
        (
            "  subsets: [{name: v1, trafficPolicy: {tls: {mode: MUTUAL}}}]\n",
            "spec.subsets[0].trafficPolicy.tls: MUTUAL presents a client certificate",
        ),
        (
            "  subsets: [{name: v1, trafficPolicy: {proxyProtocol: {version: V2}}}]\n",
            "spec.subsets[0].trafficPolicy.proxyProtocol: proxyProtocol (sending a PROXY protocol header upstream) "
            "is not supported by Lattice",
        ),
        (
            "  trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: ISTIO_MUTUAL, privateKey: "
            "/k.pem}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0].tls: ISTIO_MUTUAL uses the mesh's own certificates",
        ),
    ],
)
def test_bad_tls_names_the_field(spec, expected):
    errors = _errors(spec)
    assert any(expected in e for e in errors), errors
