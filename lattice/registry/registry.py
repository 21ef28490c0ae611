"""The workload registry."""

from __future__ import annotations

import time
from typing import Callable

from lattice.api.registration import Registration
from lattice.mesh import Workload
from lattice.store import StoreBackend


class Registry:
    def __init__(
        self,
        store: StoreBackend,
        heartbeat_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
        grace: float | None = None,
    ) -> None:
        self._store = store
        self._timeout = heartbeat_timeout
        # Silence is not death: a host cut off from the control plane may still serve its peers, so
        # a silent workload keeps its endpoints for `grace` (default: the heartbeat timeout).
        self._grace = heartbeat_timeout if grace is None else max(grace, heartbeat_timeout)
        self._clock = clock
        self._on_change = on_change
        self._workloads: dict[str, Workload] = {}
        self._last_seen: dict[str, float] = {}
        # Services whose last workload left, and when: their names stay the mesh's for the grace
        # (a sidecar answers 503 "no healthy upstream" rather than passing the name through).
        self._departed: dict[tuple[str, str, int, str], float] = {}
        self.generation = 0
        # Shared store (etcd, several replicas): workloads live on leases that heartbeats renew,
        # wherever their agent is connected; lease expiry, not this replica's clock, drops them,
        # and `sync` takes in what other replicas (and expiring leases) changed.
        self._leased = getattr(store, "shared", False)
        # After a restart every persisted workload gets one full timeout to heartbeat again.
        for stored in store.list_workloads():
            self._workloads[stored.id] = Workload.from_record(stored.record)
            self._last_seen[stored.id] = clock()

    def register(self, registration: Registration) -> Workload:
        workload = Workload.from_record(registration.model_dump())
        self._departed.pop((workload.service, workload.namespace, workload.port, workload.protocol), None)
        self._last_seen[workload.id] = self._clock()
        if self._workloads.get(workload.id) != workload:
            self._store.put_workload(workload.id, registration.model_dump())
            self._workloads[workload.id] = workload
            self._changed()
        return workload

    def heartbeat(self, workload_id: str, healthy: bool, draining: bool = False) -> bool:
        """False if the workload is unknown (expired or never registered): the agent re-registers.
        A draining workload (its sidecar stopping) stays draining until it deregisters."""
        current = self._workloads.get(workload_id)
        if current is None or not self._store.touch_workload(workload_id):
            return False
        self._last_seen[workload_id] = self._clock()
        draining = draining or current.draining
        if (current.healthy, current.draining) != (healthy, draining):
            record = _record(current) | {"healthy": healthy, "draining": draining}
            self._store.put_workload(workload_id, record)
            self._workloads[workload_id] = Workload.from_record(record)
            self._changed()
        return True

    def deregister(self, workload_id: str) -> bool:
        gone = self._workloads.pop(workload_id, None)
        if gone is None:
            return False
        self._left(gone)
        self._last_seen.pop(workload_id, None)
        self._store.delete_workload(workload_id)
        self._changed()
        return True

    def expire(self) -> list[str]:
        if self._leased:
            return []  # etcd expires leases; `sync` drops what it dropped
        now = self._clock()
        stale = [w for w, seen in self._last_seen.items() if now - seen > self._grace]
        for workload_id in stale:
            self.deregister(workload_id)
        forgotten = [k for k, left in self._departed.items() if now - left > self._grace]
        for key in forgotten:
            del self._departed[key]
        if forgotten:
            self._changed()
        return stale

    def departed(self) -> tuple[tuple[str, str, int, str], ...]:
        """(service, namespace, port, protocol) whose last workload left within the grace."""
        return tuple(sorted(self._departed))

    def _left(self, gone: Workload) -> None:
        key = (gone.service, gone.namespace, gone.port, gone.protocol)
        if gone.kind != "gateway" and not any(
            (w.service, w.namespace, w.port) == key[:3] for w in self._workloads.values()
        ):
            self._departed[key] = self._clock()

    def silent(self, workload_id: str) -> bool:
        """No heartbeat for longer than the timeout (but kept, within the grace)."""
        age = self.last_seen_age(workload_id)
        return age is not None and age > self._timeout

    def sync(self) -> bool:
        """Take in the store's workloads as they are now (other replicas' registrations, expired
        leases); True, and a change notified, if anything differs."""
        stored = {s.id: Workload.from_record(s.record) for s in self._store.list_workloads()}
        if stored == self._workloads:
            return False
        gone = [self._workloads[k] for k in self._workloads.keys() - stored.keys()]
        self._workloads = stored
        for workload in gone:
            self._last_seen.pop(workload.id, None)
            self._left(workload)
        self._changed()
        return True

    def workloads(self) -> tuple[Workload, ...]:
        return tuple(self._workloads[k] for k in sorted(self._workloads))

    def stats(self) -> dict:
        """What a metrics scrape reads of the registry: registered workloads by health."""
        healthy = sum(1 for w in self._workloads.values() if w.healthy)
        return {"workloads": {True: healthy, False: len(self._workloads) - healthy}}

    def get(self, workload_id: str) -> Workload | None:
        return self._workloads.get(workload_id)

    def last_seen_age(self, workload_id: str) -> float | None:
        seen = self._last_seen.get(workload_id)
        return None if seen is None else self._clock() - seen

    def _changed(self) -> None:
        self.generation += 1
        self._on_change()


def _record(w: Workload) -> dict:
    return {
        k: (dict(v) if k == "labels" else v) for k, v in ((f, getattr(w, f)) for f in Workload.__dataclass_fields__)
    }
