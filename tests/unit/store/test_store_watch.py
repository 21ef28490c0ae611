"""Store.wait_for_change: immediate, timeout, woken by local writes, other threads and processes."""

from __future__ import annotations

import asyncio
import pathlib
import time

import pytest

from lattice.store import Store, sqlite

ITEM = ("VirtualService", "default", "reviews", "networking.istio.io/v1", {}, {"hosts": ["r"]})


async def _listening(store: Store, waiters: int = 1) -> None:
    """Until `waiters` tasks wait on the store (a condition, not a guess at how long they take)."""
    async with asyncio.timeout(5):
        while store._signal.listening < waiters:  # noqa: ASYNC110 (a count, not an event)
            await asyncio.sleep(0)


@pytest.fixture
def store(tmp_path: pathlib.Path):
    with Store(tmp_path / "lattice.db") as opened:
        yield opened


async def test_returns_immediately_when_already_newer(store: Store) -> None:
    store.apply([ITEM])
    started = time.monotonic()
    assert await store.wait_for_change(0) == 1
    assert time.monotonic() - started < 0.1


async def test_timeout_returns_current_revision(store: Store) -> None:
    store.apply([ITEM])
    started = time.monotonic()
    assert await store.wait_for_change(1, timeout=0.3) == 1
    assert 0.25 <= time.monotonic() - started < 1.0


async def test_zero_timeout_does_not_wait(store: Store) -> None:
    assert await store.wait_for_change(0, timeout=0) == 0


async def test_woken_by_apply_on_the_loop_thread(store: Store, monkeypatch) -> None:
    # With the data_version poll out of the way (an hour), only the local signal can wake it.
    monkeypatch.setattr(sqlite, "POLL_INTERVAL", 3600.0)
    waiter = asyncio.create_task(store.wait_for_change(0, timeout=3600), name="waiter")
    await _listening(store)
    store.apply([ITEM])
    assert await asyncio.wait_for(waiter, 30) == 1


async def test_woken_by_delete(store: Store) -> None:
    store.apply([ITEM])
    waiter = asyncio.create_task(store.wait_for_change(1, timeout=5), name="waiter")
    await _listening(store)
    store.delete([ITEM[:3]])
    assert await waiter == 2


async def test_unchanged_apply_and_workloads_do_not_wake(store: Store) -> None:
    """A wake is the signal every waiter of this store waits on; listening to it directly sees a
    spurious one, which a waiter would swallow (it checks the revision and waits again)."""
    store.apply([ITEM])
    with store._signal.listen() as woken:
        store.apply([ITEM])
        store.put_workload("w1", {"address": "10.0.0.1"})
        assert not woken.is_set(), "an unchanged apply or a workload write woke the store's waiters"
        store.apply([(*ITEM[:5], {"hosts": ["changed"]})])
        assert woken.is_set()  # (and a real change does: the check above can fail)


async def test_woken_by_apply_from_a_thread_without_a_loop(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for_change(0, timeout=5), name="waiter")
    await _listening(store)
    await asyncio.to_thread(store.apply, [ITEM])
    assert await asyncio.wait_for(waiter, 1) == 1


async def test_many_waiters_all_wake(store: Store) -> None:
    waiters = [asyncio.create_task(store.wait_for_change(0, timeout=5), name=f"waiter-{i}") for i in range(5)]
    await _listening(store, 5)
    store.apply([ITEM])
    assert await asyncio.gather(*waiters) == [1] * 5


async def test_write_by_another_store_on_the_same_file_wakes_waiter(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    with Store(path) as watcher, Store(path) as writer:
        waiter = asyncio.create_task(watcher.wait_for_change(0, timeout=5), name="waiter")
        await _listening(watcher)
        started = time.monotonic()
        writer.apply([ITEM])
        assert await waiter == 1
        assert time.monotonic() - started < 1.0


def test_apply_without_any_running_loop(store: Store) -> None:
    [result] = store.apply([ITEM])
    assert result.action == "created"
    assert asyncio.run(store.wait_for_change(0, timeout=1)) == 1
