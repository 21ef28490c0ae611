"""Mutual TLS between sidecars, observed from outside: plaintext, foreign certificates and meshed
clients against the inbound port under each PeerAuthentication mode, and what goes over the wire."""

from __future__ import annotations

import datetime
import json
import secrets
import shutil
import signal
import struct
import subprocess
import sys
from http.client import HTTPException
from pathlib import Path

import pytest

from harness import Enrolled, Workload, drained, http, reset_config, running, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mtls")]
SERVER, CLIENT = "ratings", "productpage"
URL = f"http://{SERVER}:9080"
SPIFFE = "spiffe://cluster.local/ns/default/sa/{}"
XFCC = "x-forwarded-client-cert"
FORGED_XFCC = "By=spiffe://cluster.local/ns/default/sa/ratings;URI=spiffe://cluster.local/ns/default/sa/forged-admin"
# Answers every GET with what it received: the path and every header, repeats included.
ECHO_APP = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-served-by", os.environ["LATTICE_WORKLOAD"])
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""


def _policy(
    name: str, namespace: str, mode: str, selector: str | None = None, port_modes: dict[int, str] | None = None
) -> str:
    spec: dict = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": {"app": selector}}
    if port_modes:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in port_modes.items()}
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return json.dumps(doc)  # JSON is YAML


def _destination_rule(tls_mode: str) -> str:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": SERVER, "namespace": "default"},
        "spec": {"host": SERVER, "trafficPolicy": {"tls": {"mode": tls_mode}}},
    }
    return json.dumps(doc)


MESH_STRICT = _policy("default", "istio-system", "STRICT")
MESH_PERMISSIVE = _policy("default", "istio-system", "PERMISSIVE")


@pytest.fixture
def plane(shared_plane):
    return shared_plane


@pytest.fixture(scope="module")
def echo_mesh(shared_plane):
    """Server and client, both running the echo app under their own sidecars."""
    with running(
        shared_plane,
        [Workload(shared_plane, s, "v1", command=[sys.executable, "-c", ECHO_APP]) for s in (SERVER, CLIENT)],
    ) as ready:
        yield ready


@pytest.fixture
def mesh(plane, echo_mesh):
    """(server, client) with no PeerAuthentication or DestinationRule: PERMISSIVE, auto mTLS."""
    reset_config(plane)
    return echo_mesh


def _apply(plane, *docs: str, timeout: float = 10) -> None:
    for doc in docs:
        plane.apply(doc)
    wait_for(plane.all_synced, timeout, what="every proxy to hold the new config")


def _seen(body: bytes, name: str) -> list[str]:
    """Every value of header `name` the echo app received."""
    return [v for k, v in json.loads(body)["headers"] if k == name]


def _plaintext(server: Workload, path: str = "/", headers: dict | None = None) -> tuple[int, dict, bytes] | Exception:
    """A request straight to the server's inbound port, as a client outside the mesh sends it."""
    try:
        return http("GET", f"http://{server.address}:9080{path}", headers=headers, timeout=5)
    except (OSError, HTTPException) as e:
        return e


def _refused(result) -> bool:
    return isinstance(result, Exception)


def _meshed_ok(client: Workload, path: str = "/", headers: dict | None = None) -> bytes:
    status, h, body = client.call(f"{URL}{path}", headers)
    assert status == 200 and h.get("x-served-by") == f"{SERVER}-v1", (status, h, body)
    return body


def _meshed_xfcc(
    client: Workload, server: Workload, mtls: bool, path: str = "/", headers: dict | None = None
) -> list[str]:
    """The XFCC values the server's app saw on meshed requests, checked to be the same (present or
    absent, as `mtls` says) on several requests, whichever of the client sidecar's pooled
    connections each one takes."""
    drained(server)
    seen = [_seen(_meshed_ok(client, path, headers), XFCC) for _ in range(6)]
    assert all(bool(s) == mtls for s in seen), (
        f"expected {'mTLS' if mtls else 'plaintext'} on every meshed request; XFCC seen: {seen}"
    )
    return seen[-1]


def _s_client(server: Workload, *args: str) -> str:
    """openssl s_client against the inbound port, sending one HTTP request; its whole output."""
    request = f"GET / HTTP/1.1\r\nHost: {SERVER}\r\nConnection: close\r\n\r\n"
    command = ["openssl", "s_client", "-connect", f"{server.address}:9080", "-ign_eof", *args]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = process.communicate(request, timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return out


# --- STRICT ---------------------------------------------------------------------------------


def test_strict_refuses_plaintext(plane, mesh):
    server, _ = mesh
    _apply(plane, MESH_STRICT)
    result = _plaintext(server)
    assert _refused(result), f"plaintext got an HTTP answer under STRICT: {result!r}"


def test_strict_refuses_tls_without_client_certificate(plane, mesh):
    server, _ = mesh
    _apply(plane, MESH_STRICT)
    out = _s_client(server)
    assert "HTTP/1.1 200" not in out, out
    assert "alert certificate required" in out or "alert handshake failure" in out, out


def test_strict_refuses_certificate_from_a_foreign_ca(plane, mesh, tmp_path):
    server, _ = mesh
    _apply(plane, MESH_STRICT)
    # The control: the same identity, issued by the mesh's CA, gets through by hand.
    mesh_issued = Enrolled(plane, CLIENT, "by-hand-1.default", tmp_path / "mesh")
    out = _s_client(server, "-cert", str(mesh_issued.cert_file), "-key", str(mesh_issued.key_file))
    assert "HTTP/1.1 200" in out, out
    cert, key = _foreign_identity(tmp_path, SPIFFE.format(CLIENT))  # the right name, the wrong CA
    out = _s_client(server, "-cert", str(cert), "-key", str(key))
    assert "HTTP/1.1 200" not in out, out
    assert "alert unknown ca" in out, out


def test_strict_serves_meshed_client_with_its_identity(plane, mesh):
    server, client = mesh
    _apply(plane, MESH_STRICT)
    [xfcc] = _meshed_xfcc(client, server, mtls=True)
    assert f"URI={SPIFFE.format(CLIENT)}" in xfcc, xfcc
    assert f"By={SPIFFE.format(SERVER)}" in xfcc, xfcc


def test_client_supplied_xfcc_never_reaches_the_app(plane, mesh):
    server, client = mesh
    _apply(plane, MESH_STRICT)
    seen = _meshed_xfcc(client, server, mtls=True, path="/who", headers={XFCC: FORGED_XFCC})
    assert len(seen) == 1 and "forged-admin" not in seen[0], seen
    assert f"URI={SPIFFE.format(CLIENT)}" in seen[0], seen


# --- PERMISSIVE -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, MESH_PERMISSIVE], ids=["no-policy", "mesh-permissive"])
def test_permissive_accepts_plaintext_and_meshed_clients_use_mtls(plane, mesh, policy):
    server, client = mesh
    if policy:
        _apply(plane, policy)
    result = _plaintext(server, "/plain", {XFCC: FORGED_XFCC})
    assert not _refused(result), f"plaintext refused under PERMISSIVE: {result!r}"
    status, _, body = result
    assert status == 200 and _seen(body, XFCC) == [], body  # no peer certificate, and the forged one dropped
    [xfcc] = _meshed_xfcc(client, server, mtls=True)
    assert f"URI={SPIFFE.format(CLIENT)}" in xfcc, xfcc


# --- precedence -----------------------------------------------------------------------------


def test_most_specific_policy_wins(plane, mesh):
    server, client = mesh
    _apply(plane, MESH_STRICT, _policy("default", "default", "PERMISSIVE"))
    assert not _refused(_plaintext(server)), "namespace PERMISSIVE should override mesh STRICT"

    _apply(plane, _policy("server-strict", "default", "STRICT", selector=SERVER))
    assert _refused(_plaintext(server)), "workload STRICT should override namespace PERMISSIVE"
    _meshed_xfcc(client, server, mtls=True)

    _apply(plane, _policy("server-strict", "default", "STRICT", selector=SERVER, port_modes={9080: "DISABLE"}))
    result = _plaintext(server)
    assert not _refused(result) and result[0] == 200, (
        f"port-level DISABLE should override the workload's STRICT: {result!r}"
    )
    # Auto mTLS: the client's sidecar now speaks plaintext to this endpoint, so no peer identity.
    assert _meshed_xfcc(client, server, mtls=False) == []


# --- on the wire ----------------------------------------------------------------------------


def test_meshed_traffic_is_encrypted_on_the_wire(plane, mesh, tmp_path):
    server, client = mesh
    assert shutil.which("tcpdump"), "tcpdump is not installed; `make tools` installs it"
    secret_path, secret_value, control_path = (
        f"/{word}-{secrets.token_hex(8)}" for word in ("secret-path", "secret-value", "plain-path")
    )
    pcap, log = tmp_path / "lo.pcap", tmp_path / "tcpdump.log"
    _meshed_xfcc(client, server, mtls=True)  # no plaintext connection left over from an earlier test
    command = ["tcpdump", "-i", "lo", "-n", "-U", "-w", str(pcap), f"host {server.address} and port 9080"]
    with open(log, "wb") as err:
        tcpdump = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(
            lambda: tcpdump.poll() is None and b"listening on" in log.read_bytes(),
            10,
            what=f"tcpdump to listen ({log})",
        )
        for _ in range(10):
            _meshed_ok(client, secret_path, {"x-secret": secret_value})
        control = _plaintext(server, control_path)  # the control: PERMISSIVE, no TLS at all
        assert not _refused(control) and control[0] == 200, control
        # Packets arrive in order: once the control shows, every meshed request before it is in.
        wait_for(
            lambda: control_path.encode() in pcap.read_bytes(), 10, what="the plaintext control request in the capture"
        )
    finally:
        stop(tcpdump, sig=signal.SIGINT)  # SIGINT: tcpdump flushes the capture
    capture = pcap.read_bytes()
    assert secret_path.encode() not in capture and secret_value.encode() not in capture, (
        "meshed request visible on the wire"
    )
    segments = _tcp_payloads(capture)
    to_server = [p for sport, dport, p in segments if dport == 9080]
    from_server = [p for sport, dport, p in segments if sport == 9080]
    for direction, payloads in (("requests", to_server), ("responses", from_server)):
        tls_records = [p for p in payloads if p[:3] == b"\x17\x03\x03"]  # TLS application data
        assert len(tls_records) >= 10, (
            f"expected a TLS record per meshed request in the {direction}, saw {len(tls_records)} of "
            f"{len(payloads)} segments"
        )
    plaintext = [p[:40] for p in to_server if p.startswith(b"GET ")]
    assert plaintext == [f"GET {control_path} HTTP/1.1\r\n".encode()[:40]], plaintext


# --- DestinationRule TLS --------------------------------------------------------------------


def test_destination_rule_tls_mode_decides_what_the_client_sends(plane, mesh):
    server, client = mesh
    _apply(plane, MESH_STRICT)
    _meshed_xfcc(client, server, mtls=True)  # a cluster the client has used, as in a running mesh
    # A DestinationRule reaches the proxies in well under a second; 5 s is generous.
    _apply(plane, _destination_rule("DISABLE"), timeout=5)
    statuses = [client.call(URL)[0] for _ in range(4)]
    assert statuses == [503] * 4, f"plaintext from the client must not pass a STRICT server: {statuses}"

    _apply(plane, _destination_rule("ISTIO_MUTUAL"), timeout=5)
    [xfcc] = _meshed_xfcc(client, server, mtls=True)
    assert f"URI={SPIFFE.format(CLIENT)}" in xfcc, xfcc


def _tcp_payloads(capture: bytes) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, payload) of each IPv4 TCP segment with data in a pcap file."""
    magic = capture[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    link_type = struct.unpack(endian + "I", capture[20:24])[0] & 0x0FFFFFFF
    link_header = {1: 14, 113: 16}[link_type]  # Ethernet (Linux "lo") or Linux cooked capture
    out, offset = [], 24
    while offset + 16 <= len(capture):
        captured = struct.unpack(endian + "I", capture[offset + 8 : offset + 12])[0]
        frame = capture[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        ether_type = frame[link_header - 2 : link_header]
        ip = frame[link_header:]
        if ether_type != b"\x08\x00" or len(ip) < 20 or ip[9] != 6:
            continue
        ip_header, total = (ip[0] & 0x0F) * 4, struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ip_header:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            out.append((sport, dport, payload))
    return out


def _foreign_identity(directory: Path, uri: str) -> tuple[Path, Path]:
    """A client certificate for `uri` from a CA of our own, which the mesh has never heard of."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, issuer: str, public_key, signing_key, ca: bool, extensions=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = certificate("foreign root", "foreign root", root_key.public_key(), root_key, True)
    leaf = certificate(
        "foreign workload",
        "foreign root",
        leaf_key.public_key(),
        root_key,
        False,
        [
            (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    cert, key = directory / "foreign-cert.pem", directory / "foreign-key.pem"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key
