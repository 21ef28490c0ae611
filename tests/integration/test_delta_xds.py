"""A real Envoy speaking incremental (delta) ADS straight to the control plane, no agent between."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from harness import ENV_BASE, http, start_all, stop, wait_for
from lattice.agent.address import lease_loopback
from lattice.agent.envoy import envoy_binary

pytestmark = pytest.mark.slow


def _bootstrap(node_id: str, xds: str, admin_port: int) -> dict:
    host, port = xds.rsplit(":", 1)
    return {
        "node": {"id": node_id, "cluster": "delta-client.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds", "type": "STATIC", "connect_timeout": "1s",
                    "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http2_protocol_options": {}}}},
                    "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}]}]},
                }
            ]
        },
    }


def test_envoy_on_delta_xds_gets_config_and_changes(plane, tmp_path):
    reviews_v1, reviews_v2 = start_all(plane, [("reviews", "v1"), ("reviews", "v2")])
    lease = lease_loopback([9080, 15001])
    node_id = "delta-client-v1-000001.default"
    record = {"name": "delta-client-v1", "service": "delta-client", "service_account": "delta-client", "address": lease.address, "port": 9080, "app_port": 9, "outbound_port": 15001, "agent_port": 15020, "healthy": True, "labels": {"app": "delta-client"}}
    status, _, body = http("PUT", f"{plane.api}/api/v1/workloads/{node_id}", json.dumps(record).encode(), {"Content-Type": "application/json"})
    assert status == 200, body
    bootstrap = tmp_path / "envoy.json"
    admin_port = _free_port()
    bootstrap.write_text(json.dumps(_bootstrap(node_id, plane.xds, admin_port)))
    envoy = subprocess.Popen([envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warning"], env=ENV_BASE, stdout=open(tmp_path / "envoy.log", "wb"), stderr=subprocess.STDOUT)
    try:
        proxy = wait_for(lambda: plane.all_synced([node_id]) and plane.proxy(node_id), 20, what="the delta Envoy to sync")
        assert proxy["xds"] == "delta"
        url = "http://reviews:9080/reviews/0"
        via = f"http://{lease.address}:15001"
        seen = {http("GET", url, proxy=via)[1].get("x-served-by") for _ in range(10)}
        assert seen == {"reviews-v1", "reviews-v2"}
        routes_before = proxy["types"]["RouteConfiguration"]["acked"]
        plane.apply(_ONLY_V2)
        wait_for(lambda: {http("GET", url, proxy=via)[1].get("x-served-by") for _ in range(5)} == {"reviews-v2"}, 5, what="the delta update to route to v2")
        after = wait_for(lambda: plane.all_synced([node_id]) and plane.proxy(node_id), 5, what="the delta ACK")
        assert after["types"]["RouteConfiguration"]["acked"] != routes_before
        # Removing a subset removes its clusters from Envoy (delta `removed_resources`).
        assert [c for c in _clusters(admin_port) if "|v1|" in c] == ["outbound|9080|v1|reviews.default.svc.cluster.local"]
        plane.cli("delete", "destinationrule", "reviews")
        plane.cli("delete", "virtualservice", "reviews")
        wait_for(lambda: not [c for c in _clusters(admin_port) if "|v1|" in c], 5, what="subset clusters to be removed")
    finally:
        stop(envoy)
        lease.release()


_ONLY_V2 = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
"""


def _clusters(admin_port: int) -> list[str]:
    status, _, body = http("GET", f"http://127.0.0.1:{admin_port}/clusters?format=json")
    return [c["name"] for c in json.loads(body).get("cluster_statuses", [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
