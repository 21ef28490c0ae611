"""Wake asyncio waiters when this process writes, whatever thread or loop does the writing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator


class ChangeSignal:
    """One asyncio.Event per waiter, remembered with the loop it belongs to.

    asyncio.Event is not thread-safe and belongs to one loop, so a writer sets it directly only
    when it runs on that loop; otherwise it asks the loop to set it. A writer with no running
    loop at all (a sync script, a worker thread) takes the second path too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._waiters[event] = loop
        try:
            yield event
        finally:
            with self._lock:
                self._waiters.pop(event, None)

    @property
    def listening(self) -> int:
        """How many waiters are listening now (tests wait for theirs to start instead of sleeping)."""
        with self._lock:
            return len(self._waiters)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters.items())
        current = _running_loop()
        for event, loop in waiters:
            if loop is current:
                event.set()
                continue
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting
                loop.call_soon_threadsafe(event.set)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def wait_until(signal: ChangeSignal, moved: Callable[[], bool], timeout: float | None) -> None:
    """Return once `moved()` (checked whenever `signal` fires, and at least every second) or when
    `timeout` seconds have passed, whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    with signal.listen() as woken:
        while not moved():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await wait_set(woken, 1.0 if remaining is None else min(1.0, remaining))
            woken.clear()


async def wait_set(event: asyncio.Event, timeout: float) -> None:
    """Return when the event is set or the timeout passes, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
