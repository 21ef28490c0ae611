"""Istio's egress TLS-origination task (traffic-management/egress/egress-tls-origination) on
Lattice: the app calls `http://edition.cnn.com/politics` in plain HTTP, and its sidecar opens TLS
to the external server (DestinationRule `portLevelSettings` port 80 `tls.mode: SIMPLE`).

Two differences from the task's YAML, because no test may leave the machine: the ServiceEntry
resolves `edition.cnn.com` (STATIC) to an HTTPS server this test runs on loopback, and the
DestinationRule names that server's CA in `caCertificates` (the real site's is in the system roots).
"""

from __future__ import annotations

import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import BACKEND, ControlPlane, Workload, running, wait_for

pytestmark = pytest.mark.slow


def _service_entry(port: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: edition-cnn-com
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http-port: {port}
      https-port: {port}
"""


def _destination_rule(ca: Path) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE # initiates HTTPS when accessing edition.cnn.com
        caCertificates: {ca}
"""


class _Site(BaseHTTPRequestHandler):
    """edition.cnn.com, HTTPS only: what it saw, over TLS by construction."""

    seen: list[tuple[str, str, str]] = []

    def do_GET(self) -> None:
        _Site.seen.append((self.headers.get("Host", ""), self.path, self.connection.version()))
        body = b"politics\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _pki(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and edition.cnn.com's certificate signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edition.cnn.com")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("edition.cnn.com")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = directory / f"{name}-ca.pem", directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files[2].write_bytes(pem)
    return files


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cnn")
    ca, cert, key = _pki(directory, "cnn")
    other_ca, _, _ = _pki(directory, "other")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], ca, other_ca
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sleep(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("egress-tls") / "home").start()
    try:
        with running(plane, [Workload(plane, "sleep", command=BACKEND)]) as (client,):
            yield plane, client
    finally:
        plane.stop()


def test_the_sidecar_originates_tls_for_a_plain_http_call(site, sleep):
    port, ca, other_ca = site
    plane, client = sleep
    plane.apply(_service_entry(port))
    # Before the DestinationRule: plain HTTP to an HTTPS-only server fails (the task's 301, here a reset).
    wait_for(
        lambda: client.call("http://edition.cnn.com/politics")[0] >= 400, 15, what="the entry to reach the sidecar"
    )
    plane.apply(_destination_rule(ca))
    status, _, body = wait_for(
        lambda: (r := client.call("http://edition.cnn.com/politics"))[0] == 200 and r,
        15,
        what="edition.cnn.com over the TLS the sidecar opens",
    )
    assert body == b"politics\n"
    host, path, version = _Site.seen[-1]
    assert (host, path) == ("edition.cnn.com", "/politics") and version.startswith("TLSv1.")


def test_a_server_the_rules_ca_did_not_sign_is_refused(site, sleep):
    port, _, other_ca = site
    plane, client = sleep
    plane.apply(_service_entry(port) + "---\n" + _destination_rule(other_ca))
    wait_for(
        lambda: client.call("http://edition.cnn.com/politics")[0] == 503,
        15,
        what="the sidecar to refuse edition.cnn.com's certificate",
    )
