"""Durable config store: Lattice resources and the workload registry in one SQLite file.

Parts:
    model   -- the frozen records handed out (StoredResource, ApplyResult, StoredWorkload)
               and StoreError.
    sqlite  -- Store: the SQLite (WAL) file, its schema, apply/get/list/delete, workloads,
               join tokens, and wait_for_change.
    watch   -- ChangeSignal: wakes asyncio waiters on any loop when this process writes.

Rules:
    * One global revision counts config changes. Every created, changed or deleted resource
      moves it by exactly one; an apply that changes nothing leaves it alone. It survives
      restarts, and a resource carries the revision at which it last changed.
    * apply and delete are all-or-nothing: one BEGIN IMMEDIATE transaction per call, so a
      failed call leaves every stored row as it was, even with other processes on the file.
    * metadata, spec and workload records are stored as canonical JSON (sorted keys, compact);
      "unchanged" means equal canonical text. Each is bounded at MAX_DOCUMENT_BYTES.
    * Workloads are registry, not config: writing them never moves the revision.
    * Join tokens (add_token, consume_token, …) are credentials, not config: they never move the
      revision either. consume_token checks and decrements in one BEGIN IMMEDIATE transaction,
      so a single-use token is used once even with several processes on the file.
    * A file that is not a Lattice database (or is corrupt) raises StoreError naming it and is
      never touched, let alone recreated.
    * Waiters are woken directly by writes through the same Store and by polling
      `PRAGMA data_version` for writes from other processes.
    * The store imports nothing else from lattice; the layers above depend on it.
"""

from lattice.store.model import ApplyResult, StoredResource, StoredWorkload, StoreError
from lattice.store.sqlite import MAX_DOCUMENT_BYTES, Store

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "ApplyResult",
    "Store",
    "StoreError",
    "StoredResource",
    "StoredWorkload",
]
