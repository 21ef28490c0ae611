"""Who may become whom, seen from outside: join tokens and CSRs over the real agents' API, the
certificates it hands out, registration and xDS that only a workload's own identity may use, the
admin credential, and a plug-in CA whose intermediate carries real mTLS between real Envoys.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from harness import LATTICE, ControlPlane, Enrolled, children, http, start_all, wait_for
from lattice.identity import SpiffeId, make_csr, new_key

pytestmark = pytest.mark.slow  # the plug-in CA test runs two real Envoys

SERVER_NAME = "lattice-control-plane"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


# --- playing the agent ---------------------------------------------------------------------------


def _unverified():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _bundle(plane: ControlPlane) -> dict:
    status, _, raw = http("GET", f"{plane.agent_api}/agent/v1/bundle", context=_unverified())
    assert status == 200, raw
    return json.loads(raw)


def _verified(plane: ControlPlane):
    """TLS to the agents' API checked against its own bundle (the name is the agents' concern)."""
    import ssl

    context = ssl.create_default_context(cadata=_bundle(plane)["bundle"])
    context.check_hostname = False
    return context


def _ask(
    plane: ControlPlane, csr: bytes, token: str | None, proxy_id: str = "ratings-test.default"
) -> tuple[int, dict]:
    """POST /agent/v1/certificate as an agent holding only `token` (or nothing)."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token is not None else {})
    body = json.dumps({"csr": csr.decode(), "proxy_id": proxy_id}).encode()
    status, _, raw = http("POST", f"{plane.agent_api}/agent/v1/certificate", body, headers, context=_verified(plane))
    return status, json.loads(raw or b"{}")


def _csr(key, *uris: str, ca: bool = False) -> bytes:
    """A CSR built by hand, for the shapes `make_csr` never produces."""
    names = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(names, critical=True)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _ca_show(plane: ControlPlane) -> dict:
    return json.loads(plane.cli("ca", "show", "-o", "json").stdout)


def _refused(plane: ControlPlane) -> dict[str, int]:
    return _ca_show(plane)["refused"]


def _leaf_and_rest(chain_pem: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    return certs[0], certs[1:]


def _verify(chain_pem: str, roots: list[x509.Certificate]) -> list[x509.Certificate]:
    """The path from the leaf to one of `roots`, as an RFC 5280 verifier builds it."""
    leaf, intermediates = _leaf_and_rest(chain_pem)
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    return verifier.verify(leaf, intermediates).chain


def _uris(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def _record(name: str, service_account: str, address: str) -> dict:
    """What an agent registers; nobody dials these addresses (127.1/16 is never leased)."""
    return {
        "name": name,
        "service": name.rsplit("-", 1)[0],
        "service_account": service_account,
        "address": address,
        "port": 9080,
        "app_port": 9,
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
    }


# --- the shared control plane's tests ------------------------------------------------------------


def test_a_token_for_ratings_cannot_buy_a_certificate_for_reviews(shared_plane):
    token = shared_plane.token("ratings", uses=2)
    before = _refused(shared_plane).get("san-mismatch", 0)

    status, body = _ask(shared_plane, make_csr(new_key(), SpiffeId.parse(REVIEWS)), token)
    assert status == 403, body
    assert body["reason"] == "san-mismatch"
    assert REVIEWS in body["error"] and RATINGS in body["error"]
    assert _refused(shared_plane)["san-mismatch"] == before + 1

    # The refusal spent one use (the token is checked before the CSR); the other still buys ratings.
    status, body = _ask(shared_plane, make_csr(new_key(), SpiffeId.parse(RATINGS)), token)
    assert status == 200, body
    assert body["identity"] == RATINGS


def test_tokens_that_are_expired_used_up_forged_or_missing_get_401(shared_plane):
    csr = make_csr(new_key(), SpiffeId.parse(RATINGS))
    expiring, expires = shared_plane.token("ratings", ttl=1), time.monotonic() + 1
    once = shared_plane.token("ratings", uses=1)
    assert _ask(shared_plane, csr, once)[0] == 200
    refused_tokens = _refused(shared_plane).get("token", 0)

    status, body = _ask(shared_plane, csr, once)
    assert status == 401 and "used up" in body["error"], body

    version, token_id, secret, pin = once.split(".")
    # The first character: all six of its bits are the secret's (the last one's low bits are
    # padding, so changing it can leave the decoded secret as it was).
    forged = f"{version}.{token_id}.{'A' if secret[0] != 'A' else 'B'}{secret[1:]}.{pin}"
    status, body = _ask(shared_plane, csr, forged)
    assert status == 401 and "invalid token" in body["error"], body
    assert secret[:-1] not in body["error"]  # a refusal never repeats a token's secret

    for garbage in ("garbage", "lt1.000000000000." + "A" * 43 + "." + "0" * 32):
        status, body = _ask(shared_plane, csr, garbage)
        assert status == 401 and body["error"].startswith("join token refused"), body

    status, body = _ask(shared_plane, csr, None)
    assert status == 401 and "no credential" in body["error"], body
    assert _refused(shared_plane)["token"] == refused_tokens + 4  # the missing credential is not a token

    time.sleep(max(0.0, expires + 0.2 - time.monotonic()))
    status, body = _ask(shared_plane, csr, expiring)
    assert status == 401 and "expired" in body["error"], body


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _csr(new_key(), RATINGS, REVIEWS), "san-count"),
        (lambda: _csr(new_key(), RATINGS, ca=True), "ca-requested"),
        (lambda: _csr(rsa.generate_private_key(65537, 1024), RATINGS), "weak-key"),
    ],
    ids=["two-uri-sans", "ca-flag", "rsa-1024"],
)
def test_malformed_csrs_are_refused_and_counted_by_reason(shared_plane, make, reason):
    token = shared_plane.token("ratings")
    before = _refused(shared_plane).get(reason, 0)
    status, body = _ask(shared_plane, make(), token)
    assert status == 403, body
    assert body["reason"] == reason
    assert _refused(shared_plane)[reason] == before + 1


def test_the_issued_certificate_is_exactly_the_identity_asked_for(shared_plane):
    key = new_key()
    status, body = _ask(shared_plane, make_csr(key, SpiffeId.parse(RATINGS)), shared_plane.token("ratings"))
    assert status == 200, body
    roots = x509.load_pem_x509_certificates(_bundle(shared_plane)["bundle"].encode())
    leaf, rest = _leaf_and_rest(body["chain"])

    assert rest == []  # the built-in CA is the root, and the root travels in the bundle only
    assert _verify(body["chain"], roots)[-1] == roots[0]
    assert _uris(leaf) == [RATINGS]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = leaf.not_valid_after_utc - datetime.now(timezone.utc)
    assert timedelta(hours=24) - timedelta(minutes=2) < lifetime <= timedelta(hours=24)


def test_only_a_workloads_own_identity_may_register_and_heartbeat_it(shared_plane, tmp_path):
    ratings = Enrolled(shared_plane, "ratings", "ratings-reg.default", tmp_path / "ratings")
    reviews = Enrolled(shared_plane, "reviews", "reviews-reg.default", tmp_path / "reviews")

    status, body = ratings.agent_call(
        "PUT", "/agent/v1/workloads/ratings-reg.default", _record("ratings-v1", "reviews", "127.1.0.2")
    )
    assert status == 403 and "may not register" in body["error"], body
    status, body = ratings.agent_call(
        "PUT",
        "/agent/v1/workloads/ratings-reg.default",
        _record("ratings-v1", "ratings", "127.1.0.2"),
        client_cert=False,
    )
    assert status == 401 and "certificate is required" in body["error"], body

    reviews.register(_record("reviews-v1", "reviews", "127.1.0.3"))
    for method, path in (
        ("POST", "/agent/v1/workloads/reviews-reg.default/heartbeat"),
        ("DELETE", "/agent/v1/workloads/reviews-reg.default"),
    ):
        status, body = ratings.agent_call(method, path, {"healthy": False})
        assert status == 403 and "does not own" in body["error"], (method, body)
    assert reviews.agent_call("POST", "/agent/v1/workloads/reviews-reg.default/heartbeat", {"healthy": True})[0] == 200
    assert "reviews-reg.default" in [w["id"] for w in shared_plane.get("/api/v1/workloads")["items"]]
    assert reviews.agent_call("DELETE", "/agent/v1/workloads/reviews-reg.default")[0] == 200


def test_another_identity_cannot_take_over_a_registered_workload_id(shared_plane, tmp_path):
    reviews = Enrolled(shared_plane, "reviews", "reviews-own.default", tmp_path / "reviews")
    ratings = Enrolled(shared_plane, "ratings", "ratings-own.default", tmp_path / "ratings")
    reviews.register(_record("reviews-v1", "reviews", "127.1.0.4"))
    try:
        status, body = ratings.agent_call(
            "PUT", "/agent/v1/workloads/reviews-own.default", _record("reviews-v1", "ratings", "127.1.0.5")
        )
        assert status == 403, body
        assert (
            reviews.agent_call("POST", "/agent/v1/workloads/reviews-own.default/heartbeat", {"healthy": True})[0] == 200
        )
        # Nor get a certificate recorded under that proxy's id (what `lattice status` shows for it).
        csr = make_csr(new_key(), SpiffeId("cluster.local", "default", "ratings"))
        status, body = ratings.agent_call(
            "POST", "/agent/v1/certificate", {"csr": csr.decode(), "proxy_id": "reviews-own.default"}
        )
        assert status == 403 and "does not own" in body["error"], body
    finally:
        ratings.agent_call("DELETE", "/agent/v1/workloads/reviews-own.default")
        reviews.agent_call("DELETE", "/agent/v1/workloads/reviews-own.default")


def test_the_admin_api_needs_the_admin_token(shared_plane):
    for method, path in (
        ("GET", "/api/v1/status"),
        ("POST", "/api/v1/apply"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
    ):
        for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):
            status, _, raw = http(method, f"{shared_plane.api}{path}", b"{}" if method == "POST" else None, headers)
            assert status == 401 and b"admin-token" in raw, (method, path, headers, raw)
    assert http("GET", f"{shared_plane.api}/api/v1/health")[0] == 200
    assert "config revision" in shared_plane.cli("status").stdout  # the CLI reads $LATTICE_HOME/admin-token


def test_secrets_on_disk_are_readable_by_their_owner_only(shared_plane):
    home = shared_plane.home
    assert stat.S_IMODE((home / "admin-token").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "ca").stat().st_mode) == 0o700


def test_token_listings_and_logs_never_hold_a_tokens_secret(shared_plane):
    token = shared_plane.token("details", uses=3)
    token_id, secret = token.split(".")[1:3]
    listed = shared_plane.cli("token", "list", "-o", "json").stdout
    mine = [t for t in json.loads(listed)["items"] if t["id"] == token_id]
    assert mine and mine[0]["identity"] == "spiffe://cluster.local/ns/default/sa/details" and mine[0]["uses_left"] == 3
    assert "secret_hash" not in mine[0]
    assert secret not in listed and token not in listed
    assert secret not in shared_plane.cli("token", "list").stdout
    assert secret not in shared_plane.log.read_text()


@pytest.fixture
def run_tmp():
    """A TMPDIR for `lattice run` shallow enough for its sockets whatever pytest names tmp_path."""
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        yield Path(short)


def _run(plane: ControlPlane, tmp: Path, *args: str, token: str | None) -> subprocess.Popen:
    """`lattice run` whose temporary files (the sidecar's run directory) live under `tmp`."""
    env = {k: v for k, v in plane.env.items() if k != "LATTICE_TOKEN"} | {"TMPDIR": str(tmp)}
    if token is not None:
        env["LATTICE_TOKEN"] = token
    command = [LATTICE, "run", *args, "--", sys.executable, "-c", "import time; time.sleep(60)"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_lattice_run_without_a_token_says_how_to_get_one(shared_plane, run_tmp):
    started = time.monotonic()
    process = _run(shared_plane, run_tmp, "--service", "reviews", token=None)
    _, err = process.communicate(timeout=15)
    assert process.returncode != 0
    assert "lattice token create --service-account reviews" in err, err
    assert time.monotonic() - started < 10


def test_lattice_run_with_another_identitys_token_fails_without_starting_envoy(shared_plane, run_tmp):
    before = _refused(shared_plane).get("san-mismatch", 0)
    process = _run(
        shared_plane,
        run_tmp,
        "--service",
        "reviews",
        "--service-account",
        "reviews",
        token=shared_plane.token("ratings"),
    )
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while process.poll() is None and time.monotonic() < deadline:
        seen += [cmd for _, cmd in children(process.pid)]
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    _, err = process.communicate(timeout=5)
    assert process.returncode not in (0, None, -9), err
    assert "403" in err and f"may only be signed for {RATINGS}" in err, err
    assert not [cmd for cmd in seen if "envoy" in cmd or "sleep(60)" in cmd], seen
    assert not _processes_mentioning(str(run_tmp))
    assert not list(run_tmp.iterdir())  # its run directory is gone too
    assert _refused(shared_plane)["san-mismatch"] == before + 1


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if entry.name.isdigit()
                else ""
            )
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


# --- xDS: the connection's identity must be the node's ----------------------------------------------


@contextmanager
def _ads(plane: ControlPlane, node_id: str, bundle: bytes, me: Enrolled | None = None, timeout: float = 10):
    """An ADS stream that sends one CDS request for `node_id`, then stays open until the end."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle,
        private_key=me.key_file.read_bytes() if me else None,
        certificate_chain=me.cert_file.read_bytes() if me else None,
    )
    channel = grpc.secure_channel(plane.xds, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)])
    done = threading.Event()

    def requests():
        yield discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id=node_id, cluster="test.default"), type_url=CLUSTER_TYPE
        )
        done.wait(timeout)

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests(), timeout=timeout)
    try:
        yield call
    finally:
        done.set()
        call.cancel()
        channel.close()


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    return refused.value


@pytest.fixture
def xds_peers(shared_plane, tmp_path):
    """A registered reviews workload (playing its own agent) and a ratings identity with no workload."""
    reviews = Enrolled(shared_plane, "reviews", "reviews-xds.default", tmp_path / "reviews")
    reviews.register(_record("reviews-v9", "reviews", "127.1.0.9"))
    ratings = Enrolled(shared_plane, "ratings", "ratings-xds.default", tmp_path / "ratings")
    yield reviews, ratings, reviews.bundle_file.read_bytes()
    reviews.agent_call("DELETE", "/agent/v1/workloads/reviews-xds.default")


def test_xds_refuses_a_certificate_that_is_not_the_nodes(shared_plane, xds_peers):
    reviews, ratings, bundle = xds_peers
    with _ads(shared_plane, reviews.proxy_id, bundle, ratings) as call:
        refused = _refusal(call)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"is not {REVIEWS}" in refused.details()

    with _ads(shared_plane, "nobody-v1-000000.default", bundle, reviews) as call:
        refused = _refusal(call)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "not registered" in refused.details()

    with _ads(shared_plane, reviews.proxy_id, bundle, reviews) as call:  # the node's own identity
        assert next(call).type_url == CLUSTER_TYPE


def test_xds_without_a_client_certificate_fails_the_handshake(shared_plane, xds_peers):
    reviews, _, bundle = xds_peers
    with _ads(shared_plane, reviews.proxy_id, bundle, None, timeout=5) as call:
        assert _refusal(call).code() == grpc.StatusCode.UNAVAILABLE


def test_a_refused_stranger_does_not_disconnect_the_real_proxy(shared_plane, xds_peers):
    reviews, ratings, bundle = xds_peers
    with _ads(shared_plane, reviews.proxy_id, bundle, reviews, timeout=15) as own:
        assert next(own).type_url == CLUSTER_TYPE
        wait_for(
            lambda: shared_plane.proxy(reviews.proxy_id)["connected"], 5, what="the real stream to show as connected"
        )
        with _ads(shared_plane, reviews.proxy_id, bundle, ratings) as stranger:
            assert _refusal(stranger).code() == grpc.StatusCode.PERMISSION_DENIED
        assert shared_plane.proxy(reviews.proxy_id)["connected"]


# --- a plug-in CA: an intermediate under an external root ---------------------------------------


def _ca_cert(
    subject: str, key, issuer: x509.Certificate | None, issuer_key, path_length: int | None
) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def external_ca(tmp_path_factory) -> dict:
    """An external root, an intermediate (pathlen 0) it signed, and the files `--ca-cert/--ca-key` take."""
    directory = tmp_path_factory.mktemp("external-ca")
    root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("Example Root CA", root_key, None, root_key, None)
    intermediate = _ca_cert("Example Mesh Intermediate CA", intermediate_key, root, root_key, 0)
    pem = serialization.Encoding.PEM
    files = {
        "chain": directory / "ca-chain.pem",
        "intermediate_only": directory / "intermediate.pem",
        "key": directory / "ca-key.pem",
        "root": directory / "root.pem",
    }
    files["chain"].write_bytes(intermediate.public_bytes(pem) + root.public_bytes(pem))
    files["intermediate_only"].write_bytes(intermediate.public_bytes(pem))
    files["root"].write_bytes(root.public_bytes(pem))
    files["key"].write_bytes(
        intermediate_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files | {"root_cert": root, "intermediate_cert": intermediate}


def test_a_plug_in_intermediate_ca_carries_mtls_end_to_end(tmp_path, external_ca):
    root, intermediate = external_ca["root_cert"], external_ca["intermediate_cert"]
    plane = ControlPlane(
        tmp_path / "home", "--ca-cert", str(external_ca["chain"]), "--ca-key", str(external_ca["key"])
    ).start()
    started = []
    try:
        shown = _ca_show(plane)
        assert shown["plug_in"] is True
        assert [r["fingerprint"] for r in shown["roots"]] == [root.fingerprint(hashes.SHA256()).hex()]
        assert shown["signing"]["subject"] == intermediate.subject.rfc4514_string()

        me = Enrolled(plane, "productpage", "productpage-test.default", tmp_path / "me")
        leaf, rest = _leaf_and_rest(me.cert_file.read_text())
        assert rest == [intermediate]  # leaf + intermediate, never the root
        assert _verify(me.cert_file.read_text(), [root]) == [leaf, intermediate, root]

        plane.apply(STRICT)
        started += start_all(plane, [("ratings", "v1"), ("reviews", "v1")])
        ratings, reviews = started
        status, headers, _ = reviews.call("http://ratings:9080/ratings/0")
        assert (status, headers.get("x-served-by")) == (200, "ratings-v1")
        # The sidecar serves leaf + intermediate: the external root alone verifies it.
        context = me.context()
        context.load_verify_locations(cafile=str(external_ca["root"]))
        context.set_alpn_protocols(["http/1.1"])
        assert http("GET", f"https://{ratings.address}:9080/ratings/0", context=context)[0] == 200
    finally:
        for w in reversed(started):
            w.stop()
        plane.stop()


def test_a_plug_in_ca_without_its_root_is_refused_at_startup(tmp_path, external_ca):
    home = tmp_path / "home"
    args = [
        LATTICE,
        "server",
        "--home",
        str(home),
        "--api-port",
        "0",
        "--xds-port",
        "0",
        "--agent-port",
        "0",
        "--ca-cert",
        str(external_ca["intermediate_only"]),
        "--ca-key",
        str(external_ca["key"]),
    ]
    result = subprocess.run(args, env=ControlPlane(home).env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "the root is missing" in result.stderr, result.stderr
    assert not (home / "server.json").exists()


# --- another trust domain -----------------------------------------------------------------------


def test_a_trust_domain_flag_names_every_identity(tmp_path):
    plane = ControlPlane(tmp_path / "home", "--trust-domain", "example.org").start()
    try:
        assert _bundle(plane)["trust_domain"] == "example.org"
        token = plane.token("x", uses=2)
        status, body = _ask(plane, make_csr(new_key(), SpiffeId("cluster.local", "default", "x")), token, "x-1.default")
        assert status == 403 and body["reason"] == "san-mismatch", body
        status, body = _ask(plane, make_csr(new_key(), SpiffeId("example.org", "default", "x")), token, "x-1.default")
        assert status == 200, body
        leaf, _ = _leaf_and_rest(body["chain"])
        assert (
            _uris(leaf) == ["spiffe://example.org/ns/default/sa/x"]
            and body["identity"] == "spiffe://example.org/ns/default/sa/x"
        )
        assert _ca_show(plane)["trust_domain"] == "example.org"
    finally:
        plane.stop()
