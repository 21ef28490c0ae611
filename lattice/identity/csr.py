"""The agent's side of issuance: its own key (which never leaves the host), the CSR it sends,
and what it can read back from the certificate chain it receives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lattice.identity.ca import fingerprint, signed_by
from lattice.identity.spiffe import SCHEME, SpiffeId


@dataclass(frozen=True)
class CertInfo:
    spiffe_id: str  # "" when the leaf has no spiffe:// URI SAN
    serial: str  # lowercase hex
    not_before: datetime  # timezone-aware UTC
    not_after: datetime
    issuer_fingerprint: str  # sha256 hex of the leaf's issuer, "" if the chain does not hold it
    fingerprint: str  # sha256 hex of the leaf


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR asking for `identity` as the one URI SAN, with an empty subject."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: the agent keeps it in memory or hands it to Envoy over SDS."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_info(chain_pem: bytes) -> CertInfo:
    """What matters about the leaf (the first certificate) of a PEM chain."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate chain ({exc})") from None
    leaf = certs[0]
    issuer = next((cert for cert in certs[1:] if signed_by(leaf, cert)), None)
    return CertInfo(
        spiffe_id=_spiffe_id(leaf),
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issuer_fingerprint="" if issuer is None else fingerprint(issuer),
        fingerprint=fingerprint(leaf),
    )


def _spiffe_id(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return next((uri for uri in uris if uri.startswith(SCHEME)), "")
