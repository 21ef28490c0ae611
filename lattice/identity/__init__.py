"""Workload identity: SPIFFE IDs, the CA that signs X.509 SVIDs, and join tokens.

Parts:
- `spiffe` — `SpiffeId`: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, parsed
             strictly (one shape, lowercase trust domain).
- `ca`     — `CertificateAuthority`: generated or loaded (plug-in CA, with intermediates); checks
             a CSR (`CsrRefused` with a stable reason) and signs the one identity it is asked for;
             `revocation_list` (a CRL of revoked serials); `Issued`, `fingerprint`, `trust_bundle_pem`.
- `csr`    — the agent's side: `new_key`, `make_csr`, `key_pem`, `cert_info` / `CertInfo`.
- `tokens` — join tokens `lt1.<id>.<secret>.<pin>`: `mint`, `parse`, `check`, `check_pin`
             (exported here as `mint_token`, `parse_token`, `check_token`, `check_token_pin`),
             `TokenRecord` (what is stored: the secret's hash, never the secret, and the services
             its holder may register as), `TokenError`.

Rules:
- Pure: no file or network IO and no clock. The time is passed in (`now`) or injected
  (`clock`, returning timezone-aware UTC datetimes); keys and certificates arrive as objects or
  PEM bytes. Callers do the reading, writing and storing.
- The CA signs only what it is told a caller may become: the CSR must carry exactly that one
  SPIFFE ID as its only SAN. Its key never leaves the agent; chains handed out never include
  the root, which travels separately in the trust bundle.
- Every refusal says what was wrong and what was expected, and never repeats a token's secret.
- Imports nothing else from lattice: the server and agent depend on it, not the reverse.
"""

from typing import TYPE_CHECKING

from lattice.identity import tokens
from lattice.identity.spiffe import CONTROL_PLANE_NAME, SpiffeId
from lattice.identity.tokens import ParsedToken, TokenError, TokenRecord
from lattice.identity.tokens import check as check_token
from lattice.identity.tokens import check_pin as check_token_pin
from lattice.identity.tokens import mint as mint_token
from lattice.identity.tokens import parse as parse_token

if TYPE_CHECKING:
    from lattice.identity.ca import (
        CertificateAuthority,
        CsrRefused,
        Issued,
        fingerprint,
        signed_by,
        trust_bundle_pem,
    )
    from lattice.identity.csr import CertInfo, cert_info, key_pem, make_csr, new_key

# Loaded on first use: what needs the cryptography library (the CA, keys, CSRs). The sidecar's
# agent uses only the names, tokens and SPIFFE IDs, and does its key work in a short-lived
# process (agent/keysmith.py), so its long-lived process never loads cryptography.
_FROM_CA = ("CertificateAuthority", "CsrRefused", "Issued", "fingerprint", "signed_by", "trust_bundle_pem")
_FROM_CSR = ("CertInfo", "cert_info", "key_pem", "make_csr", "new_key")


def __getattr__(name: str):
    if name in _FROM_CA:
        from lattice.identity import ca

        return getattr(ca, name)
    if name in _FROM_CSR:
        from lattice.identity import csr

        return getattr(csr, name)
    raise AttributeError(f"module 'lattice.identity' has no attribute {name!r}")


__all__ = [
    "CONTROL_PLANE_NAME",
    "CertInfo",
    "CertificateAuthority",
    "CsrRefused",
    "Issued",
    "ParsedToken",
    "SpiffeId",
    "TokenError",
    "TokenRecord",
    "cert_info",
    "check_token",
    "check_token_pin",
    "fingerprint",
    "key_pem",
    "make_csr",
    "mint_token",
    "new_key",
    "parse_token",
    "signed_by",
    "tokens",
    "trust_bundle_pem",
]
