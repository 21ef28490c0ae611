"""The protobuf wire format of a delta response, written directly from already-serialized parts.

A change reaches every proxy holding the same resources with the same response but for its
nonce. Building a `DeltaDiscoveryResponse` per proxy copies each resource's bytes into a new
message and serializes it again; here the part they share is encoded once, and each stream adds
only its nonce. Protobuf's wire format is a sequence of fields in any order, each a key (field
number and wire type) and, for strings and messages, a length and the bytes, so a response is
the concatenation of its fields, and a parser reads it as the message built field by field.
"""

from __future__ import annotations

from typing import Iterable

from lattice.xds.cache import XdsResource

# DeltaDiscoveryResponse's fields (envoy/service/discovery/v3/discovery.proto)
_SYSTEM_VERSION_INFO, _RESOURCES, _TYPE_URL, _NONCE, _REMOVED_RESOURCES = 1, 2, 4, 5, 6
# Resource's, and google.protobuf.Any's
_RESOURCE_VERSION, _RESOURCE_BODY, _RESOURCE_NAME = 1, 2, 3
_ANY_TYPE_URL, _ANY_VALUE = 1, 2
_LENGTH_DELIMITED = 2


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(data)) + data


def shared_part(version: str, type_url: str, changed: Iterable[XdsResource], removed: Iterable[str]) -> bytes:
    """Everything of a delta response but its nonce."""
    parts = [field(_SYSTEM_VERSION_INFO, version.encode()), field(_TYPE_URL, type_url.encode())]
    for r in changed:
        body = field(_ANY_TYPE_URL, r.body.type_url.encode()) + field(_ANY_VALUE, r.body.value)
        parts.append(
            field(
                _RESOURCES,
                field(_RESOURCE_NAME, r.name.encode())
                + field(_RESOURCE_VERSION, r.version.encode())
                + field(_RESOURCE_BODY, body),
            )
        )
    parts.extend(field(_REMOVED_RESOURCES, name.encode()) for name in removed)
    return b"".join(parts)


def with_nonce(shared: bytes, nonce: str) -> bytes:
    """A whole delta response: its shared part and this stream's nonce."""
    return shared + field(_NONCE, nonce.encode())
