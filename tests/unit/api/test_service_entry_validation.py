"""ServiceEntry and WorkloadEntry validation: Istio's rules, and a reason for what Lattice refuses."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, kind_for, parse_documents

SE = "apiVersion: networking.istio.io/{version}\nkind: ServiceEntry\nmetadata: {{name: e}}\nspec:\n"
WE = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n"
PORT = "  ports: [{number: 80, name: http, protocol: HTTP}]\n"


def _errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(text, "f.yaml")
    return [str(x) for x in e.value.errors]


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
def test_a_full_entry_parses_in_every_istio_version(version):
    (r,) = parse_documents(
        SE.format(version=version)
        + """
  hosts: [api.example.com, "*.example.org"]
  addresses: [10.1.2.3]
  ports: [{number: 80, name: http, protocol: http}, {number: 8443, name: grpc, protocol: GRPC, targetPort: 443}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, ports: {http: 8080}, labels: {version: v1}, network: n1, locality: us-east/a/1, weight: 3,
  serviceAccount: vm}
  exportTo: [".", other]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/vm]
"""
    )
    assert r.kind == "ServiceEntry" and r.spec.ports[0].protocol == "HTTP"  # Istio matches protocols without case
    assert r.spec.ports[1].lattice_protocol == "grpc"
    assert r.spec.endpoints[0].ports == {"http": 8080}


def test_defaults_are_istios():
    (r,) = parse_documents(SE.format(version="v1") + "  hosts: [a.example.com]\n" + PORT)
    assert (r.spec.location, r.spec.resolution) == ("MESH_EXTERNAL", "NONE")


def test_short_names():
    assert kind_for("se").kind == "ServiceEntry" and kind_for("workloadentries").kind == "WorkloadEntry"
    assert kind_for("we").kind == "WorkloadEntry"


@pytest.mark.parametrize(
    "spec, path, reason",
    [
        ("  hosts: []\n" + PORT, "spec.hosts", "at least 1"),
        ("  hosts: ['*']\n" + PORT, "spec.hosts", "every host"),
        ("  hosts: [a.*.com]\n" + PORT, "spec.hosts", "wildcard may only lead"),
        ("  hosts: [a.com]\n  ports: []\n", "spec.ports", "at least 1"),
        ("  hosts: [a.com]\n  ports: [{number: 80, protocol: HTTP}]\n", "spec.ports[0].name", "required"),
        ("  hosts: [a.com]\n  ports: [{number: 0, name: h}]\n", "spec.ports[0].number", "greater than or equal to 1"),
        ("  hosts: [a.com]\n  ports: [{number: 80, name: h, protocol: UDP}]\n", "spec.ports[0].protocol", "not UDP"),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, name: h, protocol: SMTP}]\n",
            "spec.ports[0].protocol",
            "unknown protocol",
        ),
        ("  hosts: [a.com]\n  ports: [{number: 80, name: a}, {number: 80, name: b}]\n", "spec.ports", "repeated: 80"),
        ("  hosts: [a.com]\n  ports: [{number: 80, name: a}, {number: 81, name: a}]\n", "spec.ports", "repeated: a"),
        ("  hosts: [a.com]\n  addresses: [10.0.0.0/8]\n" + PORT, "spec.addresses", "CIDR ranges are not supported"),
        ("  hosts: [a.com]\n  addresses: [nope]\n" + PORT, "spec.addresses", "not an IP address"),
        ("  hosts: [a.com]\n  location: NEARBY\n" + PORT, "spec.location", "MESH_EXTERNAL"),
        ("  hosts: [a.com]\n  resolution: MAGIC\n" + PORT, "spec.resolution", "DNS_ROUND_ROBIN"),
        (
            "  hosts: [a.com]\n" + PORT + "  endpoints: [{address: 1.2.3.4}]\n",
            "spec.resolution",
            "NONE forwards to the host",
        ),
        (
            "  hosts: [a.com]\n  ports: [{number: 80, name: h, targetPort: 81}]\n",
            "spec.resolution",
            "targetPort would be unused",
        ),
        (
            "  hosts: [a.com]\n" + PORT + "  resolution: STATIC\n  endpoints: [{address: db.internal}]\n",
            "spec.resolution",
            "is a host name (use DNS)",
        ),
        ("  hosts: ['*.a.com']\n" + PORT + "  resolution: DNS\n", "spec.resolution", "*.a.com cannot be resolved"),
        (
            "  hosts: [a.com]\n"
            + PORT
            + "  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: x.com}, {address: y.com}]\n",
            "spec.resolution",
            "at most one endpoint",
        ),
        (
            "  hosts: [a.com, b.com]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: DNS\n",
            "spec.resolution",
            "several hosts with a TCP port",
        ),
        (
            "  hosts: [a.com]\n"
            + PORT
            + "  resolution: STATIC\n  endpoints: [{address: 1.2.3.4}]\n  workloadSelector: {labels: {app: a}}\n",
            "spec.workloadSelector",
            "not both",
        ),
        (
            "  hosts: [a.com]\n"
            + PORT
            + "  resolution: STATIC\n  endpoints: [{address: 1.2.3.4, ports: {grpc: 90}}]\n",
            "spec.endpoints",
            "spec.ports does not define",
        ),
        (
            "  hosts: [a.com]\n" + PORT + "  resolution: STATIC\n  endpoints: [{address: 'unix:///run/db.sock'}]\n",
            "spec.endpoints[0].address",
            "unix domain socket",
        ),
        (
            "  hosts: [a.com]\n" + PORT + "  resolution: STATIC\n  workloadSelector: {labels: {app: '*'}}\n",
            "spec.workloadSelector.labels",
            "wildcards",
        ),
        ("  hosts: [a.com]\n" + PORT + "  exportTo: ['*', ns1]\n", "spec.exportTo", "only value"),
        ("  hosts: [a.com]\n" + PORT + "  exportTo: [Not_A_Namespace]\n", "spec.exportTo", "namespace name"),
        (
            "  hosts: [a.com]\n" + PORT + "  location: MESH_EXTERNAL\n  trafficPolicy: {}\n",
            "spec.trafficPolicy",
            "not support",
        ),
    ],
)
def test_bad_entries_name_the_field_and_the_reason(spec, path, reason):
    errors = _errors(SE.format(version="v1") + spec)
    assert any(e.startswith(path + ":") and reason in e for e in errors), errors


@pytest.mark.parametrize(
    "spec, path, reason",
    [
        ("  ports: {http: 80}\n", "spec.address", "required"),
        ("  address: '*.example.com'\n", "spec.address", "wildcard"),
        ("  address: 'not an address'\n", "spec.address", "neither an IP address nor a host name"),
        ("  address: 10.0.0.1\n  ports: {http: 70000}\n", "spec.ports", "between 1 and 65535"),
        ("  address: 10.0.0.1\n  weight: -1\n", "spec.weight", "greater than or equal to 0"),
        ("  address: 10.0.0.1\n  locality: us//a\n", "spec.locality", "region/zone/subzone"),
        ("  address: 10.0.0.1\n  serviceAccount: Bad_SA\n", "spec.serviceAccount", "lowercase"),
        ("  address: 10.0.0.1\n  labels: {'bad key!': x}\n", "spec.labels", "label name"),
    ],
)
def test_bad_workload_entries_name_the_field_and_the_reason(spec, path, reason):
    errors = _errors(WE + spec)
    assert any(e.startswith(path + ":") and reason in e for e in errors), errors


def test_a_workload_entry_parses():
    (r,) = parse_documents(
        WE + "  address: vm1.internal\n  ports: {http: 8080}\n  labels: {app: vm}\n  weight: 2\n  serviceAccount: vm\n"
    )
    assert (r.spec.address, r.spec.weight, r.spec.service_account) == ("vm1.internal", 2, "vm")
