"""Durations as Istio YAML writes them ("7s", "0.5s", "100ms", "1m30s")."""

from __future__ import annotations

import re

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; accepts protobuf's "1.5s" and Go's "1m30s". Raises ValueError otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a duration string such as '1s', '250ms' or '1m30s'")
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration; write it like '1s', '250ms' or '1m30s'")
    return total
