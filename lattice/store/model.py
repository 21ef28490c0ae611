"""What the store hands back: frozen records and the one error type."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """The database could not be opened, read or written; the message names the file."""


class StoreConflict(StoreError):
    """A write named a resourceVersion that is no longer the stored one: someone changed it since
    (HTTP 409, as Kubernetes answers). Nothing was written."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, or (etcd) has no quorum: nothing was written; the message names
    the store. Reads keep answering from what this process last saw."""


@dataclass(frozen=True)
class StoredResource:
    kind: str
    namespace: str
    name: str
    api_version: str
    metadata: dict
    spec: dict
    # The store's global revision at which this resource last changed.
    revision: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ApplyResult:
    resource: StoredResource
    action: str  # "created" | "configured" | "unchanged"


@dataclass(frozen=True)
class StoredWorkload:
    id: str
    # Opaque to the store: the registry owns its shape.
    record: dict
    updated_at: float
