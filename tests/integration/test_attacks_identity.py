"""Attacks on identity: tokens that leak, identities that serve what they should not, revocation.

Each test plays the attacker of one finding of the security review (issue 14) against a real
control plane and real sidecars, and asserts what the victim app saw, not only a status code.
- finding 3: a join token on the command line, inherited by the app, usable more than once;
- finding 4: an identity registering as a service it may not serve, and callers trusting it;
- finding 5: a revoked token or identity still renewing, and its certificates still accepted.
"""

from __future__ import annotations

import http.client as httplib
import json
import ssl
import time
from pathlib import Path

import pytest
from harness import BACKEND, ControlPlane, Enrolled, Workload, child_pid, http, wait_for

from lattice.identity import SpiffeId, make_csr, new_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    cp = ControlPlane(tmp_path_factory.mktemp("attacks") / "home").start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def vault(plane):
    """A service callers trust with their secrets; its app answers with what it saw."""
    workload = Workload(plane, "vault", command=BACKEND).start()
    yield workload
    workload.stop()


def _record(service: str, service_account: str, address: str) -> dict:
    return {
        "name": f"{service}-v1",
        "service": service,
        "service_account": service_account,
        "address": address,
        "port": 9080,
        "app_port": 9,
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
    }


def _redeem(plane: ControlPlane, token: str, account: str, proxy_id: str) -> tuple[int, dict]:
    csr = make_csr(new_key(), SpiffeId("cluster.local", "default", account))
    status, _, raw = http(
        "POST",
        f"{plane.agent_api}/agent/v1/certificate",
        json.dumps({"csr": csr.decode(), "proxy_id": proxy_id}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        context=_unverified(),
    )
    return status, json.loads(raw or b"{}")


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


# --- finding 3: tokens that leak -------------------------------------------------------------------


def test_a_token_on_the_command_line_is_refused_with_the_ways_that_do_not_leak(plane):
    result = plane.cli("run", "--service", "reviews", "--token", "lt1.x.y.z", "--", "true", check=False)
    message = result.stderr + result.stdout
    assert result.returncode != 0
    assert "--token is refused" in message and "--token-file" in message and "LATTICE_TOKEN" in message, message


def test_the_app_and_envoy_never_inherit_the_join_token(plane, vault):
    seen = json.loads(http("GET", f"http://127.0.0.1:{vault.info['app_port']}/__env")[2])["env"]
    assert "LATTICE_TOKEN" not in seen, "the app inherited its join token"
    assert seen.get("LATTICE_SERVICE") == "vault"  # it is the app's environment we read
    envoy = child_pid(vault, "envoy")
    environ = Path(f"/proc/{envoy}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"LATTICE_TOKEN=") for e in environ), "Envoy inherited the join token"


def test_tokens_are_single_use_by_default(plane):
    created = plane.cli("token", "create", "--service-account", "ratings", "-o", "json")
    token = json.loads(created.stdout)
    assert token["uses"] == 1
    first = _redeem(plane, token["token"], "ratings", "ratings-once.default")
    second = _redeem(plane, token["token"], "ratings", "ratings-twice.default")
    assert first[0] == 200, first
    assert second[0] == 401 and "used up" in second[1]["error"], second


# --- finding 4: an identity serving what it may not -------------------------------------------------


def test_an_identity_may_register_only_as_the_services_its_token_names(plane, vault, tmp_path):
    mallory = Enrolled(plane, "mallory", "mallory-x.default", tmp_path / "mallory")
    status, body = mallory.agent_call(
        "PUT", "/agent/v1/workloads/mallory-x.default", _record("vault", "mallory", "127.1.0.9")
    )
    assert status == 403 and "may not serve 'vault'" in body["error"] and "--service vault" in body["error"], body
    # Callers still see vault's one real endpoint: mallory never joined the service.
    endpoints = [w for w in plane.get("/api/v1/workloads")["items"] if w["service"] == "vault"]
    assert [w["service_account"] for w in endpoints] == ["vault"]

    # An operator who means it says so when minting the token.
    named = Enrolled(plane, "vault-canary", "vault-canary-x.default", tmp_path / "canary", services=["vault"])
    named.register(_record("vault", "vault-canary", "127.1.0.10"))
    status, body = named.agent_call("DELETE", "/agent/v1/workloads/vault-canary-x.default")
    assert status == 200, body


def test_callers_accept_only_identities_allowed_to_serve_the_service(plane, vault):
    """The SAN list the caller's sidecar checks vault's certificate against holds vault's identity only."""
    client = Workload(plane, "client", command=BACKEND).start()
    try:
        dump = plane.get(f"/api/v1/proxies/{client.id}/config_dump")
        text = json.dumps(dump)
        cluster = next(
            c
            for c in _clusters(dump)
            if "vault.default.svc.cluster.local" in c.get("name", "") and c.get("name", "").startswith("outbound|")
        )
        sans = _sans(cluster)
        assert sans == ["spiffe://cluster.local/ns/default/sa/vault"], sans
        assert "sa/mallory" not in text
        status, _, raw = client.call("http://vault:9080/secret", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(raw)["served_by"] == "vault-v1"
    finally:
        client.stop()


def _clusters(dump: dict) -> list[dict]:
    out = []
    for section in dump.get("configs", []):
        for key in ("dynamic_active_clusters", "static_clusters"):
            out += [c.get("cluster", {}) for c in section.get(key, [])]
    return out


def _sans(cluster: dict) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for m in node.get("match_typed_subject_alt_names", []):
                found.append(m["matcher"]["exact"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cluster)
    return sorted(set(found))


# --- finding 5: revocation ---------------------------------------------------------------------------


def test_a_revoked_token_stops_renewal_and_registration_at_once(plane, tmp_path):
    eve = Enrolled(plane, "eve", "eve-x.default", tmp_path / "eve")
    eve.register(_record("eve", "eve", "127.1.0.11"))
    revoked = plane.cli("token", "revoke", eve.token_id)
    assert "1 workload(s) cut off: eve-x.default" in revoked.stdout, revoked.stdout

    csr = make_csr(new_key(), SpiffeId("cluster.local", "default", "eve"))
    status, body = eve.agent_call("POST", "/agent/v1/certificate", {"csr": csr.decode(), "proxy_id": "eve-x.default"})
    assert status == 403 and body.get("reason") == "revoked", body
    status, body = eve.agent_call("PUT", "/agent/v1/workloads/eve-x.default", _record("eve", "eve", "127.1.0.11"))
    assert status == 403 and "revoked" in body["error"], body
    assert all(w["id"] != "eve-x.default" for w in plane.get("/api/v1/workloads")["items"])


def test_a_revoked_identitys_certificate_is_refused_by_sidecars_within_seconds(plane, vault, tmp_path):
    """Mallory holds a valid certificate and talks to vault's sidecar directly, as any mesh peer
    may. Once the identity is revoked, vault's sidecar refuses the handshake: vault's app sees
    nothing more. The time from `lattice ca revoke` returning to the first refusal is printed."""
    mallory = Enrolled(plane, "mallory-rev", "mallory-rev.default", tmp_path / "mallory-rev")
    before = _mtls_get(vault, mallory)
    assert before is not None and before["status"] == 200, before
    assert "sa/mallory-rev" in before["body"]["headers"].get("x-forwarded-client-cert", "")

    result = plane.cli("ca", "revoke", "--service-account", "mallory-rev")
    revoked_at = time.monotonic()
    assert "1 workload(s) cut off: mallory-rev.default" in result.stdout, result.stdout
    wait_for(
        lambda: _mtls_get(vault, mallory) is None,
        30,
        interval=0.1,
        what="vault's sidecar to refuse the revoked certificate",
    )
    print(f"\nrevoked certificate refused {time.monotonic() - revoked_at:.1f}s after `lattice ca revoke` returned")
    count = _app_count(vault)
    for _ in range(3):
        assert _mtls_get(vault, mallory) is None
    assert _app_count(vault) == count, "vault's app saw a request from the revoked identity"
    # Every other peer is unaffected: vault's own callers still get through.
    other = Enrolled(plane, "reader", "reader-x.default", tmp_path / "reader")
    after = _mtls_get(vault, other)
    assert after is not None and after["status"] == 200, after


def _mtls_get(vault: Workload, peer: Enrolled) -> dict | None:
    """GET /whoami on vault's inbound port over mTLS with `peer`'s certificate; None if refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we attack the server's check of us, not ours of it
    context.load_cert_chain(peer.cert_file, peer.key_file)
    context.set_alpn_protocols(["http/1.1"])
    try:
        connection = httplib.HTTPSConnection(vault.address, vault.info["port"], timeout=5, context=context)
        connection.request("GET", "/whoami", headers={"Host": "vault"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
    except (ssl.SSLError, ConnectionError, OSError, httplib.HTTPException):
        return None
    return {"status": response.status, "body": json.loads(body) if response.status == 200 else body}


def _app_count(workload: Workload) -> int:
    return json.loads(http("GET", f"http://127.0.0.1:{workload.info['app_port']}/__count")[2])["count"]
