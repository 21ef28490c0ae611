"""Istio's Sidecar: egress.hosts narrows a proxy's services (and so its clusters and routes), its
outboundTrafficPolicy overrides the mesh's, in Istio's precedence; unsupported fields refused."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import CLUSTER, ROUTE, translate


def _workload(service: str, namespace: str, n: int, labels: dict | None = None) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{n}.{namespace}",
            "name": f"{service}-v1",
            "namespace": namespace,
            "service": service,
            "service_account": service,
            "labels": {"app": service, **(labels or {})},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
    )


CLIENT = _workload("client", "default", 1, {"scoped": "yes"})
OTHER = _workload("other", "default", 2)
WORKLOADS = (
    CLIENT,
    OTHER,
    _workload("a", "default", 3),
    _workload("b", "default", 4),
    _workload("c", "default", 5),
    _workload("d", "apps", 6),
)


def _sidecar(name: str, namespace: str, spec: str) -> str:
    head = f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}"
    return f"{head}\nspec:\n{spec}\n---\n"


SCOPED = _sidecar(
    "client",
    "default",
    "  workloadSelector: {labels: {scoped: 'yes'}}\n"
    "  egress: [{hosts: [./a.default.svc.cluster.local, ./b.default.svc.cluster.local]}]\n"
    "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}",
)


def _snapshot(text: str) -> MeshSnapshot:
    return MeshSnapshot("1", workloads=WORKLOADS, sidecars=tuple(parse_documents(text)))


def _outbound(snapshot: MeshSnapshot, proxy: Workload) -> set[str]:
    return {n for n, _ in translate(snapshot, proxy).by_type[CLUSTER] if n.startswith("outbound|")}


def test_egress_hosts_cut_the_proxys_clusters_to_the_two_listed():
    snapshot = _snapshot(SCOPED)
    assert _outbound(snapshot, CLIENT) == {
        "outbound|9080||a.default.svc.cluster.local",
        "outbound|9080||b.default.svc.cluster.local",
    }
    assert len(_outbound(snapshot, OTHER)) == 6  # unscoped: every service
    (table,) = dict(translate(snapshot, CLIENT).by_type[ROUTE]).values()
    names = [h.name for h in table.virtual_hosts]
    assert "a.default.svc.cluster.local:9080" in names and "c.default.svc.cluster.local:9080" not in names
    assert snapshot.outbound_policy_for(CLIENT) == "REGISTRY_ONLY"
    assert snapshot.outbound_policy_for(OTHER) == "ALLOW_ANY"
    assert table.virtual_hosts[-1].name == "block_all"  # unknown hosts: 502, Istio's BlackHoleCluster


@pytest.mark.parametrize(
    "hosts, expected",
    [
        ("[./*]", {"a", "b", "c", "client", "other"}),
        ("['*/*']", {"a", "b", "c", "client", "other", "d"}),
        ("[apps/*]", {"d"}),
        ("['~/*']", set()),
        ("['*/*.apps.svc.cluster.local']", {"d"}),
    ],
)
def test_host_forms(hosts, expected):
    snapshot = _snapshot(_sidecar("all", "default", f"  egress: [{{hosts: {hosts}}}]"))
    assert {n.split("|")[3].split(".")[0] for n in _outbound(snapshot, OTHER)} == expected


def test_precedence_selector_then_namespace_then_root():
    root = _sidecar("root", "istio-system", "  egress: [{hosts: [apps/*]}]")
    namespace = _sidecar("ns", "default", "  egress: [{hosts: [./c.default.svc.cluster.local]}]")
    snapshot = _snapshot(root + namespace + SCOPED)
    assert len(_outbound(snapshot, CLIENT)) == 2  # its selector's
    assert _outbound(snapshot, OTHER) == {"outbound|9080||c.default.svc.cluster.local"}  # its namespace's
    only_root = _snapshot(root)
    assert _outbound(only_root, OTHER) == {"outbound|9080||d.apps.svc.cluster.local"}  # the root namespace's


@pytest.mark.parametrize(
    "spec, why",
    [
        ("  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 127.0.0.1:8080}]", "ingress"),
        ("  egress: [{port: {number: 80, protocol: HTTP, name: h}, hosts: ['./*']}]", "one outbound listener"),
        ("  egress: [{hosts: [reviews]}]", "not namespace/dnsName"),
        ("  outboundTrafficPolicy: {mode: SOMETIMES}", "outboundTrafficPolicy.mode"),
        ("  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: x}}", "egressProxy"),
    ],
)
def test_refusals_say_why(spec, why):
    with pytest.raises(ValidationError) as e:
        parse_documents(_sidecar("s", "default", spec))
    assert why in str(e.value)
