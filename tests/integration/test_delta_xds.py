"""A real Envoy speaking incremental (delta) ADS straight to the control plane, no agent between.

The test plays the agent's part: it enrolls an identity with a join token, gives Envoy that
certificate for the xDS connection (mTLS, as agents do), and serves Envoy's SDS itself with the
agent's own SecretServer in a process of its own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ENV_BASE, Enrolled, http, start_all, stop, wait_for
from lattice.agent.address import lease_loopback
from lattice.agent.envoy import die_with_parent, envoy_binary
from lattice.agent.proxy_credential import ProxyCredential

pytestmark = pytest.mark.slow


def _bootstrap(node_id: str, xds: str, admin_port: int, me: Enrolled, sds_socket: Path) -> dict:
    host, port = xds.rsplit(":", 1)
    xds_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "lattice-control-plane",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(me.cert_file)},
                        "private_key": {"filename": str(me.key_file)},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(me.bundle_file)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "lattice-control-plane"}}
                    ],
                },
                "alpn_protocols": ["h2"],
            },
        },
    }
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": node_id, "cluster": "delta-client.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": h2,
                    "transport_socket": xds_tls,
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": host, "port_value": int(port)}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
                {
                    "name": "sds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": h2,
                    "load_assignment": {
                        "cluster_name": "sds-grpc",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(sds_socket)}}}}]}
                        ],
                    },
                },
            ]
        },
    }


def test_envoy_on_delta_xds_gets_config_and_changes(plane, tmp_path):
    reviews_v1, reviews_v2 = start_all(plane, [("reviews", "v1"), ("reviews", "v2")])
    lease = lease_loopback([9080, 15001])
    node_id = "delta-client-v1-000001.default"
    record = {
        "name": "delta-client-v1",
        "service": "delta-client",
        "service_account": "delta-client",
        "address": lease.address,
        "port": 9080,
        "app_port": 9,
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
        "labels": {"app": "delta-client"},
    }
    me = Enrolled(plane, "delta-client", node_id, tmp_path / "identity")
    me.register(record)
    sds = _SdsServer(tmp_path / "sds.sock", me)
    bootstrap = tmp_path / "envoy.json"
    admin_port = _free_port()
    bootstrap.write_text(json.dumps(_bootstrap(node_id, plane.xds, admin_port, me, sds.socket)))
    credential = ProxyCredential.for_run_dir(tmp_path)  # what an agent gives Envoy and the app
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warning"],
        env=ENV_BASE | credential.envoy_env(),
        stdout=open(tmp_path / "envoy.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        proxy = wait_for(
            lambda: plane.all_synced([node_id]) and plane.proxy(node_id), 20, what="the delta Envoy to sync"
        )
        assert proxy["xds"] == "delta"
        url = "http://reviews:9080/reviews/0"
        via = credential.url(lease.address, 15001)
        seen = {http("GET", url, proxy=via)[1].get("x-served-by") for _ in range(10)}
        assert seen == {"reviews-v1", "reviews-v2"}
        routes_before = proxy["types"]["RouteConfiguration"]["acked"]
        plane.apply(_ONLY_V2)
        wait_for(
            lambda: {http("GET", url, proxy=via)[1].get("x-served-by") for _ in range(5)} == {"reviews-v2"},
            5,
            what="the delta update to route to v2",
        )
        after = wait_for(lambda: plane.all_synced([node_id]) and plane.proxy(node_id), 5, what="the delta ACK")
        assert after["types"]["RouteConfiguration"]["acked"] != routes_before
        # Removing a subset removes its clusters from Envoy (delta `removed_resources`).
        assert [c for c in _clusters(admin_port) if "|v1|" in c] == [
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ]
        plane.cli("delete", "destinationrule", "reviews")
        plane.cli("delete", "virtualservice", "reviews")
        wait_for(lambda: not [c for c in _clusters(admin_port) if "|v1|" in c], 5, what="subset clusters to be removed")
    finally:
        stop(envoy)
        sds.stop()
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


# The agent's SDS server for the enrolled identity, in a process of its own: argv is the socket,
# then the chain, key and bundle files.
SDS_SERVER = """
import asyncio, sys
from pathlib import Path
import grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from lattice.agent.sds import SecretServer

async def main():
    secrets = SecretServer()
    secrets.update(*(Path(f).read_bytes() for f in sys.argv[2:5]))
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(secrets, server)
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


class _SdsServer:
    def __init__(self, socket_path: Path, me: Enrolled) -> None:
        self.socket = socket_path
        argv = [
            sys.executable,
            "-c",
            SDS_SERVER,
            str(socket_path),
            str(me.cert_file),
            str(me.key_file),
            str(me.bundle_file),
        ]
        self.process = subprocess.Popen(argv, env=ENV_BASE, preexec_fn=die_with_parent)
        wait_for(socket_path.exists, 10, what="the SDS server to listen")

    def stop(self) -> None:
        stop(self.process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
