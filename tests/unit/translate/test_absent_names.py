"""Mesh names no workload serves (mesh/absent.py): a fixed 503 "no healthy upstream" with the name,
never the passthrough (translate/rds.py)."""

from __future__ import annotations

import re

from envoy.config.route.v3 import route_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import ROUTE, translate
from lattice.translate.rds import NO_UPSTREAM_HEADER


def _web() -> Workload:
    return Workload.from_record(
        {
            "id": "web-v1-000001.default",
            "name": "web-v1",
            "namespace": "default",
            "service": "web",
            "service_account": "web",
            "labels": {"app": "web", "version": "v1"},
            "address": "10.0.0.1",
            "port": 8080,
            "app_port": 30001,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
    )


def _hosts(snapshot: MeshSnapshot) -> dict[str, route_pb2.RouteConfiguration]:
    ((_, table),) = translate(snapshot, _web()).by_type[ROUTE]
    return {h.name: h for h in table.virtual_hosts}


def test_a_departed_service_answers_503_with_its_name_on_every_port():
    snapshot = MeshSnapshot("1", workloads=(_web(),), departed=(("reviews", "default", 9080, "http"),))
    host = _hosts(snapshot)["absent:reviews.default.svc.cluster.local"]
    assert {"reviews", "reviews:*", "reviews.default.svc.cluster.local:*"} <= set(host.domains)
    (route,) = host.routes
    assert route.direct_response.status == 503
    assert "no healthy upstream for reviews.default.svc.cluster.local" in route.direct_response.body.inline_string
    assert route.response_headers_to_add[0].header.key == NO_UPSTREAM_HEADER


def test_a_virtual_service_host_without_workloads_is_the_mesh_s_and_a_service_with_workloads_is_not_absent():
    (vs,) = parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\n"
        "spec: {hosts: [ratings], http: [{route: [{destination: {host: ratings}}]}]}\n"
    )
    snapshot = MeshSnapshot(
        "1", workloads=(_web(),), virtual_services=(vs,), departed=(("web", "default", 8080, "http"),)
    )
    hosts = _hosts(snapshot)
    assert "absent:ratings.default.svc.cluster.local" in hosts
    assert not any(name.startswith("absent:web") for name in hosts)  # web has a workload


def test_names_of_the_mesh_domain_never_reach_the_passthrough():
    hosts = _hosts(MeshSnapshot("1", workloads=(_web(),)))
    routes = [r.name for r in hosts["allow_any"].routes]
    assert routes.index("mesh_domain") < routes.index("allow_any")
    (mesh_domain,) = [r for r in hosts["allow_any"].routes if r.name == "mesh_domain"]
    pattern = mesh_domain.match.headers[0].string_match.safe_regex.regex
    for name in ("ghost.default.svc.cluster.local", "ghost.default.svc", "ghost.prod.svc.cluster.local:9080"):
        assert re.fullmatch(pattern, name), name
    for name in ("example.com", "api.example.com:443", "ghost.default"):
        assert not re.fullmatch(pattern, name), name
