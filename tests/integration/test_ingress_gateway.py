"""Istio's ingress gateway task on Lattice: `lattice gateway` plus bookinfo-gateway.yaml, unchanged,
and `curl http://<gateway>/productpage` reaches Bookinfo; HTTPS, redirects and TCP at the edge."""

from __future__ import annotations

import datetime
import json
import ipaddress
import socket
import ssl
import sys
import subprocess
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import LATTICE, ControlPlane, die_with_parent, http, stop, wait_for
from lattice.agent.address import free_port

pytestmark = pytest.mark.slow
CONFORMANCE = Path("/work/shared/conformance/istio-bookinfo")
BOOKINFO_GATEWAY = (CONFORMANCE / "bookinfo-gateway.yaml").read_text()
PAGE_TITLE = b"Simple Bookstore App"


@pytest.fixture
def plane(shared_plane):
    return shared_plane


class Gateway:
    """`lattice gateway --listen PORT=LOCAL ...` as a user runs it, and where it serves each port."""

    def __init__(self, plane: ControlPlane, ports: list[int]) -> None:
        self.plane = plane
        self.local = {p: free_port() for p in ports}
        self.log = plane.home / f"gateway-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> Gateway:
        listen = [a for p, local in self.local.items() for a in ("--listen", f"{p}={local}")]
        env = self.plane.env | {"LATTICE_TOKEN": self.plane.token("istio-ingressgateway", "istio-system")}
        self.process = subprocess.Popen(
            [LATTICE, "gateway", *listen, "--log-level", "info"],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.info = wait_for(self._ready, 30, what=f"the gateway to be ready (log {self.log})")
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"lattice gateway exited with {self.process.returncode}:\n{self.log.read_text()}")
        for p in self.plane.status()["proxies"]:
            if p["name"] == "ingressgateway" and p["healthy"] and _holds_config(p):
                return p
        return None

    def url(self, port: int, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.info['address']}:{self.local[port]}{path}"

    def get(self, port: int, path: str, scheme: str = "http", context=None) -> tuple[int, dict, bytes]:
        return http("GET", self.url(port, path, scheme), context=context)


@pytest.fixture
def gateway(shared_plane, bookinfo):
    # Started per test, after `bookinfo` cleared the config: a gateway with no HTTP port never asks
    # for routes, which the harness's reset (waiting for every type to be synced) would wait on.
    gw = Gateway(shared_plane, [80, 81, 443, 31400]).start()
    yield gw
    stop(gw.process)


def _holds_config(proxy: dict) -> bool:
    """Connected and holding what it was sent; Envoy asks for routes and endpoints only once a
    listener or cluster needs them, so those may not have been sent at all."""
    optional = ("RouteConfiguration", "ClusterLoadAssignment")
    return proxy["connected"] and all(
        t["state"] == "SYNCED" or (name in optional and t["state"] == "NOT SENT") for name, t in proxy["types"].items()
    )


def _apply(plane: ControlPlane, yaml_text: str) -> None:
    plane.apply(yaml_text)
    wait_for(
        lambda: (
            (s := plane.status()) and not s["server"]["push_pending"] and all(_holds_config(p) for p in s["proxies"])
        ),
        10,
        what="every proxy to hold the applied config",
    )


def _refused(gateway: Gateway, port: int) -> bool:
    try:
        gateway.get(port, "/productpage")
    except OSError:  # URLError is one: nothing listens on the port
        return True
    return False


def test_bookinfo_gateway_yaml_unchanged_reaches_productpage(plane, bookinfo, gateway):
    # The agent reports healthy before it prints where it serves: wait for the line, don't race it.
    announced = f"Gateway port 80: http://{gateway.info['address']}:{gateway.local[80]}"
    wait_for(
        lambda: "ready at" in (text := gateway.log.read_text()) and announced in text,
        5,
        what="the gateway to print where it serves",
    )
    _apply(plane, BOOKINFO_GATEWAY)
    status, _, body = wait_for(
        lambda: (r := gateway.get(80, "/productpage"))[0] == 200 and r, 10, what="productpage through the gateway"
    )
    assert PAGE_TITLE in body and b"Book Reviews" in body
    status, _, body = gateway.get(80, "/api/v1/products")
    assert status == 200 and b'"id"' in body
    assert gateway.get(80, "/nothing-here")[0] == 404  # no route: the VirtualService names only productpage's paths


def test_requests_through_the_gateway_are_labelled_with_its_workload(plane, bookinfo, gateway):
    """productpage reports who called: the gateway's workload, not "unknown"."""
    _apply(plane, BOOKINFO_GATEWAY)
    wait_for(lambda: gateway.get(80, "/productpage")[0] == 200, 10, what="productpage through the gateway")
    url = f"http://{bookinfo.address}:{bookinfo.info['agent_port']}/stats/prometheus"

    def callers() -> set[str]:
        text = http("GET", url)[2].decode()
        lines = [
            x for x in text.splitlines() if x.startswith("istio_requests_total{") and 'reporter="destination"' in x
        ]
        return {x.split('source_workload="', 1)[1].split('"', 1)[0] for x in lines if 'source_workload="' in x}

    wait_for(lambda: "ingressgateway" in callers(), 10, what="the gateway as source_workload")


def test_without_a_gateway_resource_nothing_listens(plane, bookinfo, gateway):
    assert _refused(gateway, 80)


def test_gateway_selecting_no_proxy_changes_nothing(plane, bookinfo, gateway):
    _apply(plane, BOOKINFO_GATEWAY.replace("istio: ingressgateway", "istio: some-other-gateway"))
    assert _refused(gateway, 80)
    _apply(plane, BOOKINFO_GATEWAY)  # the same file, selecting this gateway: now it serves
    wait_for(lambda: gateway.get(80, "/productpage")[0] == 200, 10, what="the matching Gateway to take effect")


def _self_signed(directory: Path, address: str, host: str = "bookinfo.example.com") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(address))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(sans, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def _first_answer(address: str, port: int, path: str) -> tuple[int, str]:
    """Status and Location of one plain HTTP request, redirects not followed (urllib would follow them)."""
    connection = HTTPConnection(address, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("location", "")
    finally:
        connection.close()


HTTPS_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-https}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: 81, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
"""


def test_https_simple_serves_the_same_routes_and_http_redirects(plane, bookinfo, gateway, tmp_path):
    cert, key = _self_signed(tmp_path, gateway.info["address"])
    bound_to_both = BOOKINFO_GATEWAY.replace("  - bookinfo-gateway\n", "  - bookinfo-gateway\n  - bookinfo-https\n")
    _apply(plane, HTTPS_GATEWAY.format(cert=cert, key=key) + "---\n" + bound_to_both)
    trusting = ssl.create_default_context(cafile=str(cert))
    status, _, body = wait_for(
        lambda: (r := gateway.get(443, "/productpage", "https", trusting))[0] == 200 and r,
        10,
        what="productpage over HTTPS",
    )
    assert PAGE_TITLE in body
    assert gateway.get(443, "/nothing-here", "https", trusting)[0] == 404
    with pytest.raises(OSError):  # a client that does not trust the certificate refuses the handshake
        gateway.get(443, "/productpage", "https", ssl.create_default_context())
    status, location = _first_answer(gateway.info["address"], gateway.local[81], "/productpage")
    assert status == 301 and location.startswith("https://") and location.endswith("/productpage")
    assert gateway.get(80, "/productpage")[0] == 200  # the plain HTTP server is not redirected


TCP_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-edge}
spec:
  hosts: ["*"]
  gateways: [tcp-edge]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
"""


def test_tcp_server_forwards_bytes_to_the_mesh_service(plane, bookinfo, gateway):
    _apply(plane, TCP_GATEWAY)
    # The gateway opens the bytes to nobody: they reach productpage's sidecar over mesh mTLS, as sent.
    status, _, body = wait_for(
        lambda: (r := gateway.get(31400, "/productpage"))[0] == 200 and r, 10, what="productpage over the TCP port"
    )
    assert PAGE_TITLE in body


# An app that speaks TLS itself, with its own certificate: PASSTHROUGH must deliver the client's
# handshake to it unopened.
TLS_APP = """
import http.server, os, ssl
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "11"); self.end_headers();
        self.wfile.write(b"tls-backend")
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

PASSTHROUGH_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure}
spec:
  hosts: [secure.example.com]
  gateways: [tls-edge]
  tls:
  - match: [{sniHosts: [secure.example.com]}]
    route: [{destination: {host: secure, port: {number: 9080}}}]
"""


def _tls_get(address: str, port: int, sni: str, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((address, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as conn,
    ):
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        return b"".join(iter(lambda: conn.recv(65536), b""))


def test_tls_passthrough_reaches_the_app_that_holds_the_certificate(plane, bookinfo, gateway, workloads, tmp_path):
    cert, key = _self_signed(tmp_path, "127.0.0.1", "secure.example.com")
    workloads(
        "secure",
        command=[sys.executable, "-c", TLS_APP],
        extra=("--protocol", "tcp"),
        env={"CERT": str(cert), "KEY": str(key)},
    )
    _apply(plane, PASSTHROUGH_GATEWAY)
    trusting = ssl.create_default_context(cafile=str(cert))  # the app's certificate: the gateway never had it
    answer = wait_for(
        lambda: _tls_get(gateway.info["address"], gateway.local[443], "secure.example.com", trusting),
        10,
        what="the TLS app through the gateway",
    )
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"tls-backend")
    with pytest.raises(OSError):  # an SNI no tls route names has no filter chain: the connection is closed
        _tls_get(gateway.info["address"], gateway.local[443], "other.example.com", ssl._create_unverified_context())


def test_authorization_policy_selecting_the_gateway_applies_at_the_edge(plane, bookinfo, gateway):
    """Istio's ingress access control task: a policy selecting the gateway's labels guards what
    outsiders may reach, before any route is taken."""
    _apply(plane, BOOKINFO_GATEWAY)
    wait_for(lambda: gateway.get(80, "/productpage")[0] == 200, 10, what="productpage through the gateway")
    namespace = gateway.info.get("namespace", "default")
    _apply(
        plane,
        f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/api/*"]}}}}]}}]
""",
    )
    status, _, body = wait_for(
        lambda: (r := gateway.get(80, "/api/v1/products"))[0] == 403 and r, 10, what="the gateway to deny /api/*"
    )
    assert body == b"RBAC: access denied"
    assert gateway.get(80, "/productpage")[0] == 200


def test_lua_traffic_extension_from_istios_task_runs_at_the_gateway(plane, bookinfo, gateway):
    """Istio's "Executing Lua Scripts" task: its TrafficExtension, unchanged, on the ingress gateway."""
    _apply(plane, BOOKINFO_GATEWAY)
    wait_for(lambda: gateway.get(80, "/productpage")[0] == 200, 10, what="productpage through the gateway")
    _apply(plane, (Path(__file__).parents[1] / "conformance" / "istio-lua-parity.yaml").read_text())

    def parity(number: str) -> str | None:
        status, headers, _ = http("GET", gateway.url(80, "/productpage"), headers={"x-number": number})
        return status == 200 and headers.get("x-parity")

    assert wait_for(lambda: parity("7"), 10, what="the Lua filter at the gateway") == "odd"
    assert parity("42") == "even"
    status, headers, _ = http("GET", gateway.url(80, "/productpage"))
    assert status == 200 and "x-parity" not in headers


def test_why_explains_a_host_the_gateway_has_no_route_for(plane, bookinfo, gateway):
    """`lattice why` on a request whose Host no VirtualService bound to the gateway serves: the
    gateway's 404 is "no route for <host>", and the fix says to check that host name."""
    _apply(
        plane,
        BOOKINFO_GATEWAY.replace('  hosts:\n  - "*"\n  gateways:', '  hosts:\n  - "bookinfo.example"\n  gateways:'),
    )
    wait_for(
        lambda: http("GET", gateway.url(80, "/productpage"), headers={"Host": "bookinfo.example"})[0] == 200,
        15,
        what="the gateway to route bookinfo.example",
    )
    status, _, _ = http("GET", gateway.url(80, "/productpage"), headers={"Host": "other.example"})
    assert status == 404
    # At the edge Envoy sets a request id of its own (a client's is not trusted): the user finds
    # the request in `lattice why`'s list of the latest failures, then asks about it.
    listed = wait_for(
        lambda: [
            r
            for r in json.loads(plane.cli("why", "-o", "json").stdout)["items"]
            if r["proxy"] == "ingressgateway" and r.get("authority", "").startswith("other.example")
        ],
        10,
        what="the gateway's 404 to be listed",
    )
    request_id = listed[0]["request_id"]

    def answer():
        out = json.loads(plane.cli("why", request_id, "-o", "json").stdout)
        return out if out["found"] and out["cause"] else None

    cause = wait_for(answer, 10, what=f"the gateway's record of request {request_id}")["cause"]
    assert cause["flag"] == "NR" and "no route for other.example/productpage" in cause["summary"]
    assert any("check the host name 'other.example'" in fix for fix in cause["fixes"]), cause
