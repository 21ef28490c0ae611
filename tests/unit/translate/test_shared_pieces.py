"""Pieces built once per snapshot and shared by proxies (`memo`, kept by the caller's
`SharedPieces` or the pusher's `TracedSnapshot`) must not leak one proxy's config into another's:
each proxy's output is the same whether or not others were translated first from the same view."""

from __future__ import annotations

from types import MappingProxyType

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.model import SharedPieces, Upstream
from lattice.translate import ROUTE, translate

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: web}}]
    headers: {request: {set: {x-from: v2}}}
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-alias}
spec:
  hosts: [web.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
"""


def _workload(i: int, service: str, version: str, namespace: str = "default", upstreams=()) -> Workload:
    return Workload(
        id=f"{service}-{version}-{i}.{namespace}",
        name=f"{service}-{version}",
        namespace=namespace,
        service=service,
        service_account=service,
        labels=MappingProxyType({"app": service, "version": version}),
        address=f"127.100.0.{i}",
        port=9080,
        app_port=30000 + i,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
        healthy=True,
        upstreams=tuple(upstreams),
    )


def _bytes(resources) -> dict:
    return {
        t: [(n, m.SerializeToString(deterministic=True)) for n, m in items] for t, items in resources.by_type.items()
    }


def _snapshot(workloads) -> MeshSnapshot:
    resources = parse_documents(RULES)
    return MeshSnapshot(
        "1",
        workloads=tuple(workloads),
        virtual_services=tuple(r for r in resources if r.kind == "VirtualService"),
        service_entries=tuple(r for r in resources if r.kind == "ServiceEntry"),
    )


def test_each_proxy_gets_the_same_config_alone_or_after_others():
    workloads = [
        _workload(1, "web", "v1"),
        _workload(2, "client", "v1", upstreams=[Upstream("web", "default", 9080, 19080)]),
        _workload(3, "client", "v2"),
        _workload(5, "client", "v1"),  # labels like proxy 2's, so it shares proxy 2's pieces
        _workload(4, "client", "v1", namespace="other"),
    ]
    alone = {w.id: _bytes(translate(_snapshot(workloads), w)) for w in workloads}
    for order in (workloads, list(reversed(workloads))):
        shared = SharedPieces(_snapshot(workloads))
        assert {w.id: _bytes(translate(shared, w)) for w in order} == alone


def test_an_upstream_port_does_not_widen_the_outbound_table():
    client = _workload(2, "client", "v1", upstreams=[Upstream("web", "default", 9080, 19080)])
    (table,) = [
        m
        for name, m in translate(_snapshot([_workload(1, "web", "v1"), client]), client).by_type[ROUTE]
        if name == "http_proxy"
    ]
    wildcards = [h.name for h in table.virtual_hosts if "*" in h.domains]
    assert wildcards == ["allow_any"], wildcards  # Envoy refuses a table with two '*' hosts
