"""What the control plane fetches from elsewhere and keeps fresh for its snapshots (JWKS keys,
Wasm modules): fetched before the first push that needs it, again when the resources naming it
change, and every `refresh` seconds (sooner while something fails); a change asks for a push.

A subclass says what it fetches: `refresh()` (everything in use; True if anything changed),
`refresh_changed()` (what resources that changed since the last fetch need), `_fingerprint()`
(the naming resources' revisions), `errors` (the last failure per item), and `what` for the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("lattice.refreshing")
RETRY_FAILED_SECONDS = 10.0


class Refreshing:
    what = "fetching"

    def __init__(self, on_change: Callable[[], None], refresh: float) -> None:
        self._on_change = on_change
        self._refresh = refresh
        self._seen: tuple | None = None  # the naming resources' fingerprint at the last fetch
        self.errors: dict = {}

    async def refresh(self) -> bool:
        raise NotImplementedError

    async def refresh_changed(self) -> bool:
        return await self.refresh()

    def _fingerprint(self) -> tuple:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Fetch now if the naming resources changed since the last fetch (called before a push)."""
        await self._refresh_safely(only_if_changed=True)

    async def run(self) -> None:
        """Refresh every `refresh` seconds (sooner while something is failing); ask for a push on change."""
        while True:
            await asyncio.sleep(min(self._refresh, RETRY_FAILED_SECONDS) if self.errors else self._refresh)
            if await self._refresh_safely():
                self._on_change()

    async def _refresh_safely(self, only_if_changed: bool = False) -> bool:
        # Never raises: a bug here must neither stop pushes nor take the server's task group down.
        try:
            if only_if_changed:
                if self._fingerprint() == self._seen:
                    return False
                return await self.refresh_changed()
            return await self.refresh()
        except Exception:
            log.exception("%s failed; proxies keep what they hold", self.what)
            return False
