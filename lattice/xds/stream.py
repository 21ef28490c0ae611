"""What both xDS stream kinds share: waiting on requests and snapshot changes, in one loop."""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator, Callable, NamedTuple

from lattice.translate import TYPE_ORDER
from lattice.xds.budget import ANSWER_SECONDS, SendBudget
from lattice.xds.cache import ProxySnapshot, SnapshotCache
from lattice.xds.status import StatusBoard

_nonces = itertools.count(1)


def next_nonce() -> str:
    return str(next(_nonces))


def type_rank(type_url: str) -> int:
    return TYPE_ORDER.index(type_url) if type_url in TYPE_ORDER else len(TYPE_ORDER)


class Outgoing(NamedTuple):
    """A response decided (nonce, version, status board) but not built yet: it is built once the
    send budget has room for the bytes of resources it carries."""

    type_url: str
    size: int
    build: Callable[[], object]


class Stream:
    """Subclasses implement `handle(request)` and `responses(snapshot)` (a list of `Outgoing`)
    for their protocol, and call `record_answer` for an ACK or NACK of a type's newest response."""

    def __init__(
        self, node_id: str, cache: SnapshotCache, board: StatusBoard, budget: SendBudget | None = None
    ) -> None:
        self.node_id = node_id
        self.cache = cache
        self.board = board
        self.budget = budget or SendBudget()
        # type -> (budget its unanswered response holds, when it gives it back unanswered: loop time)
        self._out: dict[str, tuple[int, float]] = {}
        self._expiry: asyncio.TimerHandle | None = None  # one timer for the earliest of those times
        self._inbox: asyncio.Queue | None = None  # once `run` has taken the first request

    def receive(self, request) -> bool:
        """A request as it arrives (the reader calls this). When the stream runs and nothing waits in
        its inbox ahead of the request, it is taken in at once (True), and the stream's task is woken
        only if there is something to send: a plain ACK costs no switch to that task. Otherwise
        (False) it is for the inbox, to wait its turn."""
        inbox = self._inbox
        if inbox is None or not inbox.empty():
            return False
        try:
            due = self.handle(request) is not False
        except Exception as e:  # raised in the stream's task, as if it had taken the request itself
            inbox.put_nowait(_Raised(e))
            return True
        if due:
            inbox.put_nowait(_DUE)
        return True

    async def run(self, first, inbox: asyncio.Queue) -> AsyncIterator:
        """Responses to `first` and to what arrives in `inbox` (requests; None at the end of the
        stream). A change of the node's snapshot is put in the same queue, so one wait serves both."""
        woken = [False]

        def wake() -> None:
            if not woken[0]:  # one mark in the queue is enough, however many changes come meanwhile
                woken[0] = True
                inbox.put_nowait(_CHANGED)

        self.cache.watch(self.node_id, wake)
        try:
            self.handle(first)
            self._inbox, due = inbox, True
            while True:
                snapshot = self.cache.get(self.node_id) if due else None
                if snapshot is not None:
                    outgoing = self.responses(snapshot)
                    if outgoing:
                        await self._take(outgoing)
                    for response in outgoing:
                        yield response.build()  # (held by nothing here once gRPC has it)
                    self.board.seen(self.node_id, snapshot.label)
                item = await inbox.get()
                due = False
                while True:  # drain, so a burst of ACKs (and changes) costs one pass
                    if item is None:
                        return
                    if item is _CHANGED:
                        woken[0], due = False, True
                    elif item is _DUE:
                        due = True
                    elif isinstance(item, _Raised):
                        raise item.error
                    elif self.handle(item) is not False:
                        due = True
                    if inbox.empty():
                        break
                    item = inbox.get_nowait()
        finally:
            self._inbox = None
            self.cache.unwatch(self.node_id, wake)
            if self._expiry is not None:
                self._expiry.cancel()
            for type_url in list(self._out):
                self._answered(type_url)

    async def _take(self, outgoing: list[Outgoing]) -> None:
        """Budget for these responses, each holding its share until answered."""
        for response in outgoing:
            self._answered(response.type_url)  # a newer response replaces an unanswered one
        total = sum(r.size for r in outgoing)
        left = self.budget.take_now(total) if self._out else await self.budget.take(total)
        loop = asyncio.get_running_loop()
        until = loop.time() + ANSWER_SECONDS
        for response in outgoing:
            share = min(response.size, left)
            left -= share
            self._out[response.type_url] = (share, until)
        if left:
            self.budget.give(left)
        if self._expiry is None:  # (not a timer per response: most are answered long before)
            self._expiry = loop.call_at(until, self._expire)

    def _expire(self) -> None:
        """Budget held past its time is given back; the timer is set again for what is left."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for type_url, (_, until) in list(self._out.items()):
            if until <= now:
                self._answered(type_url)
        if self._out:
            self._expiry = loop.call_at(min(u for _, u in self._out.values()), self._expire)

    def _answered(self, type_url: str) -> None:
        held = self._out.pop(type_url, None)
        if held is not None:
            self.budget.give(held[0])

    def record_answer(self, type_url: str, request, sent_version: str, acked_version: str) -> None:
        """An ACK or NACK of the newest response of a type, into the status board; the budget
        its bytes held is free again."""
        self._answered(type_url)
        if request.HasField("error_detail"):
            self.board.nacked(self.node_id, type_url, sent_version, request.error_detail.message)
        else:
            self.board.acked(self.node_id, type_url, acked_version)

    def handle(self, request) -> bool | None:
        """Take a request in; False when it cannot change what is to be sent (a plain ACK or
        NACK, in a protocol that knows it), so no pass over the types follows it."""
        raise NotImplementedError

    def responses(self, snapshot: ProxySnapshot) -> list[Outgoing]:
        raise NotImplementedError


_CHANGED = object()  # in a stream's queue: the node's snapshot changed
_DUE = object()  # a request taken in on arrival asks for responses


class _Raised(NamedTuple):
    error: Exception  # taking in a request on arrival raised this
