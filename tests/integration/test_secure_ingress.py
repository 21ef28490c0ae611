"""Istio's secure-ingress task (traffic-management/ingress/secure-ingress) on Lattice, its YAML
unchanged: the certificates made with the task's openssl commands, kept with `lattice secret create
tls` (the task's `kubectl create secret`), served by `lattice gateway` through `credentialName`.

As the task's page states: SIMPLE answers 418 from httpbin's /status/418 to a client trusting
example.com's CA, presenting httpbin.example.com's certificate; after the secret is replaced, a new
connection sees the new certificate (no restart); MUTUAL refuses a client without a certificate at
the handshake and answers one with client.example.com's certificate."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from harness import BACKEND, LATTICE, ControlPlane, Workload, child_pid, die_with_parent, stop, wait_for
from lattice.agent.address import free_port

pytestmark = pytest.mark.slow

GATEWAY_SIMPLE = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"""
GATEWAY_MUTUAL = GATEWAY_SIMPLE.replace("mode: SIMPLE", "mode: MUTUAL")
VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _task_certificates(directory: Path, n: int) -> Path:
    """The task's commands: a root for example.com, httpbin.example.com's certificate signed by it
    (and, for MUTUAL, client.example.com's). Returns the directory, example_certs<n>."""
    d = directory / f"example_certs{n}"
    d.mkdir()
    subj = "/O=example Inc./CN=example.com"
    _openssl("req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048", "-subj", subj,
             "-keyout", "example.com.key", "-out", "example.com.crt", cwd=d)  # fmt: skip
    for host, org in (("httpbin.example.com", "httpbin organization"), ("client.example.com", "client organization")):
        _openssl("req", "-out", f"{host}.csr", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{host}.key",
                 "-subj", f"/CN={host}/O={org}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-sha256", "-days", "365", "-CA", "example.com.crt", "-CAkey", "example.com.key",
                 "-set_serial", str(n), "-in", f"{host}.csr", "-out", f"{host}.crt", cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    return _task_certificates(root, 1), _task_certificates(root, 2)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A control plane, httpbin (port 8000) under its sidecar, and `lattice gateway --listen 443=PORT`."""
    plane = ControlPlane(tmp_path_factory.mktemp("secure-ingress") / "home").start()
    httpbin = Workload(plane, "httpbin", command=BACKEND, extra=("--port", "8000"))
    gateway = None
    try:
        httpbin.start()
        local = free_port()
        log = plane.home / "gateway.log"
        env = plane.env | {"LATTICE_TOKEN": plane.token("istio-ingressgateway", "istio-system")}
        gateway = subprocess.Popen(
            [LATTICE, "gateway", "--listen", f"443={local}", "--log-level", "info"],
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        info = wait_for(lambda: _gateway(plane, gateway, log), 30, what=f"the gateway to be ready (log {log})")
        yield plane, (info["address"], local), gateway, log
    finally:
        if gateway is not None:
            stop(gateway)
        httpbin.stop()
        plane.stop()


def _gateway(plane: ControlPlane, process: subprocess.Popen, log: Path):
    if process.poll() is not None:
        raise AssertionError(f"lattice gateway exited with {process.returncode}:\n{log.read_text()}")
    return next((p for p in plane.status()["proxies"] if p["name"] == "ingressgateway" and p["healthy"]), None)


def _curl(
    where: tuple[str, int], ca: Path, client: tuple[Path, Path] | None = None, path: str = "/status/418"
) -> tuple[int, dict]:
    """`curl --resolve httpbin.example.com:443:GATEWAY --cacert CA [--cert --key] https://httpbin.example.com/...`:
    (status, the server certificate's subject and sha256)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the task's certificate names its host in CN only; checked below
    if client:
        context.load_cert_chain(str(client[0]), str(client[1]))
    with socket.create_connection(where, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="httpbin.example.com") as tls:
            seen = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: httpbin.example.com\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    subject = {k: v for rdn in seen["subject"] for k, v in rdn}
    return int(answer.split(b" ", 2)[1]), {"cn": subject["commonName"], "sha256": hashlib.sha256(der).hexdigest()}


def _fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def _served(where, ca: Path, expect: Path, client=None) -> bool:
    try:
        status, cert = _curl(where, ca, client)
    except (OSError, ssl.SSLError):
        return False
    return status == 418 and cert["sha256"] == _fingerprint(expect)


def _secret(plane: ControlPlane, verb: str, certs: Path, *extra: str) -> subprocess.CompletedProcess:
    """The task's `kubectl create -n istio-system secret tls httpbin-credential --key ... --cert ...`."""
    return plane.cli(*_secret_args(verb, certs), *extra)


def test_simple_tls_with_credential_name_then_rotation_without_restart(mesh, certs):
    plane, where, gateway, gateway_log = mesh
    one, two = certs
    plane.apply(GATEWAY_SIMPLE + "---" + VIRTUAL_SERVICE)
    # The Gateway names a secret that does not exist yet: the server is not served, and status says why.
    wait_for(
        lambda: any("httpbin-credential" in c for c in plane.status()["conflicts"]),
        10,
        what="lattice status to name the missing secret",
    )
    made = _secret(plane, "create", one)
    assert "secret istio-system/httpbin-credential created" in made.stdout
    wait_for(lambda: _served(where, one / "example.com.crt", one / "httpbin.example.com.crt"), 15,
             what="httpbin.example.com's certificate and 418 through the gateway")  # fmt: skip
    status, cert = _curl(where, one / "example.com.crt")
    assert (status, cert["cn"]) == (418, "httpbin.example.com")
    assert not any("httpbin-credential" in c for c in plane.status()["conflicts"])

    # A client trusting another CA (the task's second set) refuses the gateway's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        _curl(where, two / "example.com.crt")
    # create again is refused (and says what to do); update rotates it.
    again = plane.cli(*_secret_args("create", one), check=False)
    assert again.returncode != 0 and "lattice secret update tls httpbin-credential" in again.stderr
    envoy = child_pid(_Proc(gateway), "envoy")
    _secret(plane, "update", two)
    wait_for(lambda: _served(where, two / "example.com.crt", two / "httpbin.example.com.crt"), 15,
             what="a new connection to see the rotated certificate")  # fmt: skip
    assert child_pid(_Proc(gateway), "envoy") == envoy  # no restart: Envoy got the new secret over SDS
    with pytest.raises(ssl.SSLCertVerificationError):
        _curl(where, one / "example.com.crt")  # the old CA no longer verifies what is served

    # The key is never shown, logged or stored in clear.
    key_body = _key_body(two / "httpbin.example.com.key")
    shown = plane.cli("secret", "get", "httpbin-credential", "-n", "istio-system", "-o", "json").stdout
    assert json.loads(shown)["dns_names"] == [] and json.loads(shown)["subject"].startswith("O=httpbin organization")
    listed = plane.cli("secret", "list", "-o", "yaml").stdout
    assert "httpbin-credential" in listed
    proxy = _gateway(plane, gateway, gateway_log)
    dump = plane.call("GET", f"/api/v1/proxies/{proxy['id']}/config_dump")[1]
    for text in (shown, listed, json.dumps(dump), (plane.home / "server.log").read_text(), gateway_log.read_text()):
        assert key_body not in text
    stored = b"".join(p.read_bytes() for p in plane.home.glob("*.db*"))
    assert key_body.encode() not in stored and b"httpbin-credential" in stored
    assert (plane.home / "secrets.key").stat().st_mode & 0o777 == 0o600


def test_mutual_tls_refuses_a_client_without_certificate(mesh, certs):
    plane, where, _, _ = mesh
    one, _ = certs
    # The SIMPLE test's secret, if it ran first (tests may run in any order).
    plane.cli("secret", "delete", "httpbin-credential", "-n", "istio-system", check=False)
    # The task's `kubectl create secret generic ... --from-file=ca.crt=example_certs1/example.com.crt`.
    _secret(plane, "create", one, "--ca", str(one / "example.com.crt"))
    plane.apply(GATEWAY_MUTUAL + "---" + VIRTUAL_SERVICE)
    client = (one / "client.example.com.crt", one / "client.example.com.key")

    def needs_client_cert() -> bool:
        """The task's curl without --cert: the handshake fails with TLS 1.3's certificate_required alert."""
        try:
            _curl(where, one / "example.com.crt")
        except ssl.SSLError as e:
            return "CERTIFICATE_REQUIRED" in str(e)
        except OSError:
            return False  # the listener is being replaced
        return False

    wait_for(needs_client_cert, 15, what="the gateway to refuse a client without certificate (MUTUAL)")
    wait_for(lambda: _served(where, one / "example.com.crt", one / "httpbin.example.com.crt", client), 15,
             what="418 with client.example.com's certificate")  # fmt: skip
    # A client certificate from a CA the secret does not name is refused at the handshake too.
    _, two = certs
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _curl(where, one / "example.com.crt", (two / "client.example.com.crt", two / "client.example.com.key"))


def test_bad_material_is_refused_and_nothing_changes(mesh, certs):
    plane, _, _, _ = mesh
    one, two = certs
    before = plane.cli("secret", "list", "-o", "json").stdout
    mismatched = plane.cli(
        "secret", "create", "tls", "other", "-n", "istio-system",
        "--cert", str(one / "httpbin.example.com.crt"), "--key", str(two / "httpbin.example.com.key"), check=False,
    )  # fmt: skip
    assert mismatched.returncode != 0 and "not the private key of the certificate" in mismatched.stderr
    assert _key_body(two / "httpbin.example.com.key") not in mismatched.stderr + mismatched.stdout
    assert plane.cli("secret", "list", "-o", "json").stdout == before


def _secret_args(verb: str, certs: Path, namespace: str = "istio-system") -> list[str]:
    key, cert = certs / "httpbin.example.com.key", certs / "httpbin.example.com.crt"
    return ["secret", verb, "tls", "httpbin-credential", "-n", namespace, "--key", str(key), "--cert", str(cert)]


def _key_body(path: Path) -> str:
    """A line from the middle of the PEM key: what would show if the key were echoed anywhere."""
    lines = path.read_text().splitlines()
    return lines[len(lines) // 2]


class _Proc:
    """child_pid takes a harness Workload; the gateway is a bare process here."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process


GATEWAY_API = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: lattice}
spec: {controllerName: lattice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: web}
spec:
  gatewayClassName: lattice
  listeners:
  - name: https
    hostname: httpbin.example.com
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs: [{kind: Secret, group: "", name: httpbin-credential}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httpbin, namespace: web}
spec:
  parentRefs: [{name: web}]
  hostnames: [httpbin.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /status}}]
    backendRefs: [{name: httpbin, namespace: default, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: httpbin, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web}]
  to: [{group: "", kind: Service}]
"""


def test_gateway_api_https_listener_serves_its_certificate_refs(mesh, certs):
    """The Gateway API's form of the same task: an HTTPS listener whose certificateRefs name the secret."""
    plane, _, _, _ = mesh
    one, _ = certs
    local = free_port()
    log = plane.home / "gateway-api.log"
    env = plane.env | {"LATTICE_TOKEN": plane.token("istio-web", "web")}
    args = ["--gateway-class", "lattice", "--gateway", "web", "-n", "web", "--name", "web", "--listen", f"443={local}"]
    gateway = subprocess.Popen(
        [LATTICE, "gateway", *args],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        proxy = wait_for(
            lambda: next((p for p in plane.status()["proxies"] if p["name"] == "web" and p["healthy"]), None),
            30,
            what=f"the Gateway API gateway to be ready (log {log})",
        )
        plane.apply(GATEWAY_API)
        plane.cli(*_secret_args("create", one, namespace="web"))
        where = (proxy["address"], local)
        wait_for(lambda: _served(where, one / "example.com.crt", one / "httpbin.example.com.crt"), 15,
                 what="httpbin.example.com's certificate and 418 through the Gateway API gateway")  # fmt: skip
        shown = plane.cli("get", "gtw", "web", "-n", "web", "-o", "json").stdout
        (listener,) = json.loads(shown)["status"]["listeners"]
        assert {c["type"]: c["status"] for c in listener["conditions"]}["ResolvedRefs"] == "True"
    finally:
        stop(gateway)


# An app that terminates TLS itself: a TLSRoute passes the client's handshake to it unopened.
TLS_APP = """
import http.server, os, ssl
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "11"); self.end_headers()
        self.wfile.write(b"tls-backend")
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
L4_GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: lattice}
spec: {controllerName: lattice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: lattice
  listeners:
  - {name: tls, port: 9443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [httpbin.example.com]
  rules: [{backendRefs: [{name: secure, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: plain}
spec:
  parentRefs: [{name: edge, sectionName: tcp}]
  rules: [{backendRefs: [{name: httpbin, port: 8000}]}]
"""


def test_tls_route_by_sni_and_tcp_route_through_a_gateway_api_gateway(mesh, certs):
    plane, _, _, _ = mesh
    one, _ = certs
    app = Workload(
        plane,
        "secure",
        command=[sys.executable, "-c", TLS_APP],
        extra=("--protocol", "tcp"),
        env={"CERT": str(one / "httpbin.example.com.crt"), "KEY": str(one / "httpbin.example.com.key")},
    )
    tls_port, tcp_port = free_port(), free_port()
    log = plane.home / "gateway-l4.log"
    env = plane.env | {"LATTICE_TOKEN": plane.token("istio-edge", "default")}
    args = ["--gateway-class", "lattice", "--gateway", "edge", "-n", "default", "--name", "edge"]
    listen = ["--listen", f"9443={tls_port}", "--listen", f"9000={tcp_port}"]
    gateway = None
    try:
        app.start()
        gateway = subprocess.Popen(
            [LATTICE, "gateway", *args, *listen],
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        proxy = wait_for(
            lambda: next((p for p in plane.status()["proxies"] if p["name"] == "edge" and p["healthy"]), None),
            30,
            what=f"the Gateway API gateway to be ready (log {log})",
        )
        plane.apply(L4_GATEWAY)
        address = proxy["address"]

        def tls_answer(sni: str) -> tuple[bytes, str]:
            context = ssl.create_default_context(cafile=str(one / "example.com.crt"))
            context.check_hostname = False
            with socket.create_connection((address, tls_port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=sni) as tls:
                    der = tls.getpeercert(binary_form=True)
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
                    return b"".join(iter(lambda: tls.recv(65536), b"")), hashlib.sha256(der).hexdigest()

        body, seen = wait_for(lambda: _or_none(tls_answer, "httpbin.example.com"), 15, what="the TLSRoute's backend")
        assert body.endswith(b"tls-backend") and seen == _fingerprint(one / "httpbin.example.com.crt")
        with pytest.raises(OSError):  # an SNI no TLSRoute names has no filter chain: the connection is closed
            tls_answer("other.example.com")

        def over_tcp() -> bytes:
            with socket.create_connection((address, tcp_port), timeout=5) as conn:
                conn.sendall(b"GET /status/418 HTTP/1.1\r\nHost: httpbin\r\nConnection: close\r\n\r\n")
                return b"".join(iter(lambda: conn.recv(65536), b""))

        answer = wait_for(lambda: _or_none(over_tcp), 15, what="httpbin over the TCPRoute")
        assert answer.startswith(b"HTTP/1.") and b" 418 " in answer.split(b"\r\n", 1)[0]
        shown = json.loads(plane.cli("get", "tcproutes", "plain", "-o", "json").stdout)
        assert shown["status"]["parents"][0]["conditions"][0]["status"] == "True"
    finally:
        if gateway is not None:
            stop(gateway)
        app.stop()


def _or_none(fn, *args):
    try:
        return fn(*args) or None
    except OSError:
        return None
