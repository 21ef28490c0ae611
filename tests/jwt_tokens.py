"""JWTs for tests, signed here with `cryptography` (RS256 and ES256): no JWT library needed.

`SigningKey` holds a private key and its public JWK; `sign` makes a compact JWS with any header and
claims, so tests can also make expired, foreign and tampered tokens.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, size: int | None = None) -> str:
    return b64url(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str  # RS256 or ES256
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @staticmethod
    def rsa(kid: str) -> SigningKey:
        return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @staticmethod
    def ec(kid: str) -> SigningKey:
        return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @property
    def jwk(self) -> dict:
        numbers = self.private.public_key().public_numbers()
        if self.alg == "RS256":
            return {
                "kty": "RSA",
                "kid": self.kid,
                "alg": "RS256",
                "use": "sig",
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            }
        return {
            "kty": "EC",
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "crv": "P-256",
            "x": _uint(numbers.x, 32),
            "y": _uint(numbers.y, 32),
        }

    def sign(self, claims: dict, header: dict | None = None) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        return f"{signing_input.decode()}.{b64url(self._signature(signing_input))}"

    def _signature(self, data: bytes) -> bytes:
        if self.alg == "RS256":
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s, not DER


def jwks(*keys: SigningKey) -> str:
    return json.dumps({"keys": [k.jwk for k in keys]})


def claims(issuer: str, audience: str | None = None, subject: str = "alice", ttl: float = 600, **extra) -> dict:
    now = int(time.time())
    out = {"iss": issuer, "sub": subject, "iat": now, "exp": now + int(ttl), **extra}
    if audience is not None:
        out["aud"] = audience
    return out
