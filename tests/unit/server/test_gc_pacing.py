"""The control plane's garbage-collection pacing (server/gc_pacing.py): the whole heap is walked
when the process turns quiet after work, when the heap grew by a quarter, or at the latest every
`longest` seconds; what exists is frozen between, and cyclic garbage among the frozen is still
collected at the next full pass.
Real `gc`; the clock and CPU time are the test's, so when a collection is due is decided here."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from lattice.server.gc_pacing import GcPacer


class Times:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def advance(self, seconds: float, busy: float) -> None:
        """`seconds` pass, `busy` of a core used in them."""
        self.wall += seconds
        self.cpu += seconds * busy


@pytest.fixture
def paced():
    times = Times()
    pacer = GcPacer(quiet=0.5, shortest=10.0, longest=60.0, cpu=lambda: times.cpu, clock=lambda: times.wall)
    try:
        yield pacer, times
    finally:
        gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_a_full_collection_follows_work_once_the_process_is_quiet(paced) -> None:
    pacer, times = paced
    times.advance(0.5, busy=0.0)
    assert not pacer.step()  # quiet, but nothing was done since the last collection
    for _ in range(30):  # 15 s of a push after another: never while busy
        times.advance(0.5, busy=0.8)
        assert not pacer.step()
    times.advance(0.5, busy=0.05)
    assert pacer.step() and pacer.collections == 1
    times.advance(0.5, busy=0.8)
    pacer.step()
    times.advance(0.5, busy=0.0)
    assert not pacer.step()  # quiet after work again, but the last full pass was 1 s ago
    times.advance(9.5, busy=0.0)
    assert pacer.step() and pacer.collections == 2


def test_a_never_quiet_process_still_gets_a_full_collection_every_longest_seconds(paced) -> None:
    pacer, times = paced
    done = []
    for _ in range(250):  # 125 s busy
        times.advance(0.5, busy=0.9)
        done.append(pacer.step())
    assert done.count(True) == 2 and pacer.collections == 2


def test_a_never_quiet_process_whose_heap_grows_by_a_quarter_gets_a_full_collection_before_longest(paced) -> None:
    pacer, times = paced
    pacer.collect()
    kept = []
    done = []
    for _ in range(40):  # 20 s busy, the heap steady: nothing (shortest is 10 s, longest 60 s)
        times.advance(0.5, busy=0.9)
        done.append(pacer.step())
    assert done.count(True) == 0
    kept.extend([] for _ in range(sys.getallocatedblocks() // 3))  # a third more objects, kept
    times.advance(0.5, busy=0.9)
    assert pacer.step() and pacer.collections == 2
    times.advance(0.5, busy=0.9)
    assert not pacer.step()  # the survivors now count them: no growth since


def test_cyclic_garbage_frozen_between_collections_is_freed_by_the_next_full_one(paced) -> None:
    pacer, times = paced
    node = _Node()
    gone = weakref.ref(node)
    pacer.step()  # frozen while alive
    del node
    gc.collect()
    assert gone() is not None  # frozen: Python's own collections pass it by
    pacer.collect()
    assert gone() is None
