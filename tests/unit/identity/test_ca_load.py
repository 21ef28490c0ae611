"""CertificateAuthority.load: the plug-in CA (own root, or an intermediate under an external root)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from lattice.identity import CertificateAuthority, cert_info, fingerprint, key_pem, make_csr, new_key

DAY = timedelta(hours=24)
YEAR = timedelta(days=365)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    start: datetime,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    is_ca: bool = True,
    lifetime: timedelta = YEAR,
) -> x509.Certificate:
    """A CA certificate as an external tool (an enterprise PKI, cfssl, openssl) would make it."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    issuer_name = subject if issuer_cert is None else issuer_cert.subject
    issuer_public = key.public_key() if issuer_cert is None else issuer_cert.public_key()
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(days=1))
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture
def corporate(clock):
    """An external root and a Lattice intermediate signed by it: (root, intermediate, its key)."""
    root_key, intermediate_key = new_key(), new_key()
    root = ca_cert("Corp Root", root_key, clock.now, lifetime=10 * YEAR)
    intermediate = ca_cert("Lattice intermediate", intermediate_key, clock.now, (root, root_key))
    return root, intermediate, intermediate_key


def test_generated_ca_round_trips_through_pem(ca, clock, reviews) -> None:
    cert_file, key_file = ca.to_pem()
    assert x509.load_pem_x509_certificates(cert_file) == [ca.root]
    assert b"BEGIN PRIVATE KEY" in key_file  # PKCS#8, unencrypted
    loaded = CertificateAuthority.load(cert_file, key_file, "cluster.local", clock)
    assert loaded.root_fingerprint == ca.root_fingerprint
    assert loaded.to_pem() == (cert_file, key_file)
    issued = loaded.sign(make_csr(new_key(), reviews), reviews, DAY)
    x509.load_pem_x509_certificate(issued.chain_pem).verify_directly_issued_by(ca.root)


def test_self_signed_root_from_elsewhere(clock, reviews) -> None:
    key = new_key()
    root = ca_cert("Own Root", key, clock.now)
    loaded = CertificateAuthority.load(pem(root), key_pem(key), "cluster.local", clock)
    assert loaded.root == loaded.signing_cert == root
    loaded.sign(make_csr(new_key(), reviews), reviews, DAY)


def test_intermediate_under_external_root(corporate, clock, reviews) -> None:
    root, intermediate, key = corporate
    loaded = CertificateAuthority.load(pem(intermediate, root), key_pem(key), "cluster.local", clock)
    assert (loaded.signing_cert, loaded.root) == (intermediate, root)
    assert loaded.root_fingerprint == fingerprint(root)

    issued = loaded.sign(make_csr(new_key(), reviews), reviews, DAY)
    leaf, *rest = x509.load_pem_x509_certificates(issued.chain_pem)
    assert rest == [intermediate]  # leaf + intermediate, never the root
    store = verification.Store([root])
    verifier = verification.PolicyBuilder().store(store).time(clock.now).build_client_verifier()
    verified = verifier.verify(leaf, rest)
    assert verified.chain[-1] == root
    assert verified.subjects == [x509.UniformResourceIdentifier(str(reviews))]
    assert issued.root_fingerprint == fingerprint(root)
    assert cert_info(issued.chain_pem).issuer_fingerprint == fingerprint(intermediate)


def test_two_intermediates_round_trip(corporate, clock, reviews) -> None:
    root, intermediate, intermediate_key = corporate
    key = new_key()
    issuing = ca_cert("Lattice issuing", key, clock.now, (intermediate, intermediate_key))
    cert_file = pem(issuing, intermediate, root)
    loaded = CertificateAuthority.load(cert_file, key_pem(key), "cluster.local", clock)
    assert loaded.to_pem()[0] == cert_file

    issued = loaded.sign(make_csr(new_key(), reviews), reviews, DAY)
    leaf, *rest = x509.load_pem_x509_certificates(issued.chain_pem)
    assert rest == [issuing, intermediate]
    verifier = verification.PolicyBuilder().store(verification.Store([root])).time(clock.now).build_client_verifier()
    verifier.verify(leaf, rest)


def test_root_missing(corporate, clock) -> None:
    _, intermediate, key = corporate
    with pytest.raises(ValueError, match="root is missing: append it to the cert file") as caught:
        CertificateAuthority.load(pem(intermediate), key_pem(key), "cluster.local", clock)
    assert "Lattice intermediate" in str(caught.value)


def test_key_mismatch(corporate, clock) -> None:
    root, intermediate, _ = corporate
    with pytest.raises(ValueError, match="key does not match the signing certificate 'CN=Lattice intermediate'"):
        CertificateAuthority.load(pem(intermediate, root), key_pem(new_key()), "cluster.local", clock)


def test_signing_cert_that_is_not_a_ca(corporate, clock) -> None:
    root, intermediate, intermediate_key = corporate
    key = new_key()
    leafish = ca_cert("Not A CA", key, clock.now, (intermediate, intermediate_key), is_ca=False)
    with pytest.raises(ValueError, match="'CN=Not A CA' is not a CA"):
        CertificateAuthority.load(pem(leafish, intermediate, root), key_pem(key), "cluster.local", clock)


def test_expired_intermediate(clock) -> None:
    root_key, key = new_key(), new_key()
    root = ca_cert("Corp Root", root_key, clock.now, lifetime=10 * YEAR)
    old = ca_cert("Old intermediate", key, clock.now - 2 * YEAR, (root, root_key))
    with pytest.raises(ValueError, match="'CN=Old intermediate' expired at .*renew it"):
        CertificateAuthority.load(pem(old, root), key_pem(key), "cluster.local", clock)


def test_chain_out_of_order_or_with_the_wrong_root(corporate, clock) -> None:
    _, intermediate, key = corporate
    stranger = ca_cert("Stranger Root", new_key(), clock.now)
    with pytest.raises(ValueError, match="not signed by the next one in the chain, 'CN=Stranger Root'"):
        CertificateAuthority.load(pem(intermediate, stranger), key_pem(key), "cluster.local", clock)


def test_self_signed_signing_cert_followed_by_more(corporate, clock) -> None:
    root, intermediate, _ = corporate
    key = new_key()
    own = ca_cert("Own Root", key, clock.now)
    with pytest.raises(ValueError, match="self-signed .* 2 more certificate"):
        CertificateAuthority.load(pem(own, intermediate, root), key_pem(key), "cluster.local", clock)


def test_unreadable_files(ca, clock) -> None:
    cert_file, key_file = ca.to_pem()
    with pytest.raises(ValueError, match="cert file holds no readable PEM certificates"):
        CertificateAuthority.load(b"nothing here", key_file, "cluster.local", clock)
    with pytest.raises(ValueError, match="key file holds no readable PEM private key"):
        CertificateAuthority.load(cert_file, b"nothing here", "cluster.local", clock)
    encrypted = serialization.load_pem_private_key(key_file, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="key file is encrypted"):
        CertificateAuthority.load(cert_file, encrypted, "cluster.local", clock)
    with pytest.raises(ValueError, match="uppercase"):
        CertificateAuthority.load(cert_file, key_file, "Cluster.local", clock)
