"""Translator golden files: the Envoy config generated for one proxy, as YAML, reviewed in diffs.

Refresh with `pytest tests/unit/translate --update-golden` and read the diff before committing.
"""

from __future__ import annotations

import json
from pathlib import Path

import lattice.demo

import pytest
import yaml
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import EXTENSION_CONFIG, TYPE_ORDER, translate

GOLDEN = Path(__file__).parents[2] / "golden" / "translate"
DATA = Path(lattice.demo.__file__).parent / "networking"

EXTRAS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - name: jason-delay
    match:
    - headers: {end-user: {exact: jason}}
      uri: {prefix: /ratings}
      method: {exact: GET}
      ignoreUriCase: true
    - queryParams: {debug: {regex: "1|true"}}
      withoutHeaders: {x-canary: {prefix: "no"}}
    fault:
      delay: {percent: 100, fixedDelay: 7s}
      abort: {httpStatus: 555, percentage: {value: 12.5}}
    route: [{destination: {host: ratings, subset: v1}}]
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,503,reset"}
  - route:
    - destination: {host: ratings, subset: v1}
      weight: 90
      headers: {request: {set: {x-subset: v1}}, response: {remove: [server]}}
    - destination: {host: ratings, subset: v2, port: {number: 9080}}
      weight: 10
    headers: {request: {add: {x-mesh: lattice}, remove: [x-debug]}}
    retries: {attempts: 0}
"""


def _workload(service: str, version: str, n: int, healthy: bool = True) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{version}-00000{n}.default",
            "name": f"{service}-{version}",
            "namespace": "default",
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": version},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": healthy,
        }
    )


WORKLOADS = (
    _workload("productpage", "v1", 2),
    _workload("reviews", "v1", 3),
    _workload("reviews", "v2", 4),
    _workload("reviews", "v3", 5, healthy=False),
    _workload("ratings", "v1", 6),
    _workload("ratings", "v2", 7),
)


def _snapshot(*texts: str) -> MeshSnapshot:
    resources = [r for t in texts for r in parse_documents(t)]
    return MeshSnapshot(
        "golden",
        WORKLOADS,
        tuple(r for r in resources if r.kind == "VirtualService"),
        tuple(r for r in resources if r.kind == "DestinationRule"),
    )


CASES = {
    "no-rules": lambda: _snapshot(),
    "jason-v2-v3": lambda: _snapshot(
        (DATA / "destination-rule-all.yaml").read_text(),
        (DATA / "virtual-service-reviews-jason-v2-v3.yaml").read_text(),
    ),
    "faults-retries-headers": lambda: _snapshot((DATA / "destination-rule-all.yaml").read_text(), EXTRAS),
}


def _render(snapshot: MeshSnapshot) -> str:
    resources = translate(snapshot, WORKLOADS[0])
    out = {
        t.rsplit(".", 1)[-1]: [
            _maps_sorted(json.loads(json_format.MessageToJson(m, preserving_proto_field_name=True)))
            for _, m in resources.by_type[t]
        ]
        for t in TYPE_ORDER
        if resources.by_type[t] or t != EXTENSION_CONFIG  # extension configs only where some exist
    }
    return yaml.safe_dump(out, sort_keys=False, width=120)


_MAPS = ("filter_metadata", "typed_filter_metadata")  # protobuf maps: no stable order to compare
_STRUCTS = ("value",)  # a TypedStruct's config (a Struct: maps all the way down)


def _deep_sorted(value):
    if isinstance(value, dict):
        return {k: _deep_sorted(v) for k, v in sorted(value.items())}
    return [_deep_sorted(v) for v in value] if isinstance(value, list) else value


def _maps_sorted(value, key: str = "", inside: bool = False):
    """Protobuf maps in key order, and everything inside them (metadata structs are maps too)."""
    if key in _STRUCTS and isinstance(value, dict):
        return _deep_sorted(value)
    if isinstance(value, dict):
        inside = inside or key in _MAPS
        items = sorted(value.items()) if inside else value.items()
        return {k: _maps_sorted(v, k, inside) for k, v in items}
    if isinstance(value, list):
        return [_maps_sorted(v, "", inside) for v in value]
    return value


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, request):
    rendered = _render(CASES[case]())
    path = GOLDEN / f"{case}.yaml"
    if request.config.getoption("--update-golden"):
        path.write_text(rendered)
    assert path.exists(), f"no golden file {path}; run with --update-golden"
    assert rendered == path.read_text(), f"translator output for {case} changed; review and run with --update-golden"


def test_output_is_byte_identical_across_runs():
    a = translate(CASES["jason-v2-v3"](), WORKLOADS[0])
    b = translate(CASES["jason-v2-v3"](), WORKLOADS[0])
    for t in TYPE_ORDER:
        assert [m.SerializeToString(deterministic=True) for _, m in a.by_type[t]] == [
            m.SerializeToString(deterministic=True) for _, m in b.by_type[t]
        ]
