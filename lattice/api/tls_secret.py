"""A TLS secret's material, checked before the control plane keeps it: `lattice secret create tls`.

What Istio reads from a Kubernetes `kubernetes.io/tls` secret (`tls.crt`, `tls.key`, optionally
`ca.crt`) is here one certificate chain, its private key and optionally the CAs a MUTUAL server
trusts for client certificates. `check_tls` refuses what Envoy would refuse later (unparsable PEM,
a key that is not the certificate's, an empty CA file) with a message that names the part and
never quotes the key. `describe` is what may be shown: subject, names, validity, fingerprints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lattice.api.meta import DNS1123_SUBDOMAIN

MAX_PEM_BYTES = 64 * 1024  # a chain of a few certificates; a key is far smaller


class SecretError(ValueError):
    """Material that cannot be served; the message names the part (cert, key, ca) and why."""


@dataclass(frozen=True)
class TlsMaterial:
    cert_pem: bytes  # leaf first, then intermediates
    key_pem: bytes = b""
    ca_pem: bytes = b""  # trusted client-certificate CAs (MUTUAL); empty for SIMPLE only

    def __repr__(self) -> str:  # never the key, in logs or tracebacks
        return f"TlsMaterial(cert={len(self.cert_pem)}B, key=<redacted>, ca={len(self.ca_pem)}B)"


def check_name(name: str) -> str:
    if not DNS1123_SUBDOMAIN.match(name or "") or len(name) > 253:
        raise SecretError(
            f"secret name {name!r} must be a DNS-1123 name (lowercase letters, digits, '-' and '.'), as a "
            "Gateway's credentialName names it"
        )
    return name


def check_tls(material: TlsMaterial) -> None:
    """Raise SecretError unless the chain parses, the key is the leaf's and the CA file (if any) parses."""
    for part, pem in (("cert", material.cert_pem), ("key", material.key_pem), ("ca", material.ca_pem)):
        if len(pem) > MAX_PEM_BYTES:
            raise SecretError(f"{part}: {len(pem)} bytes; a PEM file here is at most {MAX_PEM_BYTES}")
    chain = _certificates(material.cert_pem, "cert")
    try:
        key = serialization.load_pem_private_key(material.key_pem, password=None)
    except (ValueError, TypeError):
        raise SecretError(
            "key: not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1); decrypt it first "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from None
    if _public(key.public_key()) != _public(chain[0].public_key()):
        raise SecretError("key: it is not the private key of the certificate's public key (the first in cert)")
    if material.ca_pem:
        _certificates(material.ca_pem, "ca")


def describe(material: TlsMaterial) -> dict:
    """What `lattice secret get` shows: never the key."""
    leaf = _certificates(material.cert_pem, "cert")[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(n.value) for n in names]
    except x509.ExtensionNotFound:
        sans = []
    out = {
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "dns_names": sans,
        "not_before": leaf.not_valid_before_utc.isoformat(),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "chain_length": len(_certificates(material.cert_pem, "cert")),
        "has_ca": bool(material.ca_pem),
    }
    if material.ca_pem:
        out["ca_subjects"] = [c.subject.rfc4514_string() for c in _certificates(material.ca_pem, "ca")]
    return out


def _certificates(pem: bytes, part: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SecretError(f"{part}: no PEM certificate could be read ('-----BEGIN CERTIFICATE-----' blocks)") from None
    return found


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
