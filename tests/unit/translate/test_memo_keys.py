"""Every memo key is complete: a piece built for one proxy is handed to another only when nothing
the piece depends on differs between them (Istio: hand-listed cache keys "historically resulted
in CVEs"). The keys in cds.py, eds.py, rds.py and mesh/telemetry.py are written by hand, so this
proves them: for a snapshot where every keyed piece depends on its caller (routing by source
labels and namespace, routing by namespace alone, locality failover and distribution,
ServiceEntries exported to one namespace, Telemetry by namespace and selector), a proxy differing
from another in any one of its inputs gets, from a view that already built the other's pieces,
exactly what it gets alone."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.model import SNAPSHOT_FIELDS, SharedPieces, Upstream
from lattice.translate import TYPE_ORDER, translate

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{sourceNamespace: other}]
    route: [{destination: {host: web, subset: v1}}]
    headers: {request: {set: {x-from: other}}}
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - match: [{sourceNamespace: other}]
    route: [{destination: {host: api}}]
    headers: {request: {set: {x-from: other}}}
  - route: [{destination: {host: api}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: true, failoverPriority: [version]}}
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute: [{from: "r1/*", to: {"r1/*": 80, "r2/*": 20}}, {from: "r2/*", to: {"r2/*": 100}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner}
spec:
  hosts: [api.partner.example]
  exportTo: ["."]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 10}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: other}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: v2-only}
spec:
  selector: {matchLabels: {version: v2}}
  tracing: [{randomSamplingPercentage: 100}]
"""


def _workload(i: int, service: str, version: str, region: str = "r1", **fields) -> Workload:
    base = dict(
        id=f"{service}-{version}-{i}.default",
        name=f"{service}-{version}",
        namespace="default",
        service=service,
        service_account=service,
        labels=MappingProxyType(
            {
                "app": service,
                "version": version,
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": "z",
            }
        ),
        address=f"127.100.0.{i}",
        port=9080,
        app_port=30000 + i,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
        healthy=True,
    )
    return Workload(**(base | fields))


SERVERS = (
    _workload(1, "web", "v1"),
    _workload(2, "web", "v2", region="r2"),
    _workload(3, "api", "v1"),
    _workload(4, "api", "v1", region="r2"),
)
BASE = _workload(10, "client", "v1")
# One variant per input a proxy brings to translation: each differs from BASE in that field
# alone (and in its id, so that both can be in one snapshot).
VARIANTS = {
    "namespace": {"namespace": "other"},
    "name": {"name": "client-special"},
    "service": {"service": "web"},
    "service_account": {"service_account": "robot"},
    "labels.version": {"labels": MappingProxyType({**BASE.labels, "version": "v2"})},
    "labels.region": {"labels": MappingProxyType({**BASE.labels, "topology.kubernetes.io/region": "r2"})},
    "labels.extra": {"labels": MappingProxyType({**BASE.labels, "team": "blue"})},
    "address": {"address": "127.100.0.99"},
    "port": {"port": 9443},
    "app_port": {"app_port": 31999},
    "protocol": {"protocol": "grpc"},
    "outbound_port": {"outbound_port": 15101},
    "agent_port": {"agent_port": 15120},
    "healthy": {"healthy": False},
    "draining": {"draining": True},
    "upstreams": {"upstreams": (Upstream("web", "default", 9080, 19080),)},
    "local_address": {"local_address": "127.0.0.77"},
    "inbound_address": {"inbound_address": "10.77.0.2"},
    "capture": {"capture": True},
    "host_port": {"host_port": 29080},
    "id": {},
}


def test_every_proxy_field_is_varied():
    varied = {name.split(".")[0] for name in VARIANTS}
    # kind and listen make a gateway (translated by gateway.py, its own tests); the rest are varied.
    assert {f.name for f in dataclasses.fields(Workload)} - varied == {"kind", "listen"}


def _snapshot(*workloads: Workload) -> MeshSnapshot:
    resources = parse_documents(CONFIG)
    by_kind = {
        name: tuple(r for r in resources if r.kind == kind)
        for kind, name in SNAPSHOT_FIELDS.items()
        if any(r.kind == kind for r in resources)
    }
    return MeshSnapshot("keys", workloads=(*SERVERS, *workloads), **by_kind)


def _bytes(snapshot, proxy: Workload) -> dict:
    out = translate(snapshot, proxy)
    return {t: [(n, m.SerializeToString(deterministic=True)) for n, m in out.by_type[t]] for t in TYPE_ORDER}


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_a_proxy_differing_in_one_input_never_gets_anothers_piece(field):
    variant = dataclasses.replace(BASE, id=f"variant-{field.replace('.', '-')}.default", **VARIANTS[field])
    snapshot = _snapshot(BASE, variant)
    alone = {p.id: _bytes(snapshot, p) for p in (BASE, variant)}
    for first, second in ((BASE, variant), (variant, BASE)):
        shared = SharedPieces(snapshot)
        assert _bytes(shared, first) == alone[first.id]
        assert _bytes(shared, second) == alone[second.id], f"{second.id} got a piece built for {first.id}"


def test_the_snapshot_makes_pieces_depend_on_the_caller():
    """The test above proves something only if the varied inputs change what proxies get."""
    snapshot = _snapshot(BASE)
    base = _bytes(snapshot, BASE)
    for field in ("namespace", "labels.version", "labels.region"):
        variant = dataclasses.replace(BASE, id="x.default", **VARIANTS[field])
        assert _bytes(_snapshot(BASE, variant), variant) != base, field


def test_translating_leaves_the_snapshot_as_it_was_built():
    """The translator keeps nothing in the frozen snapshot (the memo lives in the caller's view)."""
    snapshot = _snapshot(BASE)
    before = dict(vars(snapshot))
    for proxy in (*SERVERS, BASE):
        translate(snapshot, proxy)
        translate(SharedPieces(snapshot), proxy)
    after = vars(snapshot)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
