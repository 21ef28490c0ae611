"""ServiceEntry, WorkloadEntry and outboundTrafficPolicy with real sidecars: a meshed client reaches
HTTP servers outside the mesh (plain Python servers on 127.0.0.1, not under `lattice run`)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import BACKEND, ControlPlane, Workload, reset_config, served_by, wait_for

pytestmark = pytest.mark.slow


class External:
    """An HTTP server outside the mesh: answers with its name (`x-served-by`) and the Host it saw."""

    def __init__(self, name: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"served_by": name, "host": self.headers.get("host", "")}).encode()
                self.send_response(200)
                self.send_header("x-served-by", name)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"external-{name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _unused_port() -> int:
    """A port nothing listens on (the OS picks it, then it is released): a ServiceEntry's own port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def externals():
    servers = {name: External(name) for name in ("ext-a", "ext-b")}
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="module")
def client(shared_plane):
    w = Workload(shared_plane, "client", command=BACKEND).start()
    yield w
    w.stop()


def _apply(plane: ControlPlane, *documents: str) -> None:
    reset_config(plane)
    plane.apply("---\n".join(documents))
    wait_for(plane.all_synced, 10, what="config to reach every proxy")


def _static(name: str, host: str, port: int, endpoints: str, extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  {endpoints}
  {extra}
"""


def test_static_entry_sends_a_made_up_host_and_its_address_to_the_endpoint(shared_plane, client, externals):
    a = externals["ext-a"]
    port = _unused_port()
    url = f"http://ext.example.com:{port}/"
    reset_config(shared_plane)
    assert client.call(url)[0] == 503  # without the entry, the name resolves nowhere
    entry = _static(
        "ext",
        "ext.example.com",
        port,
        f"endpoints: [{{address: 127.0.0.1, ports: {{http: {a.port}}}}}]",
        "addresses: [127.0.0.77]",
    )
    _apply(shared_plane, entry)
    status, headers, body = client.call(url)
    assert status == 200 and headers["x-served-by"] == "ext-a", body
    assert json.loads(body)["host"] == f"ext.example.com:{port}"
    # The entry's address is a name for it too: nothing listens on 127.0.0.77, yet the request lands.
    assert client.call(f"http://127.0.0.77:{port}/")[1].get("x-served-by") == "ext-a"


def test_dns_entry_resolves_localhost_and_uses_the_target_port(shared_plane, client, externals):
    a = externals["ext-a"]
    port = _unused_port()
    url = f"http://localhost:{port}/"
    reset_config(shared_plane)
    assert client.call(url)[0] == 503  # passthrough to localhost:<port>: nothing listens there
    _apply(
        shared_plane,
        f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: local}}
spec:
  hosts: [localhost]
  ports: [{{number: {port}, name: http, targetPort: {a.port}}}]
  resolution: DNS
""",
    )
    status, headers, _ = client.call(url)
    assert status == 200 and headers["x-served-by"] == "ext-a"


def test_virtual_service_and_subsets_route_a_service_entry_host(shared_plane, client, externals):
    a, b = externals["ext-a"], externals["ext-b"]
    endpoints = (
        f"endpoints: [{{address: 127.0.0.1, ports: {{http: {a.port}}}, labels: {{version: a}}}}, "
        f"{{address: 127.0.0.1, ports: {{http: {b.port}}}, labels: {{version: b}}}}]"
    )
    rules = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: ext.example.com
  subsets: [{name: a, labels: {version: a}}, {name: b, labels: {version: b}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  http:
  - match: [{headers: {x-pick: {exact: b}}}]
    route: [{destination: {host: ext.example.com, subset: b}}]
  - route: [{destination: {host: ext.example.com, subset: a}}]
"""
    url = "http://ext.example.com/"
    _apply(shared_plane, _static("ext", "ext.example.com", 80, endpoints))
    assert set(served_by(client, url, 20)) == {"ext-a", "ext-b"}  # no rules: both endpoints
    _apply(shared_plane, _static("ext", "ext.example.com", 80, endpoints), rules)
    assert served_by(client, url, 20) == {"ext-a": 20}
    assert served_by(client, url, 20, {"x-pick": "b"}) == {"ext-b": 20}


def test_workload_entries_selected_by_labels_share_traffic_by_weight(shared_plane, client, externals):
    a, b = externals["ext-a"], externals["ext-b"]
    entries = [
        f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec: {{address: 127.0.0.1, ports: {{http: {server.port}}}, labels: {{app: vm, instance: {name}}}, weight: {weight}}}
"""
        for name, server, weight in (("vm-a", a, 1), ("vm-b", b, 3))
    ]
    other = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: not-selected}
spec: {address: 127.0.0.1, ports: {http: 1}, labels: {app: other}}
"""
    _apply(
        shared_plane,
        _static("vms", "vms.example.com", 80, "workloadSelector: {labels: {app: vm}}", "location: MESH_INTERNAL"),
        *entries,
        other,
    )
    counts = served_by(client, "http://vms.example.com/", 200)
    assert set(counts) == {"ext-a", "ext-b"}, counts  # the unselected entry (port 1) never answers
    assert 0.67 <= counts["ext-b"] / 200 <= 0.83, counts  # weight 3 of 4


def test_allow_any_passes_an_unknown_host_through(shared_plane, client, externals):
    reset_config(shared_plane)
    assert shared_plane.status()["server"]["outbound_traffic_policy"] == "ALLOW_ANY"
    status, headers, _ = client.call(f"http://127.0.0.1:{externals['ext-b'].port}/")
    assert status == 200 and headers["x-served-by"] == "ext-b"


def test_registry_only_blocks_unknown_hosts_but_not_entries_or_services(tmp_path, externals):
    plane = ControlPlane(tmp_path / "home", "--outbound-traffic-policy", "REGISTRY_ONLY").start()
    started = []
    try:
        started = [Workload(plane, name, command=BACKEND).start(wait=False) for name in ("client", "backend")]
        client, _ = [w.wait_ready() for w in started]
        a, b = externals["ext-a"], externals["ext-b"]
        plane.apply(
            "---\n".join(
                [
                    _static(
                        "ext", "ext.example.com", 80, f"endpoints: [{{address: 127.0.0.1, ports: {{http: {a.port}}}}}]"
                    ),
                    f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: any-localhost}}
spec:
  hosts: [localhost]
  ports: [{{number: {b.port}, name: http}}]
  resolution: NONE
""",
                ]
            )
        )
        wait_for(plane.all_synced, 10, what="entries to reach the proxies")
        assert plane.status()["server"]["outbound_traffic_policy"] == "REGISTRY_ONLY"
        assert "outbound traffic policy REGISTRY_ONLY" in plane.cli("status").stdout
        assert client.call(f"http://127.0.0.1:{b.port}/")[0] == 502  # reachable, but not in the registry
        assert client.call("http://ext.example.com/")[1].get("x-served-by") == "ext-a"
        assert client.call(f"http://localhost:{b.port}/")[1].get("x-served-by") == "ext-b"  # NONE: the requested host
        assert client.call("http://backend:9080/")[1].get("x-served-by", "").startswith("backend-")
    finally:
        for w in started:
            w.stop()
        plane.stop()


def test_an_unknown_outbound_traffic_policy_is_refused(tmp_path):
    plane = ControlPlane(tmp_path / "home")
    tmp_path.joinpath("home").mkdir()
    result = plane.cli(
        "server",
        "--home",
        str(plane.home),
        "--api-port",
        "0",
        "--xds-port",
        "0",
        "--agent-port",
        "0",
        "--outbound-traffic-policy",
        "DENY_ALL",
        check=False,
    )
    said = " ".join((result.stderr + result.stdout).replace("│", " ").split())  # rich wraps it in a box
    assert result.returncode != 0 and "Invalid value for '--outbound-traffic-policy'" in said
    assert "'DENY_ALL' is not one of 'ALLOW_ANY', 'REGISTRY_ONLY'" in said
