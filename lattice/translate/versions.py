"""The version of a set of xDS resources, as the control plane sends it and the agent's relay
rebuilds it: one formula for both, so the version Envoy reports is the one `lattice status`
shows as sent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def set_version(named: Iterable[tuple[str, str]]) -> str:
    """Of (resource name, resource version) pairs, in the order sent; "empty" for none."""
    h, empty = hashlib.blake2b(digest_size=8), True
    for name, version in named:
        h.update(f"{name}={version};".encode())
        empty = False
    return "empty" if empty else h.hexdigest()
