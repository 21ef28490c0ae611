"""The analyzer: valid but suspicious config is found and explained; sound config gives nothing."""

from __future__ import annotations

from types import MappingProxyType

from lattice.api import parse_documents
from lattice.mesh import Workload
from lattice.mesh.analyze import analyze, snapshot_of

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""
DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def _workload(version: str, service: str = "reviews") -> Workload:
    return Workload(
        id=f"{service}-{version}-x.default",
        name=f"{service}-{version}",
        namespace="default",
        service=service,
        service_account=service,
        labels=MappingProxyType({"app": service, "version": version}),
        address="127.0.10.2",
        port=9080,
        app_port=30000,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
        healthy=True,
    )


def _findings(text: str, workloads=(), registry_known=False):
    resources = parse_documents(text)
    return analyze(snapshot_of(resources, workloads=tuple(workloads)), resources, registry_known)


def _warnings(findings):
    return [(f.field, f.message) for f in findings if f.level == "warning"]


def test_sound_config_has_no_warnings():
    assert _warnings(_findings(VS + "---" + DR, [_workload("v1"), _workload("v2")], registry_known=True)) == []


def test_weights_not_adding_to_100_are_explained():
    ((field, message),) = _warnings(_findings(VS.replace("weight: 20", "weight: 30") + "---" + DR))
    assert field == "spec.http[0].route"
    assert "add up to 110, not 100" in message and "72.7%, 27.3%" in message


def test_a_subset_no_rule_defines():
    found = _warnings(_findings(VS))
    assert [f for f, _ in found] == [
        "spec.http[0].route[0].destination.subset",
        "spec.http[0].route[1].destination.subset",
    ]
    assert "no DestinationRule" in found[0][1]


def test_offline_says_what_it_could_not_check():
    infos = [f.message for f in _findings(VS + "---" + DR) if f.level == "info"]
    assert infos and "offline" in infos[0]


def test_with_the_registry_a_subset_matching_no_workload_and_an_unknown_host():
    found = _warnings(_findings(VS + "---" + DR, [_workload("v1")], registry_known=True))
    assert found == [
        (
            "spec.subsets[1]",
            "subset 'v2' (labels version=v2) matches no workload of reviews.default.svc.cluster.local; requests "
            "routed there get 503",
        )
    ]
    found = _warnings(
        _findings(VS.replace("host: reviews, subset: v2", "host: ratings"), [_workload("v1")], registry_known=True)
    )
    assert (
        "spec.http[0].route[1].destination.host",
        "host 'ratings' (ratings.default.svc.cluster.local) resolves to no service or ServiceEntry; requests "
        "routed there get 503",
    ) in found


def test_a_gateway_that_does_not_exist():
    text = VS.replace("hosts: [reviews]", "hosts: [reviews]\n  gateways: [ingress]")
    assert (
        "spec.gateways",
        "Gateway 'ingress' does not exist; this VirtualService applies to no gateway until it does",
    ) in _warnings(_findings(text))


def test_two_virtual_services_for_one_host():
    other = VS.replace("name: reviews", "name: reviews-too")
    found = _findings(VS + "---" + other + "---" + DR)
    assert any(
        "already claimed" in f.message and f.resource.startswith("VirtualService default/reviews-too") for f in found
    ), found


HOST_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-host}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["admin.example.com", "api.example.com", "api.example.com:*", "*", "[::1]:8080"]}}]
"""


def test_a_host_rule_without_its_port_variant_is_a_warning():
    """As istioctl warns: `Host: admin.example.com:80` does not match `admin.example.com`, so a
    DENY on the bare host is walked around by naming the port."""
    (policy,) = parse_documents(HOST_POLICY)
    findings = analyze(snapshot_of([policy]), [policy], registry_known=False)
    assert [(f.level, f.field) for f in findings] == [("warning", "spec.rules[0].to[0].operation.hosts")]
    assert "'admin.example.com:*'" in findings[0].message and "not denied" in findings[0].message
    fixed = parse_documents(HOST_POLICY.replace('"admin.example.com",', '"admin.example.com", "admin.example.com:*",'))
    assert analyze(snapshot_of(fixed), fixed, registry_known=False) == []
