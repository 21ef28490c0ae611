"""Python's full garbage collections moved to the control plane's quiet moments.

With a thousand proxies connected the server holds millions of objects, and a full (oldest
generation) collection walks them all: 200-340 ms measured at 1,000 proxies, in which the loop
serves nothing. Python starts one whenever enough objects survived younger collections, and a push
to a thousand proxies is just when they do, so a change that met one waited for it (bench/scale.py).

`GcPacer` keeps what Python collects but chooses when the whole heap is walked. A few times a
second it freezes what exists (`gc.freeze()`, which only moves objects aside), so the collections
Python still starts on its own walk only what was made in the last fraction of a second. Once the
process has been quiet for a while (under a tenth of a core over `quiet` seconds of its own CPU
time) after being busy, it unfreezes everything and makes a full collection: garbage among the
frozen (a cycle that died after it was frozen) is collected then. A server that is never quiet
gets one too, by the measure of Python's own rule for its oldest generation: once its heap (the
objects' memory blocks, `sys.getallocatedblocks()`, which costs under a millisecond where counting
the frozen walks them all) grew by a quarter (`growth`) since the last full collection; and,
whatever else, at least every `longest` seconds. Not on a fixed short period: a full collection
holds the loop for a third of a second at a thousand proxies, and a change that meets one waits
for it. Objects without cycles are freed as always, the moment their last reference goes (frozen
or not: freezing only moves them aside); only cyclic garbage waits, at most until the next full
collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Callable

log = logging.getLogger("lattice.gc")


class GcPacer:
    def __init__(
        self,
        quiet: float = 0.5,
        shortest: float = 10.0,
        longest: float = 600.0,
        growth: float = 0.25,
        cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet = quiet  # seconds of (nearly) idle CPU before a full collection
        self.shortest = shortest  # at most one quiet-time collection per this many seconds
        self.longest = longest  # and one at least this often, quiet or not
        self.growth = growth  # or once the heap has grown by this part since the last one
        self._blocks: int | None = None  # the heap's memory blocks right after the last full collection
        self._cpu = cpu
        self._clock = clock
        self._busy = False  # busy since the last full collection
        self._collected_at = clock()
        self._window: tuple[float, float] = (clock(), cpu())  # (wall, cpu) at the start of the window
        self.collections = 0  # full collections made here
        self.last_seconds = 0.0  # how long the last one held the loop

    def step(self) -> bool:
        """Freeze what exists; look at the CPU used since the last step, and make a full collection
        if the time has come. True when it did."""
        gc.freeze()
        now, cpu = self._clock(), self._cpu()
        since, used = now - self._window[0], cpu - self._window[1]
        if since < self.quiet:
            return False
        self._window = (now, cpu)
        idle = used < since / 10
        if not idle:
            self._busy = True
        due = now - self._collected_at
        if (due >= self.shortest and ((idle and self._busy) or self._grown())) or due >= self.longest:
            self.collect()
            return True
        return False

    def collect(self) -> None:
        """A full collection of everything, the frozen too; what survives is frozen until the next."""
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._blocks = sys.getallocatedblocks()
        self.last_seconds = time.perf_counter() - started
        self.collections += 1
        self._busy = False
        self._collected_at = self._clock()
        self._window = (self._collected_at, self._cpu())  # its own CPU is not the server's work
        log.debug("full garbage collection in %.0f ms", self.last_seconds * 1000)

    def _grown(self) -> bool:
        return self._blocks is not None and sys.getallocatedblocks() - self._blocks > self.growth * self._blocks

    async def run(self) -> None:
        self.collect()  # what start-up made (modules, the first push) is frozen from here on
        try:
            while True:
                await asyncio.sleep(self.quiet / 2)
                self.step()
        finally:
            gc.unfreeze()  # (a server stopped in-process leaves the interpreter as it found it)
