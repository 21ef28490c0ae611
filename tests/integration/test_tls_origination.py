"""DestinationRule `tls` SIMPLE and MUTUAL: the client's sidecar originates TLS to an app that
terminates TLS itself, with the certificate files the rule names (Istio's semantics)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Workload, reset_config, wait_for

pytestmark = pytest.mark.slow

# A TLS app: it terminates TLS itself (its own CA, not the mesh's) and reports the client
# certificate's subject, if the client sent one.
TLS_APP = """
import http.server, json, os, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        subject = dict(x[0] for x in peer.get("subject", ()))
        body = json.dumps({"client": subject.get("commonName", "")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
directory = sys.argv[1]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=f"{directory}/ca.pem")
context.load_cert_chain(f"{directory}/server.pem", f"{directory}/server-key.pem")
context.verify_mode = ssl.CERT_OPTIONAL
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def _pki(directory, prefix: str = ""):
    """A CA and, signed by it, a server certificate for secure.example and a client certificate."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}test app CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, san in (("server", x509.DNSName("secure.example")), ("client", x509.DNSName("client.example"))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.example")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return directory


def _rule(tls: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure
  trafficPolicy:
    tls: {tls}
"""


# The app speaks TLS on its own port: its sidecar passes bytes through (plaintext chain), so the
# TLS the client's sidecar originates reaches the app itself.
PASSTHROUGH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: secure}
spec:
  selector: {matchLabels: {app: secure}}
  mtls: {mode: DISABLE}
"""


@pytest.fixture(scope="module")
def secure_mesh(shared_plane, tmp_path_factory):
    pki = _pki(tmp_path_factory.mktemp("app-pki"))
    server = Workload(
        shared_plane, "secure", command=[sys.executable, "-c", TLS_APP, str(pki)], extra=("--protocol", "tcp")
    ).start()
    client = Workload(shared_plane, "productpage").start()
    yield shared_plane, client, pki, tmp_path_factory.mktemp("foreign-pki")
    client.stop()
    server.stop()


def _apply(plane, *documents: str) -> None:
    reset_config(plane)
    plane.apply("---".join(documents))
    wait_for(plane.all_synced, 10, what="the rule to reach every proxy")


def test_simple_tls_origination_verifies_the_app_with_the_rules_ca(secure_mesh):
    plane, client, pki, foreign = secure_mesh
    _apply(
        plane, PASSTHROUGH, _rule(f"{{mode: SIMPLE, caCertificates: {pki}/ca.pem, subjectAltNames: [secure.example]}}")
    )
    status, _, body = client.call("http://secure:9080/")
    assert status == 200, body
    assert json.loads(body) == {"client": ""}  # SIMPLE: no client certificate


def test_simple_tls_origination_refuses_an_app_the_ca_did_not_sign(secure_mesh):
    plane, client, pki, foreign = secure_mesh
    _pki(foreign, prefix="foreign ")
    _apply(plane, PASSTHROUGH, _rule(f"{{mode: SIMPLE, caCertificates: {foreign}/ca.pem}}"))
    assert client.call("http://secure:9080/")[0] == 503


def test_simple_tls_origination_refuses_a_wrong_subject_alt_name(secure_mesh):
    plane, client, pki, foreign = secure_mesh
    _apply(
        plane, PASSTHROUGH, _rule(f"{{mode: SIMPLE, caCertificates: {pki}/ca.pem, subjectAltNames: [other.example]}}")
    )
    assert client.call("http://secure:9080/")[0] == 503


def test_mutual_tls_origination_presents_the_rules_client_certificate(secure_mesh):
    plane, client, pki, foreign = secure_mesh
    tls = (
        f"{{mode: MUTUAL, clientCertificate: {pki}/client.pem, privateKey: {pki}/client-key.pem,"
        f" caCertificates: {pki}/ca.pem}}"
    )
    _apply(plane, PASSTHROUGH, _rule(tls))
    status, _, body = client.call("http://secure:9080/")
    assert status == 200, body
    assert json.loads(body) == {"client": "client.example"}


def test_without_a_rule_a_tls_app_is_not_spoken_to_in_plaintext_http(secure_mesh):
    plane, client, pki, foreign = secure_mesh
    _apply(plane, PASSTHROUGH)
    assert client.call("http://secure:9080/")[0] != 200  # plaintext HTTP to a TLS port fails
