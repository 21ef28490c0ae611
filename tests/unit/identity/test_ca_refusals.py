"""CertificateAuthority.sign: every CSR it must refuse, with its stable reason, and the counters."""

from __future__ import annotations

import base64
import collections
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from lattice.identity import CertificateAuthority, CsrRefused, SpiffeId, make_csr, new_key

DAY = timedelta(hours=24)
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def csr_with(names: list[x509.GeneralName], key=None, ca_flag: bool = False) -> bytes:
    key = key or new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca_flag:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def uri(value: str = REVIEWS) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def tampered(csr_pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature value
    body = base64.encodebytes(bytes(der))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


CASES = {
    "two URI SANs": (lambda: csr_with([uri(), uri(REVIEWS + "-admin")]), "san-count", "2 URI SANs"),
    "no SAN": (lambda: csr_with([]), "san-count", "0 URI SANs; expected exactly one"),
    "DNS SAN": (
        lambda: csr_with([uri(), x509.DNSName("reviews.default.svc")]),
        "extra-san",
        "DNS name 'reviews.default.svc'",
    ),
    "email SAN": (lambda: csr_with([uri(), x509.RFC822Name("a@b.c")]), "extra-san", "email address"),
    "CA flag": (lambda: csr_with([uri()], ca_flag=True), "ca-requested", "BasicConstraints ca=true"),
    "RSA-1024": (lambda: csr_with([uri()], rsa.generate_private_key(65537, 1024)), "weak-key", "RSA key has 1024 bits"),
    "Ed25519": (lambda: csr_with([uri()], ed25519.Ed25519PrivateKey.generate()), "key-type", "key is Ed25519"),
    "DSA": (lambda: csr_with([uri()], dsa.generate_private_key(2048)), "key-type", "key is DSA"),
    "P-521": (lambda: csr_with([uri()], ec.generate_private_key(ec.SECP521R1())), "key-type", "curve secp521r1"),
    "other identity": (
        lambda: csr_with([uri("spiffe://cluster.local/ns/default/sa/ratings")]),
        "san-mismatch",
        "may only be signed for " + REVIEWS,
    ),
    "garbage PEM": (
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
        "bad-pem",
        "not a PEM certificate request",
    ),
    "not PEM at all": (lambda: b"hello", "bad-pem", "not a PEM certificate request"),
    "text not bytes": (lambda: make_csr(new_key(), SpiffeId.parse(REVIEWS)).decode(), "bad-pem", "must be PEM bytes"),
    "oversized": (
        lambda: make_csr(new_key(), SpiffeId.parse(REVIEWS)) + b"\n" * 8192,
        "too-large",
        "the limit is 8192",
    ),
    "tampered signature": (
        lambda: tampered(make_csr(new_key(), SpiffeId.parse(REVIEWS))),
        "bad-signature",
        "signature does not verify",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.filterwarnings("ignore:DSA is deprecated")  # the test makes a DSA key on purpose; the CA warns not
def test_refusal_has_stable_reason_and_clear_message(ca: CertificateAuthority, case: str) -> None:
    make, reason, message = CASES[case]
    with pytest.raises(CsrRefused) as caught:
        ca.sign(make(), SpiffeId.parse(REVIEWS), DAY)
    assert caught.value.reason == reason
    assert message in str(caught.value)
    assert ca.refused == collections.Counter({reason: 1})
    assert ca.issued == 0


def test_wrong_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    elsewhere = SpiffeId("other.mesh", "default", "reviews")
    with pytest.raises(CsrRefused, match="this CA signs only for 'cluster.local'") as caught:
        ca.sign(make_csr(new_key(), elsewhere), elsewhere, DAY)
    assert caught.value.reason == "trust-domain"


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)],
    ids=["P-384", "RSA-2048"],
)
def test_other_accepted_keys(ca: CertificateAuthority, key) -> None:
    issued = ca.sign(csr_with([uri()], key), SpiffeId.parse(REVIEWS), DAY)
    leaf = x509.load_pem_x509_certificate(issued.chain_pem)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()


def test_counters_add_up(ca: CertificateAuthority) -> None:
    identity = SpiffeId.parse(REVIEWS)
    good = make_csr(new_key(), identity)
    for csr in (good, b"junk", b"junk", good, csr_with([uri(), uri()])):
        try:
            ca.sign(csr, identity, DAY)
        except CsrRefused:
            pass
    assert ca.issued == 2
    assert ca.refused == collections.Counter({"bad-pem": 2, "san-count": 1})
