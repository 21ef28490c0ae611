"""The part of Istio's CEL that a Telemetry tag override's `value` may use, parsed and evaluated.

Istio evaluates tag overrides with a full CEL interpreter inside Envoy. Lattice's sidecar agent
computes metric labels itself, so it supports the expressions people actually write for labels,
and `lattice apply` refuses any other, naming it:

- a string literal: `'canary'` or `"canary"` (backslash escapes the quote and itself);
- a request header: `request.headers['x-user']` (names compare case-insensitively);
- an attribute: see `ATTRIBUTES`;
- any of these inside `string(...)`, as Istio's examples write `string(destination.port)` (every
  value is a label, so a string already).

`parse` runs at apply time (lattice.api.telemetry) and again where the rules are used;
`evaluate` runs per request against a record of it. A value the request does not carry
(a missing or empty header, no peer principal) evaluates to "unknown", Istio's value for a label
it cannot fill. This module lives in `api` because the API layer validates with it and the agent evaluates
with it; the layers above import it from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

UNKNOWN = "unknown"

# Each attribute and the request record key it reads.
ATTRIBUTES = {
    "request.method": "method",
    "request.path": "path",  # with the query string
    "request.url_path": "path",  # without it
    "request.host": "host",
    "request.scheme": "scheme",
    "request.protocol": "protocol",
    "response.code": "response_code",
    "source.principal": "source_principal",
    "destination.principal": "destination_principal",
    "upstream.address": "upstream_address",
    "source.address": "source_address",
    "destination.port": "destination_port",
}

_LITERAL = r"""'(?:[^'\\]|\\['\\])*'|"(?:[^"\\]|\\["\\])*\""""
_HEADER = re.compile(rf"request\.headers\s*\[\s*({_LITERAL})\s*\]")
_STRING = re.compile(r"string\s*\((.*)\)", re.DOTALL)
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class Expr:
    """A parsed expression: `kind` is "literal" (value: the string), "header" (value: the lower-case
    header name) or "attribute" (value: a key of `ATTRIBUTES`)."""

    kind: str
    value: str


def parse(expr: str) -> Expr:
    """`expr` as an Expr; ValueError naming it and saying what is supported otherwise."""
    parsed = _parse(expr.strip() if isinstance(expr, str) else "")
    if parsed is None:
        raise ValueError(f"unsupported expression {expr!r}: Lattice evaluates {supported()}")
    if parsed.kind == "header" and not _TOKEN.match(parsed.value):
        raise ValueError(f"expression {expr!r}: {parsed.value!r} is not a header name")
    return parsed


def _parse(text: str) -> Expr | None:
    conversion = _STRING.fullmatch(text)
    if conversion:
        return _parse(conversion.group(1).strip())
    if re.fullmatch(_LITERAL, text):
        return Expr("literal", _unquote(text))
    header = _HEADER.fullmatch(text)
    if header:
        return Expr("header", _unquote(header.group(1)).lower())
    return Expr("attribute", text) if text in ATTRIBUTES else None


def supported() -> str:
    """The supported forms, for error messages and documentation."""
    return (
        "a string literal ('x'), request.headers['<name>'] or one of "
        + ", ".join(ATTRIBUTES)
        + ", optionally inside string(...)"
    )


def evaluate(expr: Expr, record: Mapping[str, object]) -> str:
    """The label value `expr` gives for one request. `record` holds the keys `ATTRIBUTES` names
    and "headers", a mapping of lower-case request header names to values."""
    if expr.kind == "literal":
        return expr.value
    if expr.kind == "header":
        headers = record.get("headers")
        value = headers.get(expr.value) if isinstance(headers, Mapping) else None
    else:
        value = record.get(ATTRIBUTES[expr.value])
        if expr.value == "request.url_path" and isinstance(value, str):
            value = value.partition("?")[0]
    return UNKNOWN if value is None or value == "" else str(value)


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])
