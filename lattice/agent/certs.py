"""What the agent reads from certificates, without the cryptography library in its process.

The agent checks a trust bundle against the join token's pin (the SHA-256 of a root's DER) and
reads back the certificate it was issued (its SPIFFE ID, serial, validity) to report and renew it.
Neither needs more than DER's framing: `pem_certificates` takes the DER out of PEM, `leaf` walks
X.509's TBSCertificate (RFC 5280 4.1) to the fields named. Verifying signatures stays with those
who must: TLS (the ssl module, Envoy) and the control plane's CA. Key and CSR: agent/keysmith.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from lattice.identity.spiffe import SCHEME

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)
_SAN = b"\x06\x03\x55\x1d\x11"  # OID 2.5.29.17, subjectAltName, as DER
_SEQUENCE, _INTEGER, _OID, _BOOLEAN, _OCTETS = 0x30, 0x02, 0x06, 0x01, 0x04
_UTC_TIME, _GENERALIZED_TIME, _URI = 0x17, 0x18, 0x86
_VERSION, _EXTENSIONS = 0xA0, 0xA3


@dataclass(frozen=True)
class Leaf:
    spiffe_id: str  # "" when the certificate has no spiffe:// URI SAN
    serial: str  # lowercase hex
    not_before: datetime  # timezone-aware UTC
    not_after: datetime
    fingerprint: str  # sha256 hex of the DER


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER of every certificate in a PEM bundle, in order; ValueError if there is none."""
    found = []
    for body in _PEM.findall(pem):
        try:
            found.append(base64.b64decode(b"".join(body.split()), validate=True))
        except binascii.Error as e:
            raise ValueError(f"a certificate's PEM is not base64 ({e})") from None
    if not found:
        raise ValueError("no PEM certificate found")
    return found


def fingerprint(der: bytes) -> str:
    """As the CA's `fingerprint` (identity/ca.py): sha256 of the DER, lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def leaf(chain_pem: bytes) -> Leaf:
    """The first certificate of a PEM chain; ValueError if it is not DER X.509."""
    der = pem_certificates(chain_pem)[0]
    try:
        return _leaf(der)
    except (IndexError, ValueError) as e:
        raise ValueError(f"not an X.509 certificate ({e})") from None


def _leaf(der: bytes) -> Leaf:
    certificate = _only(der, _SEQUENCE)
    tbs = _items(_first(certificate, _SEQUENCE))
    if tbs and tbs[0][0] == _VERSION:
        tbs = tbs[1:]
    (serial_tag, serial), _signature, _issuer, (validity_tag, validity) = tbs[:4]
    if serial_tag != _INTEGER or validity_tag != _SEQUENCE:
        raise ValueError("unexpected TBSCertificate layout")
    not_before, not_after = (_time(tag, value) for tag, value in _items(validity))
    extensions = next((value for tag, value in tbs[4:] if tag == _EXTENSIONS), b"")
    return Leaf(
        spiffe_id=_spiffe_id(extensions),
        serial=format(int.from_bytes(serial, "big", signed=True), "x"),
        not_before=not_before,
        not_after=not_after,
        fingerprint=fingerprint(der),
    )


def _spiffe_id(extensions: bytes) -> str:
    if not extensions:
        return ""
    for _, extension in _items(_only(extensions, _SEQUENCE)):
        fields = _items(extension)
        if not fields or fields[0] != (_OID, _SAN[2:]):
            continue
        value = next(v for t, v in fields[1:] if t == _OCTETS)
        for tag, name in _items(_only(value, _SEQUENCE)):
            if tag == _URI and name.startswith(SCHEME.encode()):
                return name.decode("ascii")
    return ""


def _time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii")
    if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z"):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280 4.1.2.5.1
    elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise ValueError(f"unexpected time {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)


def _tlv(data: bytes, at: int) -> tuple[int, bytes, int]:
    """(tag, value, where the next element starts) of the DER element at `at`."""
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        size = first & 0x7F
        if not 1 <= size <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("DER element longer than its container")
    return tag, data[at : at + length], at + length


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(data):
        tag, value, at = _tlv(data, at)
        out.append((tag, value))
    return out


def _only(data: bytes, tag: int) -> bytes:
    found, value, end = _tlv(data, 0)
    if found != tag or end != len(data):
        raise ValueError(f"expected one DER element of tag {tag:#x}")
    return value


def _first(data: bytes, tag: int) -> bytes:
    found, value, _ = _tlv(data, 0)
    if found != tag:
        raise ValueError(f"expected DER tag {tag:#x}")
    return value
