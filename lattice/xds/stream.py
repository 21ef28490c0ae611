"""What both xDS stream kinds share: waiting on requests and snapshot changes, in one loop."""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator

from lattice.translate import TYPE_ORDER
from lattice.xds.cache import ProxySnapshot, SnapshotCache
from lattice.xds.status import StatusBoard

_nonces = itertools.count(1)


def next_nonce() -> str:
    return str(next(_nonces))


def type_rank(type_url: str) -> int:
    return TYPE_ORDER.index(type_url) if type_url in TYPE_ORDER else len(TYPE_ORDER)


class Stream:
    """Subclasses implement `handle(request)` and `responses(snapshot)` for their protocol."""

    def __init__(self, node_id: str, cache: SnapshotCache, board: StatusBoard) -> None:
        self.node_id = node_id
        self.cache = cache
        self.board = board

    async def run(self, first, inbox: asyncio.Queue) -> AsyncIterator:
        changed = self.cache.watch(self.node_id)
        try:
            async for response in self._loop(first, inbox, changed):
                yield response
        finally:
            self.cache.unwatch(self.node_id, changed)

    async def _loop(self, first, inbox: asyncio.Queue, changed: asyncio.Event) -> AsyncIterator:
        self.handle(first)
        while True:
            snapshot = self.cache.get(self.node_id)
            if snapshot is not None:
                for response in self.responses(snapshot):
                    yield response
            request = await _next(inbox, changed)
            if request is _CLOSED:
                return
            if request is not None:
                self.handle(request)
                while not inbox.empty():  # drain, so a burst of ACKs costs one pass
                    queued = inbox.get_nowait()
                    if queued is None:
                        return
                    self.handle(queued)

    def record_answer(self, type_url: str, request, sent_version: str, acked_version: str) -> None:
        """An ACK or NACK of the newest response of a type, into the status board."""
        if request.HasField("error_detail"):
            self.board.nacked(self.node_id, type_url, sent_version, request.error_detail.message)
        else:
            self.board.acked(self.node_id, type_url, acked_version)

    def handle(self, request) -> None:
        raise NotImplementedError

    def responses(self, snapshot: ProxySnapshot) -> list:
        raise NotImplementedError


_CLOSED = object()


async def _next(inbox: asyncio.Queue, changed: asyncio.Event):
    """The next request, or None when the snapshot changed first; _CLOSED at end of stream."""
    if not inbox.empty():
        item = inbox.get_nowait()
        return _CLOSED if item is None else item
    get = asyncio.ensure_future(inbox.get())
    wait = asyncio.ensure_future(changed.wait())
    try:
        done, _ = await asyncio.wait({get, wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (get, wait):
            if not task.done():
                task.cancel()
    if wait in done:
        changed.clear()
    if get in done:
        item = get.result()
        return _CLOSED if item is None else item
    return None
