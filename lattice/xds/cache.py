"""Per-proxy snapshots of serialized resources."""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from google.protobuf import any_pb2
from google.protobuf.message import Message


@dataclass(frozen=True, eq=False)
class XdsResource:
    name: str
    version: str  # hash of the serialized bytes: same bytes, same version, on every proxy
    body: any_pb2.Any

    __slots__ = ("name", "version", "body", "__weakref__")


def _hash(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p)
    return h.hexdigest()


@dataclass(frozen=True)
class ProxySnapshot:
    label: str  # the mesh snapshot version this was built from (for humans and status)
    resources: Mapping[str, Mapping[str, XdsResource]]

    def select(self, type_url: str, names: Iterable[str] | None) -> list[XdsResource]:
        """Resources of a type, all (wildcard, `names is None`) or the named ones that exist."""
        held = self.resources.get(type_url, {})
        if names is None:
            return [held[n] for n in sorted(held)]
        return [held[n] for n in sorted(set(names)) if n in held]

    @staticmethod
    def version_of(resources: list[XdsResource]) -> str:
        return _hash(*(f"{r.name}={r.version};".encode() for r in resources)) if resources else "empty"


class SnapshotCache:
    """Holds the latest snapshot per node and wakes streams waiting on that node."""

    def __init__(self) -> None:
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}
        # Proxies with the same resource share one serialized copy (memory per proxy stays small).
        self._interned: weakref.WeakValueDictionary[tuple[str, str, str], XdsResource] = weakref.WeakValueDictionary()

    def set(self, node_id: str, label: str, by_type: Mapping[str, Iterable[tuple[str, Message]]]) -> ProxySnapshot:
        resources = {t: MappingProxyType({name: self._resource(t, name, msg) for name, msg in items}) for t, items in by_type.items()}
        snapshot = ProxySnapshot(label, MappingProxyType(resources))
        old = self._snapshots.get(node_id)
        self._snapshots[node_id] = snapshot
        if old is None or old.resources != snapshot.resources:
            self._wake(node_id)
        return snapshot

    def _resource(self, type_url: str, name: str, message: Message) -> XdsResource:
        data = message.SerializeToString(deterministic=True)
        key = (type_url, name, _hash(data))
        found = self._interned.get(key)
        if found is None:
            found = XdsResource(name, key[2], any_pb2.Any(type_url=type_url, value=data))
            self._interned[key] = found
        return found

    def get(self, node_id: str) -> ProxySnapshot | None:
        return self._snapshots.get(node_id)

    def remove(self, node_id: str) -> None:
        self._snapshots.pop(node_id, None)
        self._wake(node_id)

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    def watch(self, node_id: str) -> asyncio.Event:
        """An event set whenever this node's snapshot changes; the watcher clears it when handled."""
        event = asyncio.Event()
        self._watchers.setdefault(node_id, set()).add(event)
        return event

    def unwatch(self, node_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(node_id, set())
        watchers.discard(event)
        if not watchers:
            self._watchers.pop(node_id, None)

    def _wake(self, node_id: str) -> None:
        for event in self._watchers.get(node_id, ()):
            event.set()
