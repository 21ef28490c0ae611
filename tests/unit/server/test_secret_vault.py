"""The control plane's TLS secret store: checked material, the key sealed at rest, reads without it."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lattice.api.tls_secret import SecretError, TlsMaterial
from lattice.server.secrets import KIND, SecretExists, SecretMissing, SecretVault
from lattice.store import Store


def _pair(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def vault(tmp_path):
    with Store(tmp_path / "lattice.db") as store:
        yield SecretVault(store, tmp_path)


def test_create_then_update_keeps_the_key_sealed_and_serves_it_unsealed(vault, tmp_path):
    cert, key = _pair("a.example.com")
    shown = vault.put("istio-system", "cred", TlsMaterial(cert, key), "create")
    assert shown["action"] == "created" and shown["dns_names"] == ["a.example.com"] and not shown["has_ca"]
    stored = vault.store.get(KIND, "istio-system", "cred")
    assert key.decode() not in json.dumps(stored.spec) and key not in (tmp_path / "lattice.db").read_bytes()
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert vault.credentials()[("istio-system", "cred")].key_pem == key
    with pytest.raises(SecretExists, match="lattice secret update tls cred -n istio-system"):
        vault.put("istio-system", "cred", TlsMaterial(cert, key), "create")
    cert2, key2 = _pair("b.example.com")
    assert vault.put("istio-system", "cred", TlsMaterial(cert2, key2, cert), "update")["action"] == "updated"
    assert vault.credentials()[("istio-system", "cred")].key_pem == key2
    assert key2.decode() not in json.dumps(vault.list()) and "sealedKey" not in json.dumps(vault.list())
    with pytest.raises(SecretMissing):
        vault.put("istio-system", "nope", TlsMaterial(cert, key), "update")


def test_refusals_name_the_part_and_store_nothing(vault):
    cert, key = _pair("a.example.com")
    _, other_key = _pair("b.example.com")
    for material, message in (
        (TlsMaterial(cert, other_key), "key: it is not the private key"),
        (TlsMaterial(b"nope", key), "cert: no PEM certificate"),
        (TlsMaterial(cert, b"nope"), "key: not an unencrypted PEM private key"),
        (TlsMaterial(cert, key, b"garbage"), "ca: no PEM certificate"),
    ):
        with pytest.raises(SecretError, match=message) as e:
            vault.put("default", "x", material, "create")
        assert other_key.decode() not in str(e.value) and key.decode() not in str(e.value)
    with pytest.raises(SecretError, match="DNS-1123"):
        vault.put("default", "Bad_Name", TlsMaterial(cert, key), "create")
    assert vault.list() == []


def test_a_secret_sealed_with_another_key_is_reported_not_served(vault, tmp_path):
    cert, key = _pair("a.example.com")
    vault.put("default", "x", TlsMaterial(cert, key), "create")
    (tmp_path / "secrets.key").chmod(0o600)
    (tmp_path / "secrets.key").write_bytes(b"\x01" * 32)
    other = SecretVault(vault.store, tmp_path)
    assert other.credentials() == {}
    assert "sealed with another secrets key" in other.errors[("default", "x")]


def test_a_replica_with_another_key_refuses_to_seal_and_keeps_what_is_stored(vault, tmp_path):
    cert, key = _pair("a.example.com")
    vault.put("default", "x", TlsMaterial(cert, key), "create")
    elsewhere = tmp_path / "replica2"
    elsewhere.mkdir()
    other = SecretVault(vault.store, elsewhere)  # a second replica on the same store, with no key file
    with pytest.raises(SecretError, match="copy secrets.key from the replica that created them"):
        other.put("default", "y", TlsMaterial(cert, key), "create")
    assert not (elsewhere / "secrets.key").exists()  # no second key was made
    (elsewhere / "secrets.key").write_bytes(b"\x01" * 32)
    with pytest.raises(SecretError, match="sealed with another secrets key"):
        other.put("default", "y", TlsMaterial(cert, key), "create")
    assert [s["name"] for s in vault.list()] == ["x"]
    assert set(vault.credentials()) == {("default", "x")}
    (elsewhere / "secrets.key").write_bytes((tmp_path / "secrets.key").read_bytes())
    other.put("default", "y", TlsMaterial(cert, key), "create")  # the same file: both replicas serve both
    assert set(vault.credentials()) == set(other.credentials()) == {("default", "x"), ("default", "y")}
