"""The CA's revocation list: signed by the signing certificate, naming the revoked serials."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509

from lattice.identity import make_csr, new_key


def test_the_crl_lists_revoked_serials_and_verifies_with_the_signing_certificate(ca, reviews, clock) -> None:
    issued = ca.sign(make_csr(new_key(), reviews), reviews, timedelta(hours=1))
    kept = ca.sign(make_csr(new_key(), reviews), reviews, timedelta(hours=1))
    crl = x509.load_pem_x509_crl(ca.revocation_list([issued.serial, issued.serial], timedelta(days=1)))
    assert crl.is_signature_valid(ca.signing_cert.public_key())
    assert crl.issuer == ca.signing_cert.subject
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial) is None
    assert len(crl) == 1
    assert crl.next_update_utc == clock() + timedelta(days=1)
