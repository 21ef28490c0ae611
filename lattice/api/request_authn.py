"""Istio `security.istio.io` RequestAuthentication (v1beta1 and v1 share one schema): which JWTs a
workload's sidecar accepts.

Field names are Istio's (camelCase); anything not modelled here is refused by name (see `meta.Spec`).
Checks follow Istio's validation: an issuer, non-empty audiences and token locations, `jwksUri` an
http(s) URL, `jwks` a JSON Web Key Set, header names valid. Lattice refuses what it cannot honour
rather than ignore it: `targetRef(s)` (waypoint and Gateway attachment) and a rule with neither
`jwks` nor `jwksUri` (OpenID discovery). Which policies apply to a workload is decided in
`lattice.mesh.request_authn`; how rules become Envoy's jwt_authn filter, in `lattice.translate.jwt`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lattice.api.durations import parse_duration
from lattice.api.networking import IstioSpec
from lattice.api.security import WorkloadSelector

# RFC 9110 token: what a header (or cookie) name may be. Output headers may use any token.
TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Members each key type needs (RFC 7518 section 6), all base64url strings.
KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}
MAX_JWKS_CHARS = 256 * 1024


def check_jwks(text: str) -> str:
    """`text` if it is a JSON Web Key Set Envoy can load; ValueError saying what is wrong otherwise."""
    if len(text) > MAX_JWKS_CHARS:
        raise ValueError(f"is larger than {MAX_JWKS_CHARS} characters")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"is not JSON: {e}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('must be a JSON Web Key Set: an object with a non-empty "keys" list')
    for i, key in enumerate(keys):
        problem = _key_problem(key)
        if problem:
            raise ValueError(f"keys[{i}] {problem}")
    return text


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, dict):
        return "is not a JSON object"
    kty = key.get("kty")
    members = KEY_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        return f"has kty {key.get('kty')!r}; use one of {', '.join(KEY_MEMBERS)}"
    for name in members:
        if name == "crv":
            if not isinstance(key.get("crv"), str):
                return f"({key['kty']}) needs crv, the curve name"
        elif not _is_base64url(key.get(name)):
            return f"({key['kty']}) needs {name} as a base64url string"
    return None


def _is_base64url(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return True


def check_jwks_uri(uri: str) -> str:
    """An http(s) URL with a host, as Istio's ParseJwksURI requires."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{uri!r} is not an http:// or https:// URL with a host")
    try:
        _ = parts.port  # reading it checks it
    except ValueError:
        raise ValueError(f"{uri!r} has an invalid port") from None
    return uri


def _header_name(name: str, what: str) -> str:
    if not TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid {what} name (letters, digits and !#$%&'*+.^_`|~-)")
    return name


class JWTHeader(IstioSpec):
    name: str = Field(min_length=1)
    prefix: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        _header_name(v, "header")
        if "_" in v:
            # The sidecar rejects requests with '_' in a header name, so no token could arrive here.
            raise ValueError(
                f"{v!r} contains '_'; the sidecar rejects requests with underscores in header names, so a token "
                "could never be read from it"
            )
        return v


class ClaimToHeader(IstioSpec):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        return _header_name(v, "header")


class JWTRule(IstioSpec):
    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: list[JWTHeader] = Field(default_factory=list)
    from_params: list[str] = Field(default_factory=list)
    from_cookies: list[str] = Field(default_factory=list)
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    timeout: str | None = None

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, v: list[str]) -> list[str]:
        if any(not a for a in v):
            raise ValueError("an audience must be a non-empty string")
        return v

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, v: str | None) -> str | None:
        return None if v is None else check_jwks_uri(v)

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("jwks_uri"):
            raise ValueError("set jwks or jwksUri, not both")
        return None if v is None else check_jwks(v)

    @field_validator("from_params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        if any(not p for p in v):
            raise ValueError("a query parameter name must be a non-empty string")
        return v

    @field_validator("from_cookies")
    @classmethod
    def _cookies(cls, v: list[str]) -> list[str]:
        for name in v:
            _header_name(name, "cookie")
        return v

    @field_validator("output_payload_to_header")
    @classmethod
    def _payload_header(cls, v: str | None) -> str | None:
        return None if v is None else _header_name(v, "header")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("must be longer than 0s")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> JWTRule:
        if self.jwks is None and self.jwks_uri is None:
            raise ValueError("set jwksUri (or jwks): OpenID discovery of the keys from the issuer is not supported")
        return self

    @property
    def timeout_seconds(self) -> float:
        """How long the control plane waits for `jwksUri` (Istio's default: 5s)."""
        return parse_duration(self.timeout) if self.timeout else 5.0


class RequestAuthenticationSpec(IstioSpec):
    selector: WorkloadSelector | None = None
    target_ref: Any = None
    target_refs: Any = None
    jwt_rules: list[JWTRule] = Field(default_factory=list)

    @property
    def match_labels(self) -> dict[str, str]:
        """The selector's labels; empty means the policy is namespace- or mesh-wide."""
        return self.selector.match_labels if self.selector else {}

    @field_validator("target_ref", "target_refs")
    @classmethod
    def _no_target_refs(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "attaching to a Gateway or Service (waypoint) is not supported: Lattice applies "
                "RequestAuthentication at sidecars chosen by `selector`"
            )
        return v
