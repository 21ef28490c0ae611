"""Several control-plane replicas on one etcd store: who is up, and duties that run on one of them.

- `Replica` names this process, records its addresses and how many proxies it holds under
  `replicas/<id>` on a lease of its own (gone within `REPLICA_TTL` of its death), and follows the
  workloads other replicas register (Registry.sync on every change the store's watch reports).
  A replica that stops cleanly revokes that lease, so it leaves every replica's list at once.
- `run_once` runs a duty (expiry sweeps, refreshes, rotations: anything two replicas must not do
  at once) on one replica at a time under an etcd election: the holder's key lives on its lease,
  the holder renews it every third of its TTL and stops the duty the moment it cannot; the others
  campaign again every half TTL, so the duty moves within about one TTL when its holder dies.
  On the SQLite store (one process) the duty simply runs. A replica that stops cleanly resigns
  (revokes the duty's lease), so another takes the duty within half a TTL, not a whole one.

Every blocking store call runs in a worker thread: the loop keeps serving xDS meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lattice.registry import Registry
from lattice.store import SharedStore, StoreBackend, StoreError, is_shared

log = logging.getLogger("lattice.replicas")
REPLICA_TTL = 10.0
DUTY_TTL = 6.0
RELEASE_TIMEOUT = 1.0


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Replica:
    def __init__(
        self,
        store: StoreBackend,
        registry: Registry,
        proxies: Callable[[], int],
        extra: Callable[[], dict] = dict,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self._extra = extra
        self.registry = registry
        self.id = replica or replica_id()
        self._proxies = proxies
        self._lease = 0
        self.addresses: dict[str, str] = {}
        self.started = time.time()

    def record(self) -> dict:
        return {
            "id": self.id,
            **self.addresses,
            "proxies": self._proxies(),
            "started_at": self.started,
            **self._extra(),
        }

    async def announce(self) -> None:
        """Keep `replicas/<id>` current: re-put on change, renew the lease, start over if it lapsed."""
        store = self.store
        if not is_shared(store):
            return  # a SQLite store has one replica: nobody to announce it to
        last = None
        try:
            while True:
                try:
                    if not self._lease or not await asyncio.to_thread(store.keep_alive, self._lease):
                        self._lease, last = await asyncio.to_thread(store.grant, REPLICA_TTL), None
                    record = self.record()
                    if record != last:
                        await asyncio.to_thread(store.put_replica, self.id, record, self._lease)
                        last = record
                except StoreError as e:
                    log.warning("cannot record this replica in the store: %s", e)
                await asyncio.sleep(REPLICA_TTL / 4)
        finally:
            _release(store, self._lease)

    async def follow_workloads(self) -> None:
        store = self.store
        if not is_shared(store):
            return  # a SQLite store's workloads are all this process's own
        generation = store.workload_generation
        self.registry.sync()
        while True:
            generation = await store.wait_for_workload_change(generation)
            self.registry.sync()

    def others(self) -> list[dict]:
        """Every replica the store knows, this one first; the REST status shows them."""
        known = self.store.replicas() if is_shared(self.store) else {}
        known[self.id] = self.record()
        return [known[self.id], *(known[k] for k in sorted(known) if k != self.id)]


async def run_once(
    store: StoreBackend, duty: str, holder: str, work: Callable[[], Coroutine[Any, Any, None]], ttl: float = DUTY_TTL
) -> None:
    """Run `work()` (a coroutine that runs until cancelled) only while this replica holds `duty`."""
    if not is_shared(store):
        await work()
        return
    while True:
        lease = 0
        try:
            lease = await asyncio.to_thread(store.grant, ttl)
            if await asyncio.to_thread(store.campaign, duty, holder, lease) == holder:
                log.info("this replica now runs %s", duty)
                await _hold(store, duty, lease, work, ttl)
                log.warning("this replica no longer runs %s", duty)
        except StoreError as e:
            log.warning("election for %s: %s", duty, e)
        except asyncio.CancelledError:  # stopping: hand the duty over now rather than after a TTL
            _release(store, lease)
            raise
        if lease:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(store.revoke, lease)
        await asyncio.sleep(ttl / 2)


def _release(store: SharedStore, lease: int) -> None:
    """Revoke a lease while stopping (blocking, briefly: the loop is shutting down anyway); if the
    store cannot be reached, the lease expires on its own."""
    if lease:
        with contextlib.suppress(StoreError):
            store.revoke(lease, timeout=RELEASE_TIMEOUT)


async def _hold(
    store: SharedStore, duty: str, lease: int, work: Callable[[], Coroutine[Any, Any, None]], ttl: float
) -> None:
    """Run the duty while the lease can be renewed; cancel it as soon as it cannot."""
    task = asyncio.create_task(work(), name=f"duty-{duty}")
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=ttl / 3)
            try:
                alive = await asyncio.to_thread(store.keep_alive, lease)
            except StoreError:
                alive = False
            if not alive:
                return
        task.result()  # a duty that ends by itself (or fails) shows why
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
