"""Documents as both backends store them: canonical JSON, bounded, and apply items checked."""

from __future__ import annotations

import json
from typing import NamedTuple

from lattice.store.model import StoreError

MAX_DOCUMENT_BYTES = 1024 * 1024

Item = tuple[str, str, str, str, dict, dict]
Key = tuple[str, str, str]


class Encoded(NamedTuple):
    """An apply item with metadata and spec as canonical JSON, ready to compare and store."""

    kind: str
    namespace: str
    name: str
    api_version: str
    metadata: str
    spec: str


def canonical(document: object, label: str) -> str:
    """Sorted, compact JSON, so equal documents compare equal as text."""
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{label} is not JSON-serializable: {exc}") from exc
    size = len(text.encode())
    if size > MAX_DOCUMENT_BYTES:
        raise StoreError(f"{label} is {size} bytes serialized; the limit is {MAX_DOCUMENT_BYTES}")
    return text


def expires_at(token_id: str, record: dict) -> float:
    expires_at = record.get("expires_at") if isinstance(record, dict) else None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise StoreError(f"token {token_id!r} record needs a numeric expires_at, got {expires_at!r:.80}")
    return float(expires_at)


def grant_expiry(record: dict) -> float:
    """When a grant stops mattering: when its newest certificate expires (or a day after it was
    made, before any is signed)."""
    ends = [float(s["not_after"]) for s in record.get("serials", [])]
    return max(ends, default=float(record.get("granted_at", 0)) + 86400)


def encode_item(item: Item) -> Encoded:
    if len(item) != 6:
        shape = "(kind, namespace, name, api_version, metadata, spec)"
        raise StoreError(f"apply item must be {shape}, got {item!r:.200}")
    kind, namespace, name, api_version, metadata, spec = item
    label = f"{kind} {namespace}/{name}"
    return Encoded(
        kind,
        namespace,
        name,
        api_version,
        canonical(metadata, f"{label} metadata"),
        canonical(spec, f"{label} spec"),
    )
