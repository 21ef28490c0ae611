"""Durable config store: Lattice resources, the workload registry and join tokens, in one SQLite
file (one machine) or in etcd (several control-plane replicas).

Parts:
    model       -- the frozen records handed out (StoredResource, ApplyResult, StoredWorkload)
                   and the errors: StoreError, StoreConflict (stale resourceVersion, HTTP 409),
                   StoreUnavailable (store unreachable or without quorum; nothing written).
    documents   -- canonical JSON and apply items, as both backends store them.
    sqlite      -- Store: the SQLite (WAL) file, its schema, apply/get/list/delete, workloads,
                   join tokens, and wait_for_change.
    etcd        -- EtcdStore: the same interface on etcd v3 (config mirrored by a watch,
                   workloads on leases, tokens by compare-and-swap, replicas, elections).
    etcd_client -- a small synchronous etcd v3 gRPC client; etcdpb holds its generated messages.
    backend     -- StoreBackend (what both backends provide), SharedStore (what etcd adds) and
                   is_shared, the test to run before calling a SharedStore method.
    watch       -- ChangeSignal: wakes asyncio waiters on any loop when this process writes.
    open_store  -- the backend a `--store` value names.

Rules:
    * Revisions only grow. Every created, changed or deleted resource moves the global revision
      (SQLite: by one per resource; etcd: by one per write, which may carry several), and a
      resource carries the revision at which it last changed; an apply that changes nothing
      leaves it alone. It survives restarts.
    * apply and delete are all-or-nothing: one transaction per call (SQLite BEGIN IMMEDIATE, etcd
      Txn guarded by mod revisions), so a failed call leaves every stored resource as it was.
      An apply given `expected` revisions (metadata.resourceVersion) refuses with StoreConflict
      when one is stale.
    * metadata, spec and workload records are stored as canonical JSON (sorted keys, compact);
      "unchanged" means equal canonical text. Each is bounded at MAX_DOCUMENT_BYTES.
    * Workloads are registry, not config: writing them never moves the revision. In etcd each
      lives on a lease that heartbeats renew (`touch_workload`), so a workload nobody hears from
      disappears from every replica.
    * Join tokens are credentials, not config: they never move the revision either.
      consume_token checks and decrements atomically (SQLite transaction, etcd compare-and-swap),
      so a single-use token is used once even with several processes or replicas.
    * Grants (put_grant, revoke_token, revoke_identity, revoked_serials, …) record what a redeemed
      token gave one proxy. Revoking a token or an identity deletes its tokens and marks its grants
      revoked in one transaction: counting uses and revoking live here, so every backend keeps them.
    * The SQLite database, its -wal and -shm are 0600; a home the store creates is 0700.
    * A file that is not a Lattice database (or is corrupt) raises StoreError naming it and is
      never touched, let alone recreated.
    * The store imports nothing else from lattice; the layers above depend on it.
"""

from __future__ import annotations

from pathlib import Path

from lattice.store.backend import SharedStore, StoreBackend, is_shared
from lattice.store.documents import MAX_DOCUMENT_BYTES
from lattice.store.model import (
    ApplyResult,
    StoreConflict,
    StoredResource,
    StoredWorkload,
    StoreError,
    StoreUnavailable,
)
from lattice.store.sqlite import Store

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "ApplyResult",
    "SharedStore",
    "Store",
    "StoreBackend",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "StoredResource",
    "StoredWorkload",
    "is_shared",
    "open_store",
]


def open_store(
    url: str | None,
    db: Path,
    tls_files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
    workload_ttl: float = 15.0,
) -> StoreBackend:
    """The SQLite file `db` when `url` is None, else the etcd cluster `url` names
    (`etcd://host:port,host:port[/prefix]`, TLS from (ca, cert, key) files)."""
    if url is None:
        return Store(db)
    from lattice.store.etcd import EtcdStore
    from lattice.store.etcd_client import EtcdTls

    shared: SharedStore = EtcdStore(url, EtcdTls(*tls_files), workload_ttl=workload_ttl)
    return shared
