"""Join tokens: who may become whom, and which services it may serve.

A token `lt1.<id>.<secret>.<pin>` lets one agent (or several, or any number until it expires)
obtain a certificate for one namespace and service account, and register as one of the services
the token names (by default only the service named like the account; Consul's service
identities). The control plane stores only a
TokenRecord holding the secret's sha256, looked up by the non-secret id. The pin is the start of
the CA root's sha256 fingerprint, so an agent that has nothing yet can check it reached the right
CA (like kubeadm's discovery hash). Times are plain epoch seconds passed in by the caller.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lattice.identity.spiffe import SpiffeId

VERSION = "lt1"
SHAPE = "lt1.<id>.<secret>.<pin>"
SECRET_BYTES = 32
PIN_HEX = 32
MAX_TOKEN_CHARS = 256
MAX_DESCRIPTION = 256
MAX_SERVICES = 32
_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url, no padding
_PIN = re.compile(r"[0-9a-f]{32}")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class TokenError(ValueError):
    """A token that cannot be used. `reason` is a stable code; the message never holds the secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ParsedToken:
    id: str
    secret: bytes = field(repr=False)
    pin: str


@dataclass(frozen=True)
class TokenRecord:
    id: str
    namespace: str
    service_account: str
    secret_hash: str  # sha256 hex of the raw secret bytes
    created_at: float
    expires_at: float
    uses_left: int | None  # None: unlimited until expiry
    description: str = ""
    services: tuple[str, ...] = ()  # what its holder may register as

    def may_serve(self, service: str) -> bool:
        return service in self.services

    def identity(self, trust_domain: str) -> SpiffeId:
        return SpiffeId(trust_domain, self.namespace, self.service_account)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"services": list(self.services)}

    @classmethod
    def from_dict(cls, data: dict) -> TokenRecord:
        names = [f.name for f in dataclasses.fields(cls)]
        optional = {"description", "services"}
        missing = [name for name in names if name not in optional and name not in data]
        if missing:
            raise ValueError(f"token record lacks {', '.join(missing)}")
        fields = {name: data[name] for name in names if name in data}
        if "services" in fields:
            fields["services"] = tuple(fields["services"])
        else:  # a record from before tokens named services: the account's own
            fields["services"] = default_services(data["service_account"])
        return cls(**fields)


def pin_for(root_fingerprint: str) -> str:
    """The pin a token carries for a CA root with this sha256 hex fingerprint."""
    if not isinstance(root_fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", root_fingerprint):
        raise ValueError("the root fingerprint must be 64 lowercase hex characters (sha256)")
    return root_fingerprint[:PIN_HEX]


def mint(
    namespace: str,
    service_account: str,
    ttl_seconds: float,
    uses: int | None,
    now: float,
    root_fingerprint: str,
    description: str = "",
    services: list[str] | tuple[str, ...] | None = None,
) -> tuple[str, TokenRecord]:
    """A new token and the record to store for it; the token itself is shown once, never stored.
    `services`: what its holder may register as (default: the service named like the account)."""
    _check_request(namespace, service_account, ttl_seconds, uses, description)
    services = _check_services(services, service_account)
    token_id = secrets.token_hex(6)
    secret = secrets.token_bytes(SECRET_BYTES)
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    token = f"{VERSION}.{token_id}.{encoded}.{pin_for(root_fingerprint)}"
    record = TokenRecord(
        token_id,
        namespace,
        service_account,
        _hash(secret),
        created_at=now,
        expires_at=now + ttl_seconds,
        uses_left=uses,
        description=description,
        services=services,
    )
    return token, record


def parse(token: str) -> ParsedToken:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed", f"not a join token; expected {SHAPE}")
    parts = token.strip().split(".")
    if len(parts) != 4:
        raise TokenError("malformed", f"a join token has 4 dot-separated parts, {SHAPE}; this one has {len(parts)}")
    version, token_id, secret, pin = parts
    if version != VERSION:
        raise TokenError("malformed", f"unsupported join token version; expected it to start '{VERSION}.'")
    if not _ID.fullmatch(token_id):
        raise TokenError("malformed", "the join token's id must be 12 lowercase hex characters")
    if not _SECRET.fullmatch(secret):
        raise TokenError("malformed", "the join token's secret must be 43 base64url characters")
    if not _PIN.fullmatch(pin):
        raise TokenError("malformed", f"the join token's pin must be {PIN_HEX} lowercase hex characters")
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except binascii.Error:
        raise TokenError("malformed", "the join token's secret is not valid base64url") from None
    return ParsedToken(token_id, raw, pin)


def check(parsed: ParsedToken, record: TokenRecord | None, now: float) -> None:
    """Raise TokenError unless `parsed` may be used now, per its stored `record`."""
    if record is None or record.id != parsed.id:
        raise TokenError("unknown", f"unknown join token {parsed.id}; mint a new one")
    if not hmac.compare_digest(_hash(parsed.secret), record.secret_hash):
        raise TokenError("invalid", "invalid token")
    if now >= record.expires_at:
        when = datetime.fromtimestamp(record.expires_at, timezone.utc).isoformat(timespec="seconds")
        raise TokenError("expired", f"join token {parsed.id} expired at {when}; mint a new one")
    if record.uses_left is not None and record.uses_left <= 0:
        raise TokenError("used-up", f"join token {parsed.id} is used up: every join it allowed has been made")


def check_pin(parsed: ParsedToken, root_fingerprint: str) -> None:
    """The agent's check that the CA root it was handed is the one the token was minted under."""
    if not hmac.compare_digest(pin_for(root_fingerprint), parsed.pin):
        raise TokenError(
            "pin-mismatch",
            f"the control plane's CA root (sha256 {root_fingerprint[:PIN_HEX]}…) "
            f"is not the one join token {parsed.id} was minted for (pin {parsed.pin}); "
            "check the server address, or mint a token from this control plane",
        )


def _hash(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


def _check_request(
    namespace: str, service_account: str, ttl_seconds: float, uses: int | None, description: str
) -> None:
    if not _matches(_DNS_LABEL, namespace, 63):
        raise ValueError(
            f"namespace {namespace!r} must be a DNS-1123 label: lowercase a-z, 0-9 and '-', at most 63 characters"
        )
    if not _matches(_DNS_SUBDOMAIN, service_account, 253):
        raise ValueError(
            f"service account {service_account!r} must be a DNS-1123 subdomain: "
            "lowercase a-z, 0-9, '-' and '.', at most 253 characters"
        )
    if not _is_number(ttl_seconds) or not 0 < ttl_seconds < math.inf:
        raise ValueError(f"the token TTL must be a positive number of seconds, got {ttl_seconds!r}")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or uses < 1):
        raise ValueError(f"uses must be a whole number of at least 1, or None for unlimited; got {uses!r}")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ValueError(f"the description must be text of at most {MAX_DESCRIPTION} characters")


def default_services(service_account: str) -> tuple[str, ...]:
    """Without --service, a token serves the service named like its account (if that is a
    service name at all: a dotted account serves none unless named)."""
    return (service_account,) if _matches(_DNS_LABEL, service_account, 63) else ()


def _check_services(services: object, service_account: str) -> tuple[str, ...]:
    if services is None or services == [] or services == ():
        return default_services(service_account)
    if not isinstance(services, list | tuple) or len(services) > MAX_SERVICES:
        raise ValueError(f"services must be a list of at most {MAX_SERVICES} service names")
    for service in services:
        if not _matches(_DNS_LABEL, service, 63):
            raise ValueError(
                f"service {service!r} must be a DNS-1123 label: lowercase a-z, 0-9 and '-', at most 63 characters"
            )
    return tuple(sorted(set(services)))


def _matches(pattern: re.Pattern[str], value: object, max_length: int) -> bool:
    return isinstance(value, str) and len(value) <= max_length and bool(pattern.fullmatch(value))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
