"""The agent's side: its key, its CSR, and reading back the chain it was issued."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lattice.identity import cert_info, key_pem, make_csr, new_key


def test_new_key_is_p256() -> None:
    key = new_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_csr_asks_for_exactly_the_identity(reviews) -> None:
    key = new_key()
    csr = x509.load_pem_x509_csr(make_csr(key, reviews))
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    assert csr.public_key() == key.public_key()
    [extension] = list(csr.extensions)
    assert isinstance(extension.value, x509.SubjectAlternativeName) and extension.critical
    assert list(extension.value) == [x509.UniformResourceIdentifier(str(reviews))]


def test_key_pem_is_unencrypted_pkcs8() -> None:
    key = new_key()
    text = key_pem(key)
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(text, password=None)
    assert loaded.private_numbers() == key.private_numbers()


def test_cert_info_of_a_non_spiffe_certificate(ca) -> None:
    issued = ca.issue_server(new_key(), ["localhost"], timedelta(hours=1))
    info = cert_info(issued.chain_pem)
    assert info.spiffe_id == ""
    assert info.not_after == issued.not_after
    assert cert_info(ca.to_pem()[0]).spiffe_id == "spiffe://cluster.local"  # a trust domain ID


def test_cert_info_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a PEM certificate chain"):
        cert_info(b"garbage")
