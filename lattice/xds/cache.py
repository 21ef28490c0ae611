"""Per-proxy snapshots of serialized resources."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

from google.protobuf import any_pb2
from google.protobuf.message import Message

from lattice.translate.versions import set_version


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
class Selection:
    """Resources of one type as a response carries them, sorted by name, with the version of the
    set and its size in bytes."""

    resources: list[XdsResource]
    version: str
    size: int
    # What changed from an earlier selection to this one, by the earlier one's id (delta.py).
    differences: dict = field(default_factory=dict, compare=False, repr=False)


class ResourceSet(Mapping[str, XdsResource]):
    """One type's resources for a proxy, by name. Immutable, and the same object wherever the
    same set is held (by proxies alike, by one proxy from push to push while its resources of
    the type stay unchanged), so what a response needs of it is worked out once per set."""

    __slots__ = ("_by_name", "_selections", "__weakref__")

    def __init__(self, by_name: Mapping[str, XdsResource]) -> None:
        self._by_name = dict(by_name)
        self._selections: dict[frozenset[str] | None, Selection] = {}

    def __getitem__(self, name: str) -> XdsResource:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # Defining __eq__ sets __hash__ to None: a Mapping, equal sets compare equal, they are not keys.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResourceSet):  # resources are interned: the same bytes, the same object
            return self is other or self._by_name == other._by_name
        return super().__eq__(other)

    def select(self, names: frozenset[str] | None) -> Selection:
        """All (wildcard, `names is None`) or the named ones that exist."""
        found = self._selections.get(names)
        if found is None:
            chosen = [self._by_name[n] for n in sorted(self._by_name if names is None else names) if n in self._by_name]
            found = self._selections[names] = Selection(
                chosen, ProxySnapshot.version_of(chosen), sum(len(r.body.value) for r in chosen)
            )
        return found


EMPTY = ResourceSet({})


@dataclass(frozen=True)
class ProxySnapshot:
    label: str  # the mesh snapshot version this was built from (for humans and status)
    resources: Mapping[str, ResourceSet]

    def chosen(self, type_url: str, names: Iterable[str] | None) -> Selection:
        """Resources of a type, all (wildcard, `names is None`) or the named ones that exist."""
        return self.resources.get(type_url, EMPTY).select(None if names is None else frozenset(names))

    def select(self, type_url: str, names: Iterable[str] | None) -> list[XdsResource]:
        return self.chosen(type_url, names).resources

    @staticmethod
    def version_of(resources: list[XdsResource]) -> str:
        return set_version((r.name, r.version) for r in resources)


class Encoder:
    """Serializes messages into cache resources. A message marked `shared` (one object that many
    proxies hold, such as a memoized cluster) is serialized and hashed once for as long as this
    encoder lives, one push: it is known by identity, and held so the identity is not reused."""

    def __init__(
        self, cache: SnapshotCache, previous: Encoder | None = None, still_shared=lambda message: False
    ) -> None:
        self._cache = cache
        self._shared: dict[tuple[int, str, str], tuple[Message, XdsResource]] = {}
        if previous is not None:  # pieces the next push shares again need no new serialization
            self._shared = {k: v for k, v in previous._shared.items() if still_shared(v[0])}

    def encode(self, type_url: str, name: str, message: Message, shared: bool = False) -> XdsResource:
        if not shared:
            return self._cache.resource(type_url, name, message.SerializeToString(deterministic=True))
        key = (id(message), type_url, name)
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = (
                message,
                self._cache.resource(type_url, name, message.SerializeToString(deterministic=True)),
            )
        return found[1]

    def resource_set(
        self, type_url: str, items: Iterable[tuple[str, Message]], shared=lambda message: False
    ) -> ResourceSet:
        return self._cache.resource_set(
            {name: self.encode(type_url, name, message, shared(message)) for name, message in items}
        )


class SnapshotCache:
    """Holds the latest snapshot per node and wakes streams waiting on that node."""

    def __init__(self) -> None:
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        # Proxies with the same resource share one serialized copy (memory per proxy stays small).
        self._interned: weakref.WeakValueDictionary[tuple[str, str, str], XdsResource] = weakref.WeakValueDictionary()
        # Likewise whole sets: proxies alike hold one, and its selections are worked out once.
        self._sets: weakref.WeakValueDictionary[tuple[int, ...], ResourceSet] = weakref.WeakValueDictionary()

    def set(self, node_id: str, label: str, by_type: Mapping[str, Iterable[tuple[str, Message]]]) -> ProxySnapshot:
        encoder = Encoder(self)
        return self.set_resources(node_id, label, {t: encoder.resource_set(t, items) for t, items in by_type.items()})

    def set_resources(self, node_id: str, label: str, resources: Mapping[str, ResourceSet]) -> ProxySnapshot:
        """A node's resources, already encoded; its streams wake if any type changed."""
        snapshot = ProxySnapshot(label, MappingProxyType(dict(resources)))
        old = self._snapshots.get(node_id)
        self._snapshots[node_id] = snapshot
        if old is None or old.resources != snapshot.resources:
            self._wake(node_id)
        return snapshot

    def resource(self, type_url: str, name: str, data: bytes) -> XdsResource:
        """The one resource for these bytes: versioned by their hash, shared by every holder."""
        key = (type_url, name, _hash(data))
        found = self._interned.get(key)
        if found is None:
            found = XdsResource(name, key[2], any_pb2.Any(type_url=type_url, value=data))
            self._interned[key] = found
        return found

    def resource_set(self, by_name: Mapping[str, XdsResource]) -> ResourceSet:
        """The one set of these resources in this order. Known by the identities of its (interned)
        resources, which it holds, so they are not reused while it lives."""
        key = tuple(map(id, by_name.values()))
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = ResourceSet(by_name)
        return found

    def get(self, node_id: str) -> ProxySnapshot | None:
        return self._snapshots.get(node_id)

    def remove(self, node_id: str) -> None:
        self._snapshots.pop(node_id, None)
        self._wake(node_id)

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    def watch(self, node_id: str, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever this node's snapshot changes (on the loop, at once: it must be cheap)."""
        self._watchers.setdefault(node_id, set()).add(wake)

    def unwatch(self, node_id: str, wake: Callable[[], None]) -> None:
        watchers = self._watchers.get(node_id, set())
        watchers.discard(wake)
        if not watchers:
            self._watchers.pop(node_id, None)

    def _wake(self, node_id: str) -> None:
        for wake in tuple(self._watchers.get(node_id, ())):
            wake()
