"""The certificate authority: checks an agent's CSR and signs its SPIFFE X.509 SVID.

The CA never reads a file or a clock: certificates and keys come in as objects or PEM bytes,
and the time comes from the injected `clock`.
"""

from __future__ import annotations

import collections
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, PublicKeyAlgorithmOID

from lattice.identity.spiffe import SCHEME, SpiffeId, check_trust_domain

Clock = Callable[[], datetime]
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
# Leaves start a minute in the past so a peer whose clock is slightly behind still accepts them.
SKEW = timedelta(seconds=60)
ROOT_VALIDITY = timedelta(days=3650)
# A P-256 CSR is under 1 KiB; RSA-4096 about 2 KiB.
MAX_CSR_BYTES = 8 * 1024
ACCEPTED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048

_PEM = serialization.Encoding.PEM
_SHA256 = hashes.SHA256()
_EMPTY_NAME = x509.Name([])
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_encipherment=True,
    content_commitment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    key_encipherment=False,
    content_commitment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_SAN_KINDS: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS name",
    x509.IPAddress: "IP address",
    x509.RFC822Name: "email address",
    x509.DirectoryName: "directory name",
    x509.RegisteredID: "registered ID",
    x509.OtherName: "other name",
}
# Key kinds the CA refuses, named from the CSR's algorithm identifier before the key is loaded:
# loading a DSA key makes cryptography warn (DSA is deprecated) in the CA, once per such CSR.
_KEY_KINDS = {
    PublicKeyAlgorithmOID.ED25519: "Ed25519",
    PublicKeyAlgorithmOID.ED448: "Ed448",
    PublicKeyAlgorithmOID.DSA: "DSA",
    PublicKeyAlgorithmOID.X25519: "X25519",
    PublicKeyAlgorithmOID.X448: "X448",
}


class CsrRefused(Exception):
    """A CSR the CA will not sign. `reason` is a short stable code; str() says what and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # leaf first, then the intermediates; never the root
    serial: int
    not_after: datetime
    identity: str  # the SPIFFE ID, or a server certificate's DNS names joined by commas
    root_fingerprint: str  # sha256 hex of the root anchoring the chain


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER, lowercase hex."""
    return cert.fingerprint(_SHA256).hex()


def trust_bundle_pem(roots: list[x509.Certificate]) -> bytes:
    """The roots as one PEM bundle, in order, each root once."""
    unique: dict[str, x509.Certificate] = {}
    for root in roots:
        unique.setdefault(fingerprint(root), root)
    return b"".join(root.public_bytes(_PEM) for root in unique.values())


class CertificateAuthority:
    """Signs workload certificates with `signing_cert`, which chains through `intermediates`
    to `root` (the signing cert itself when it is self-signed)."""

    def __init__(
        self,
        signing_cert: x509.Certificate,
        signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        intermediates: list[x509.Certificate],
        root: x509.Certificate,
        trust_domain: str,
        clock: Clock,
    ) -> None:
        self.trust_domain = check_trust_domain(trust_domain)
        self.signing_cert = signing_cert
        self.root = root
        self._key = signing_key
        self._clock = clock
        self._intermediates = tuple(intermediates)
        chain = self._chain()
        _check_chain(chain, signing_key, self._now())
        # Precomputed once: these are the same for every certificate this CA signs.
        self.root_fingerprint = fingerprint(root)
        self._tail_pem = b"".join(cert.public_bytes(_PEM) for cert in chain[:-1])
        self._not_after_cap = min(cert.not_valid_after_utc for cert in chain)
        self._issuer = signing_cert.subject
        self._aki = _authority_key_id(signing_cert, signing_key.public_key())  # the cert's key (checked above)
        self.issued = 0
        self.refused: collections.Counter[str] = collections.Counter()

    @classmethod
    def generate(cls, trust_domain: str, clock: Clock, validity: timedelta = ROOT_VALIDITY) -> CertificateAuthority:
        """A new self-signed ECDSA P-256 root that signs workload certificates directly."""
        check_trust_domain(trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utc(clock())
        # The random suffix tells two roots of the same trust domain apart in any tool's output.
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Lattice root CA {secrets.token_hex(4)}"),
            ]
        )
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(_uri_san(SCHEME + trust_domain), critical=False)
            .sign(key, _SHA256)
        )
        return cls(root, key, [], root, trust_domain, clock)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, trust_domain: str, clock: Clock) -> CertificateAuthority:
        """A plug-in CA: the cert file holds the signing cert, then any intermediates, then the
        root (which may be left out only when the signing cert is itself the root)."""
        certs = _parse_certs(cert_pem)
        key = _parse_key(key_pem)
        signing = certs[0]
        if _self_signed(signing):
            if len(certs) > 1:
                raise ValueError(
                    f"the signing certificate {_label(signing)} is self-signed (a root), yet "
                    f"{len(certs) - 1} more certificate(s) follow it in the cert file; remove them"
                )
            return cls(signing, key, [], signing, trust_domain, clock)
        if not _self_signed(certs[-1]):
            raise ValueError(
                f"the signing certificate {_label(signing)} is not self-signed and the root is "
                "missing: append it to the cert file (signing cert, then intermediates, then root)"
            )
        return cls(signing, key, list(certs[1:-1]), certs[-1], trust_domain, clock)

    def to_pem(self) -> tuple[bytes, bytes]:
        """(cert file, key file) in the layout `load` reads."""
        certs = self._chain()
        key = self._key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return b"".join(cert.public_bytes(_PEM) for cert in certs), key

    def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta) -> Issued:
        """Sign `csr_pem` for `identity`, or raise CsrRefused saying what was wrong."""
        _check_ttl(ttl)
        try:
            public_key = self._checked_csr(csr_pem, identity)
        except CsrRefused as refused:
            self.refused[refused.reason] += 1
            raise
        issued = self._issue(public_key, _uri_san(str(identity)), ttl, str(identity))
        self.issued += 1
        return issued

    def issue_server(
        self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, dns_names: list[str], ttl: timedelta
    ) -> Issued:
        """A certificate for the control plane's own TLS endpoints. Internal: no CSR checks."""
        _check_ttl(ttl)
        if not dns_names:
            raise ValueError("a server certificate needs at least one DNS name")
        for name in dns_names:
            if _is_ip(name):
                raise ValueError(f"{name!r} is an IP address; issue_server takes DNS names only")
        names = x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names])
        return self._issue(key.public_key(), names, ttl, ",".join(dns_names))

    def revocation_list(self, serials: list[int], next_update: timedelta) -> bytes:
        """A CRL (PEM) signed by this CA's signing certificate, listing `serials` as revoked. It
        names the certificates this CA signed; serials of other CAs are harmless in it."""
        now = self._now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._issuer)
            .last_update(now - SKEW)
            .next_update(now + next_update)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial in sorted(set(serials)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - SKEW).build()
            )
        return builder.sign(self._key, _SHA256).public_bytes(_PEM)

    # -- internals ---------------------------------------------------------------------------

    def _chain(self) -> list[x509.Certificate]:
        """Signing cert, intermediates, root: each signed by the next."""
        if self.signing_cert == self.root:
            return [self.root]
        return [self.signing_cert, *self._intermediates, self.root]

    def _now(self) -> datetime:
        return _utc(self._clock())

    def _checked_csr(self, csr_pem: bytes, identity: SpiffeId) -> PublicKey:
        """The CSR's public key, if every check passes."""
        if identity.trust_domain != self.trust_domain:
            raise CsrRefused(
                "trust-domain",
                f"{identity} is in trust domain {identity.trust_domain!r}; "
                f"this CA signs only for {self.trust_domain!r}",
            )
        csr = _load_csr(csr_pem)
        public_key = _check_key(csr)
        if not _signature_valid(csr):
            raise CsrRefused(
                "bad-signature",
                "the CSR's signature does not verify with its own public key; sign the CSR with the key it carries",
            )
        extensions = _extensions(csr)
        _check_not_ca(extensions)
        _check_san(extensions, identity)
        return public_key

    def _issue(self, public_key: PublicKey, san: x509.SubjectAlternativeName, ttl: timedelta, identity: str) -> Issued:
        now = self._now()
        not_after = min(now + ttl, self._not_after_cap).replace(microsecond=0)
        if not_after <= now:
            raise ValueError(f"the CA chain expired at {self._not_after_cap.isoformat()}; rotate the CA")
        serial = _serial()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_EMPTY_NAME)
            .issuer_name(self._issuer)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - SKEW)
            .not_valid_after(not_after)
            # RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(san, critical=True)
            .add_extension(_LEAF_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, _SHA256)
        )
        chain = cert.public_bytes(_PEM) + self._tail_pem
        return Issued(chain, serial, not_after, identity, self.root_fingerprint)


# -- CSR checks: each raises CsrRefused with a stable reason -----------------------------------


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if not isinstance(csr_pem, bytes | bytearray):
        raise CsrRefused("bad-pem", f"the CSR must be PEM bytes, not {type(csr_pem).__name__}")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrRefused("too-large", f"the CSR is {len(csr_pem)} bytes; the limit is {MAX_CSR_BYTES}")
    try:
        return x509.load_pem_x509_csr(bytes(csr_pem))
    except ValueError:
        raise CsrRefused(
            "bad-pem",
            "the CSR is not a PEM certificate request "
            "('-----BEGIN CERTIFICATE REQUEST-----' block holding a valid PKCS#10 request)",
        ) from None


def _check_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    wanted = f"use ECDSA P-256 (P-384 and RSA of at least {MIN_RSA_BITS} bits are also accepted)"
    # cryptography's stub leaves out CertificateSigningRequest.public_key_algorithm_oid (present at run time).
    refused = _KEY_KINDS.get(csr.public_key_algorithm_oid)  # type: ignore[attr-defined]
    if refused is not None:
        raise CsrRefused("key-type", f"the CSR's key is {refused}; {wanted}")
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRefused("key-type", f"the CSR's public key is of an unsupported type; {wanted}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ACCEPTED_CURVES:
            raise CsrRefused("key-type", f"the CSR's key is on curve {key.curve.name}; {wanted}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRefused("weak-key", f"the CSR's RSA key has {key.key_size} bits; {wanted}")
    else:
        raise CsrRefused("key-type", f"the CSR's key is {type(key).__name__}; {wanted}")
    return key


def _signature_valid(csr: x509.CertificateSigningRequest) -> bool:
    try:
        return csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return False


def _extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return csr.extensions
    except ValueError as exc:  # includes DuplicateExtension
        raise CsrRefused("bad-pem", f"the CSR's extensions cannot be parsed: {exc}") from None


def _check_not_ca(extensions: x509.Extensions) -> None:
    for extension in extensions:
        if isinstance(extension.value, x509.BasicConstraints) and extension.value.ca:
            raise CsrRefused(
                "ca-requested",
                "the CSR asks for a CA certificate (BasicConstraints ca=true); "
                "workload certificates are never CAs, so drop that extension",
            )


def _check_san(extensions: x509.Extensions, identity: SpiffeId) -> None:
    sans = [ext.value for ext in extensions if isinstance(ext.value, x509.SubjectAlternativeName)]
    names = list(sans[0]) if sans else []
    others = [name for name in names if not isinstance(name, x509.UniformResourceIdentifier)]
    if others:
        found = ", ".join(f"{_SAN_KINDS.get(type(n), type(n).__name__)} {n.value!r}" for n in others)
        raise CsrRefused(
            "extra-san",
            f"the CSR asks for {found}; a workload certificate carries only its SPIFFE ID as a URI SAN ({identity})",
        )
    if len(names) != 1:
        raise CsrRefused("san-count", f"the CSR has {len(names)} URI SANs; expected exactly one, {identity}")
    if names[0].value != str(identity):
        raise CsrRefused(
            "san-mismatch",
            f"the CSR asks for {names[0].value!r:.300}, but this request may only be signed for {identity}",
        )


# -- chain checks for load and the constructor: ValueError naming the certificate -------------


def _check_chain(
    chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, now: datetime
) -> None:
    _check_key_matches(chain[0], key)
    for depth, cert in enumerate(chain):
        _check_is_ca(cert, depth)
        _check_validity(cert, now)
    for cert, issuer in pairwise(chain):
        if not signed_by(cert, issuer):
            raise ValueError(
                f"certificate {_label(cert)} is not signed by the next one in the chain, "
                f"{_label(issuer)}; order the cert file signing cert, intermediates, root"
            )
    if not _self_signed(chain[-1]):
        raise ValueError(f"the root {_label(chain[-1])} is not self-signed; supply the real root")


def _check_key_matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):  # a caller may hand in any key
        raise ValueError(f"the CA key is a {type(key).__name__}; use an ECDSA or RSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError(
            f"the CA key does not match the signing certificate {_label(cert)}; "
            "supply the private key of the first certificate in the cert file"
        )


def _check_is_ca(cert: x509.Certificate, depth: int) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError(
            f"certificate {_label(cert)} is not a CA (it lacks BasicConstraints ca=true); "
            "the cert file may hold only CA certificates"
        )
    if constraints.path_length is not None and constraints.path_length < depth:
        raise ValueError(
            f"certificate {_label(cert)} allows {constraints.path_length} intermediate CA(s) "
            f"below it but {depth} sit below it in this chain; use a CA without that limit"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise ValueError(f"certificate {_label(cert)} has a KeyUsage without keyCertSign; it may not sign certificates")


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise ValueError(
            f"certificate {_label(cert)} expired at {cert.not_valid_after_utc.isoformat()}; "
            "renew it or supply a current one"
        )
    if now + SKEW < cert.not_valid_before_utc:
        raise ValueError(
            f"certificate {_label(cert)} is not valid until {cert.not_valid_before_utc.isoformat()}; "
            "check this host's clock"
        )


# -- small pieces --------------------------------------------------------------------------------


def _parse_certs(cert_pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ValueError(f"the CA cert file holds no readable PEM certificates ({exc})") from None


def _parse_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError("the CA key file is encrypted; supply an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"the CA key file holds no readable PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"the CA key is a {type(key).__name__}; use an ECDSA or RSA key")
    return key


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer` names and signed `cert`."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return signed_by(cert, cert)


def _authority_key_id(issuer: x509.Certificate, issuer_key: PublicKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _uri_san(uri: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])


def _label(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string() or "(empty subject)")


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _serial() -> int:
    """A random positive serial of at most 128 bits."""
    return 1 + secrets.randbelow(2**128 - 1)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes (UTC)")
    return moment.astimezone(timezone.utc)


def _check_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"the certificate TTL must be positive, got {ttl}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
