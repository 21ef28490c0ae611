"""The agent's process hands freed memory back to the system (glibc's malloc; nothing off it).

glibc raises its mmap threshold each time a large mapped block is freed, after which such blocks
(Envoy's stats read every second, a scrape, a config dump) come from its heap, and what they free
stays there: about 1 MB more per sidecar with ten peers (bench/footprint.py). `steady()` fixes the
thresholds at glibc's own initial 128 KiB, first thing in the agent's process; `trim_forever()`
returns, now and then, the free pages left inside the heap (malloc_trim), a few hundred KB more.
Set for this process only, never in the environment that Envoy and the app inherit.
"""

from __future__ import annotations

import asyncio
import ctypes

TRIM_SECONDS = 30.0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 128 * 1024


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both are glibc's, or neither is used
    except (OSError, AttributeError):
        return None
    return libc


def steady() -> None:
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
        libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)


async def trim_forever() -> None:
    libc = _libc()
    if libc is None:
        return
    while True:
        await asyncio.sleep(TRIM_SECONDS)
        libc.malloc_trim(0)
