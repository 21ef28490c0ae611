"""The floor for any Envoy-based mesh: two plain Envoys from a static bootstrap, speaking mTLS.

The client-side Envoy takes plain HTTP/1.1 and sends it over mutual TLS (ECDSA P-256, SPIFFE URI
SANs, the server's identity checked) to the server-side Envoy, which requires a client
certificate from the same root and forwards to the app. Nothing else: no xDS, no SDS, no
authorization, no path normalization, one filter (the router) per side. Whatever a mesh adds on
top of this is the mesh's own cost.

Also the app every path ends at: an Envoy answering `200 ok` itself (direct_response) on $PORT,
so the server's own cost is tiny and steady and the proxies' costs stand out.

    pair = EnvoyPair.start(directory, app_port=8080)   # pair.port: the client side's listener
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.agent.envoy import die_with_parent, envoy_binary

TRUST_DOMAIN = "cluster.local"
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TLS = "envoy.transport_sockets.tls"

# `lattice run` hands the app its port in $PORT; this execs an Envoy that answers every request.
APP = """
import os, sys, json
config = {"static_resources": {"listeners": [{"name": "app", "address": {"socket_address": {"address": "127.0.0.1",
"port_value": int(os.environ["PORT"])}},
  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type":
  %r, "stat_prefix": "app",
  "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
  "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
  "http_filters": [%r]}}]}]}]}}
os.execv(sys.argv[1], [sys.argv[1], "--disable-hot-restart", "--concurrency", "1", "--log-level", "warning",
"--config-yaml", json.dumps(config)])
""" % (_HCM, _ROUTER)


def app_command() -> list[str]:
    return [sys.executable, "-c", APP, envoy_binary()]


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """PEM strings: a workload's chain and key, and the root that both sides trust."""

    chain: str
    key: str
    root: str


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, san: str | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def issue(identities: list[str]) -> dict[str, Credentials]:
    """A fresh root and one SPIFFE certificate per service account, as a mesh CA would make them."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(
        "bench root", root_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")]), root_key, True, None
    )
    root_pem = root.public_bytes(serialization.Encoding.PEM).decode()
    out = {}
    for sa in identities:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(sa, key, root.subject, root_key, False, spiffe(sa))
        out[sa] = Credentials(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key), root_pem)
    return out


def spiffe(service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}"


# -- bootstraps -----------------------------------------------------------------------------------


def _tls_context(creds: Credentials, peer: str | None) -> dict:
    validation: dict = {"trusted_ca": {"inline_string": creds.root}}
    if peer:
        validation["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": peer}}]
    return {
        # TLS 1.3 as a mesh negotiates it (Envoy's client default stops at 1.2): same handshake, same cipher.
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [
            {"certificate_chain": {"inline_string": creds.chain}, "private_key": {"inline_string": creds.key}}
        ],
        "validation_context": validation,
    }


def _listener(name: str, filter_chain: dict) -> dict:
    manager = {
        "@type": _HCM,
        "stat_prefix": name,
        "http_filters": [_ROUTER],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
    }
    chain = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
        **filter_chain,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def _cluster(port: int, transport_socket: dict | None) -> dict:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if transport_socket:
        cluster["transport_socket"] = transport_socket
    return cluster


def server_bootstrap(creds: Credentials, app_port: int, admin: Path) -> dict:
    """Terminates mTLS (a client certificate from the root is required) and forwards to the app."""
    downstream = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _tls_context(creds, None),
    }
    listener = _listener("inbound", {"transport_socket": {"name": _TLS, "typed_config": downstream}})
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "static_resources": {"listeners": [listener], "clusters": [_cluster(app_port, None)]},
    }


def client_bootstrap(creds: Credentials, server_port: int, server_identity: str, admin: Path) -> dict:
    """Plain HTTP in, mTLS out to the server-side Envoy, accepting only the server's identity."""
    upstream = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "bench-server",
        "common_tls_context": _tls_context(creds, server_identity),
    }
    cluster = _cluster(server_port, {"name": _TLS, "typed_config": upstream})
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "static_resources": {"listeners": [_listener("outbound", {})], "clusters": [cluster]},
    }


# -- processes ------------------------------------------------------------------------------------


def admin_get(admin: Path, path: str, timeout: float = 5.0) -> bytes:
    """GET on an Envoy admin unix socket."""
    connection = http.client.HTTPConnection("envoy", timeout=timeout)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.settimeout(timeout)
    try:
        connection.sock.connect(str(admin))
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


class StaticEnvoy:
    """One Envoy from a bootstrap file, its admin on a unix socket, its listener on a port the OS chose."""

    def __init__(self, directory: Path, name: str, config: dict, log_level: str) -> None:
        self.admin = Path(config["admin"]["address"]["pipe"]["path"])
        self.config_path = directory / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = directory / f"{name}.log"
        args = [
            envoy_binary(),
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            "--log-level",
            log_level,
            "--drain-time-s",
            "1",
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.port = self._listening_port()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _listening_port(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                statuses = json.loads(admin_get(self.admin, "/listeners?format=json"))["listener_statuses"]
                return statuses[0]["local_address"]["socket_address"]["port_value"]
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"envoy did not listen within {timeout}s: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class EnvoyPair:
    client: StaticEnvoy
    server: StaticEnvoy

    @classmethod
    def start(cls, directory: Path, app_port: int, log_level: str = "warning") -> EnvoyPair:
        """Server side first: the client side's cluster needs the port the OS gave it."""
        directory.mkdir(parents=True, exist_ok=True)
        creds = issue(["bench-client", "bench-server"])
        server = StaticEnvoy(
            directory,
            "pair-server",
            server_bootstrap(creds["bench-server"], app_port, directory / "pair-server.sock"),
            log_level,
        )
        try:
            config = client_bootstrap(
                creds["bench-client"], server.port, spiffe("bench-server"), directory / "pair-client.sock"
            )
            return cls(StaticEnvoy(directory, "pair-client", config, log_level), server)
        except BaseException:
            server.stop()
            raise

    @property
    def port(self) -> int:
        return self.client.port

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()
