"""A Telemetry applied through the REST API (what `lattice apply -f` sends): stored, warned about
against the server's mesh config, carried into the next snapshot and resolved per workload; a
refused one names its field and stores nothing."""

from __future__ import annotations

from datetime import timedelta
from types import MappingProxyType

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh.model import Workload
from lattice.mesh.telemetry import mesh_telemetry, telemetry_for
from lattice.registry import Registry
from lattice.server.ca import CaManager
from lattice.server.pusher import Pusher
from lattice.server.rest import RestApi
from lattice.store import Store
from lattice.xds import SnapshotCache, StatusBoard

TOKEN = "test-admin-token"
MESH = "extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n"
TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 50
  accessLogging:
  - providers: [{name: otel-als}]
"""
REVIEWS = Workload(
    "reviews-v1-1.default",
    "reviews-v1",
    "default",
    "reviews",
    "reviews",
    MappingProxyType({"app": "reviews"}),
    "127.0.0.1",
    9080,
    9080,
    "http",
    15001,
    15020,
)


@pytest.fixture
async def api(tmp_path):
    with Store(tmp_path / "lattice.db") as store:
        registry = Registry(store)
        pusher = Pusher(
            store, registry, SnapshotCache(), mesh_telemetry=mesh_telemetry(parse_mesh_config(MESH, "mesh.yaml"))
        )
        ca = CaManager(tmp_path / "home", "cluster.local", timedelta(hours=1))
        rest = RestApi(store, registry, pusher, StatusBoard(), lambda: [], ca, TOKEN)
        async with TestClient(TestServer(rest.app())) as client:
            yield client, pusher


async def _post(client: TestClient, path: str, text: str):
    return await client.post(path, data=text, headers={"Authorization": f"Bearer {TOKEN}"})


async def test_apply_stores_warns_and_resolves(api):
    client, pusher = api
    response = await _post(client, "/api/v1/apply", TELEMETRY)
    body = await response.json()
    assert response.status == 200, body
    assert [(r["kind"], r["action"]) for r in body["results"]] == [("Telemetry", "created")]
    assert [w["field"] for w in body["warnings"]] == ["spec.accessLogging[0].providers[0].name"]
    listed = await (
        await client.get("/api/v1/resources/telemetries", headers={"Authorization": f"Bearer {TOKEN}"})
    ).json()
    assert [item["metadata"]["name"] for item in listed["items"]] == ["reviews"]
    snapshot = pusher.build()
    assert [r.name for r in snapshot.telemetries] == ["reviews"]
    tracing = telemetry_for(snapshot, REVIEWS).tracing
    assert (tracing.kind, tracing.service, tracing.sampling) == ("zipkin", "zipkin.istio-system.svc.cluster.local", 50)


async def test_refused_telemetry_names_the_field_and_stores_nothing(api):
    client, pusher = api
    response = await _post(
        client, "/api/v1/apply", TELEMETRY.replace("randomSamplingPercentage: 50", "randomSamplingPercentage: 500")
    )
    body = await response.json()
    assert response.status == 400
    assert [e["path"] for e in body["details"]["errors"]] == ["spec.tracing[0].randomSamplingPercentage"]
    assert pusher.build().telemetries == ()
