"""CertificateAuthority: a generated root signs exactly the SPIFFE ID it is asked for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.identity import (
    CertificateAuthority,
    SpiffeId,
    cert_info,
    fingerprint,
    make_csr,
    new_key,
    trust_bundle_pem,
)

DAY = timedelta(hours=24)


def leaf_of(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain_pem)[0]


def verify(chain_pem: bytes, root: x509.Certificate, at) -> list[x509.GeneralName]:
    """Path validation as a peer does it (RFC 5280 + web PKI profile, client auth)."""
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    store = verification.Store([root])
    verifier = verification.PolicyBuilder().store(store).time(at).build_client_verifier()
    return verifier.verify(leaf, intermediates).subjects


def test_generated_root_is_a_p256_ca_named_after_the_trust_domain(ca: CertificateAuthority) -> None:
    root = ca.root
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cluster.local"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith("Lattice root CA ")
    assert ca.root_fingerprint == fingerprint(root) and len(ca.root_fingerprint) == 64
    assert (ca.trust_domain, ca.signing_cert) == ("cluster.local", root)


def test_two_generated_roots_are_distinguishable(clock) -> None:
    first = CertificateAuthority.generate("cluster.local", clock)
    second = CertificateAuthority.generate("cluster.local", clock)
    assert first.root.subject != second.root.subject
    assert first.root_fingerprint != second.root_fingerprint


def test_sign_issues_a_leaf_for_exactly_the_identity(ca, clock, reviews: SpiffeId) -> None:
    key = new_key()
    issued = ca.sign(make_csr(key, reviews), reviews, DAY)

    assert verify(issued.chain_pem, ca.root, clock.now) == [x509.UniformResourceIdentifier(str(reviews))]
    leaf = leaf_of(issued.chain_pem)
    assert len(x509.load_pem_x509_certificates(issued.chain_pem)) == 1  # never the root
    leaf.verify_directly_issued_by(ca.root)
    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(str(reviews))]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    assert leaf.not_valid_before_utc == clock.now - timedelta(seconds=60)
    assert leaf.not_valid_after_utc == clock.now + DAY == issued.not_after
    assert 0 < issued.serial < 2**128 and leaf.serial_number == issued.serial
    assert issued.identity == str(reviews)
    assert issued.root_fingerprint == ca.root_fingerprint
    assert (ca.issued, sum(ca.refused.values())) == (1, 0)


def test_leaf_never_outlives_the_signing_cert(clock, reviews) -> None:
    short = CertificateAuthority.generate("cluster.local", clock, validity=timedelta(hours=2))
    issued = short.sign(make_csr(new_key(), reviews), reviews, DAY)
    assert issued.not_after == short.root.not_valid_after_utc == clock.now + timedelta(hours=2)
    assert leaf_of(issued.chain_pem).not_valid_after_utc == issued.not_after


def test_each_leaf_gets_a_fresh_serial_and_the_clock_is_read_per_call(ca, clock, reviews) -> None:
    csr = make_csr(new_key(), reviews)
    first = ca.sign(csr, reviews, DAY)
    clock.advance(timedelta(hours=1))
    second = ca.sign(csr, reviews, DAY)
    assert first.serial != second.serial
    assert second.not_after - first.not_after == timedelta(hours=1)
    assert ca.issued == 2


def test_a_bad_ttl_or_naive_clock_is_refused(ca, clock, reviews) -> None:
    with pytest.raises(ValueError, match="TTL must be positive"):
        ca.sign(make_csr(new_key(), reviews), reviews, timedelta(0))
    with pytest.raises(ValueError, match="timezone-aware"):
        CertificateAuthority.generate("cluster.local", lambda: clock.now.replace(tzinfo=None))


def test_sign_after_the_ca_expired_is_an_error(clock, reviews) -> None:
    short = CertificateAuthority.generate("cluster.local", clock, validity=timedelta(hours=1))
    csr = make_csr(new_key(), reviews)
    clock.advance(timedelta(hours=2))
    with pytest.raises(ValueError, match="CA chain expired .* rotate the CA"):
        short.sign(csr, reviews, DAY)


def test_issue_server_has_dns_names_only(ca, clock) -> None:
    key = new_key()
    issued = ca.issue_server(key, ["lattice-control.lattice-system.svc", "localhost"], DAY)
    leaf = leaf_of(issued.chain_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["lattice-control.lattice-system.svc", "localhost"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    store = verification.Store([ca.root])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(clock.now)
        .build_server_verifier(verification.DNSName("localhost"))
    )
    verifier.verify(leaf, [])
    assert ca.issued == 0  # only workload certificates are counted
    with pytest.raises(ValueError, match="IP address"):
        ca.issue_server(key, ["127.0.0.1"], DAY)
    with pytest.raises(ValueError, match="at least one DNS name"):
        ca.issue_server(key, [], DAY)


def test_trust_bundle_keeps_order_and_drops_duplicates(ca, clock) -> None:
    other = CertificateAuthority.generate("cluster.local", clock)
    bundle = trust_bundle_pem([ca.root, other.root, ca.root])
    assert x509.load_pem_x509_certificates(bundle) == [ca.root, other.root]


def test_two_hundred_signatures_in_a_row(ca, reviews) -> None:
    # Not a timing assertion: a sanity check that repeated signing works and stays consistent.
    csrs = [make_csr(new_key(), reviews) for _ in range(10)]
    serials = {ca.sign(csrs[i % 10], reviews, DAY).serial for i in range(200)}
    assert len(serials) == 200 and ca.issued == 200


def test_cert_info_reads_back_an_issued_chain(ca, clock, reviews) -> None:
    issued = ca.sign(make_csr(new_key(), reviews), reviews, DAY)
    info = cert_info(issued.chain_pem)
    assert info.spiffe_id == str(reviews)
    assert info.serial == format(issued.serial, "x")
    assert (info.not_before, info.not_after) == (clock.now - timedelta(seconds=60), issued.not_after)
    assert info.fingerprint == fingerprint(leaf_of(issued.chain_pem))
    assert info.issuer_fingerprint == ""  # the root is not in the chain
    with_root = issued.chain_pem + trust_bundle_pem([ca.root])
    assert cert_info(with_root).issuer_fingerprint == ca.root_fingerprint
