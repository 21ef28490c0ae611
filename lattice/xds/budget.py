"""How many bytes of responses may be out with proxies, unanswered, over all streams at once.

A change that reaches a thousand proxies at once (every proxy's endpoints, a few hundred KB each)
would otherwise have every response built, serialized and buffered in gRPC together: hundreds of
MB held at once, for no gain, since the proxies cannot take them faster than they process them.
A response takes its bytes from the budget before it is built and gives them back when the proxy
answers it (ACK or NACK), when a newer response of its type replaces it, when its stream ends,
or after ANSWER_SECONDS, so that a proxy slow to answer never holds up the others for long.

Streams that find the budget spent wait their turn, first come first served, and only while
they have nothing out themselves: one that does (clusters sent, and Envoy asking for their
endpoints before it ACKs them) sends at once, or streams could wait on each other.
"""

from __future__ import annotations

import asyncio
from collections import deque

DEFAULT_BYTES = 32 << 20
ANSWER_SECONDS = 5.0


class SendBudget:
    def __init__(self, limit: int = DEFAULT_BYTES) -> None:
        self.limit = limit
        self.free = limit
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    async def take(self, size: int) -> int:
        """Wait until `size` bytes are free (at most the whole budget: a response larger than the
        budget goes out alone); returns what was taken, to give back."""
        size = min(size, self.limit)
        if not self._waiting and self.free >= size:
            self.free -= size
            return size
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted just as it was cancelled
                self.give(size)
            else:
                if (size, waiter) in self._waiting:
                    self._waiting.remove((size, waiter))
                self._grant()  # it may have been holding up those behind it
            raise
        return size

    def take_now(self, size: int) -> int:
        """`size` bytes without waiting, even past the limit (for a stream that already has
        responses out: it must not wait on streams that may be waiting on it)."""
        self.free -= size
        return size

    def give(self, size: int) -> None:
        self.free += size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.free:
            size, waiter = self._waiting.popleft()
            if not waiter.done():
                self.free -= size
                waiter.set_result(None)
