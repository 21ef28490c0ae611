"""Translation for a new snapshot limited to what it changed, and shared by proxies alike.

The state the translator must not keep lives here, with the pusher that owns it: the reads of
the previous snapshots and the translations made from them, and the memo of shared pieces (a
`TracedSnapshot` per snapshot). The translator itself stays a function of what it is given.

`translate` is pure, so one type of a proxy's resources is a function of what translating it
read, of the snapshot and of the proxy (`lattice.mesh.reads`). `ProxyTranslations` keeps, per
type, each translation's reads and what the caller made of its output (the serialized
resources), and gives that again:
- with a new snapshot, while none of the snapshot reads changed: a VirtualService change
  re-translates route tables, not listeners; an endpoint added or removed re-translates
  endpoints (and clusters, which name the endpoints' identities), not routes;
- to another proxy whose attributes read alike (route tables depend on a proxy's namespace and,
  where a VirtualService matches on them, its labels; listeners on its address too), so a
  thousand proxies of sixty kinds cost sixty translations, not a thousand.
A translation no proxy used at the last snapshot is dropped: it was not checked against it.

It relies on the translator's own rules: pure; a memo piece the same for every caller of its key;
and the proxy read through its attributes (it is a stand-in during translation: compared as an
object, it would not be the workload). tests/unit/server/test_incremental.py holds every
proxy's output to a full translation's through a run of changes, forwards and backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from google.protobuf.message import Message

from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.reads import (
    OwnFields,
    SnapshotReads,
    Trace,
    TracedSnapshot,
    changed_fields,
    own_fields_union,
    proxy_key,
    same_reads,
)
from lattice.translate.resources import TYPE_ORDER, translate_type

R = TypeVar("R")
Items = tuple[tuple[str, Message], ...]


@dataclass
class _Translation:
    trace: Trace
    result: Any  # what the caller made of the translated items
    checked: int  # the generation up to which its snapshot reads read alike


# A translation found for a proxy, with the fields each of its reads that took the proxy read for this one
_Found = tuple[_Translation, OwnFields]


@dataclass(slots=True)
class _Use:
    """What a proxy got for one type at a snapshot."""

    translation: _Translation
    proxy: Workload  # the proxy as it was
    own: OwnFields  # the fields each of the translation's reads that took the proxy read for it
    every: frozenset[str] | None  # all of them (None: some unknown), worked out once
    generation: int  # the snapshot it got it at


class ProxyTranslations:
    """Per type: translations by the proxy attributes they read, and those attributes' values."""

    def __init__(self) -> None:
        self._reads = SnapshotReads()
        self._traced = TracedSnapshot(MeshSnapshot("0"), self._reads)
        self._alike: dict[str, dict[tuple[str, ...], dict[tuple, _Translation]]] = {t: {} for t in TYPE_ORDER}
        self._used: dict[tuple[str, str], _Use] = {}  # (node id, type) -> what the proxy got last
        self._changed_fields: frozenset[str] = frozenset()
        # (id of a translation a proxy had, id of the one it may get) -> both, and `same_reads` of them
        self._same: dict[tuple[int, int], tuple[_Translation, _Translation, tuple[int | None, ...]]] = {}

    @property
    def snapshot(self) -> MeshSnapshot:
        return self._traced.snapshot

    def advance(self, snapshot: MeshSnapshot) -> None:
        """Move to `snapshot`: what was read before is read again from it."""
        last = self._reads.generation
        for by_attributes in self._alike.values():
            for attributes, by_values in list(by_attributes.items()):
                kept = {v: t for v, t in by_values.items() if t.checked == last}
                if kept:
                    by_attributes[attributes] = kept
                else:
                    del by_attributes[attributes]
        # (the fields changed are known from the last snapshot to this one, so only what was used at the last counts)
        self._used = {k: v for k, v in self._used.items() if v.generation == last}
        self._reads.sweep(
            [
                t.trace.dependencies
                for by_attributes in self._alike.values()
                for by_values in by_attributes.values()
                for t in by_values.values()
            ]
        )
        self._reads.advance(snapshot)
        self._changed_fields = changed_fields(self._traced.snapshot, snapshot)
        self._same = {}
        self._traced = TracedSnapshot(snapshot, self._reads, previous=self._traced)

    def resources(self, proxy: Workload, type_url: str, make: Callable[[Items], R]) -> R:
        """`make(translate_type(snapshot, proxy, type_url))` for the current snapshot: kept from
        before or from a proxy alike when their reads read alike, else made now."""
        found = self._as_before(proxy, type_url) or self._alike_translation(proxy, type_url)
        if found is None:
            items, trace = self._traced.trace(
                proxy, lambda snapshot, traced: translate_type(snapshot, traced, type_url)
            )
            translation = _Translation(trace, make(items), self._reads.generation)
            self._alike[type_url].setdefault(trace.attributes, {})[trace.values] = translation
            found = translation, trace.own_fields()
        translation, own = found
        self._used[(proxy.id, type_url)] = _Use(translation, proxy, own, own_fields_union(own), self._reads.generation)
        return translation.result

    def shared(self, message: Message) -> bool:
        """Whether `message` is one object held for many proxies (a memoized piece)."""
        return self._traced.shared(message)

    def _as_before(self, proxy: Workload, type_url: str) -> _Found | None:
        """What this very proxy got at the last snapshot, if nothing it read changed since: no
        need to look for its kind, nor to read again what took the proxy as an argument unless
        the snapshot fields behind those reads, as they were read for this proxy, changed."""
        used = self._used.get((proxy.id, type_url))
        if used is None or used.proxy is not proxy:
            return None
        found, own, every = used.translation, used.own, used.every
        if found.checked < self._reads.generation - 1 or not self._reads.unchanged(
            found.trace.dependencies, found.checked
        ):
            return None
        if every is None or not every.isdisjoint(self._changed_fields):
            refitted = found.trace.refit(self.snapshot, proxy, own, self._changed_fields)
            if refitted is None:
                return None
            own = refitted
        found.checked = self._reads.generation
        return found, own

    def _alike_translation(self, proxy: Workload, type_url: str) -> _Found | None:
        before = self._used.get((proxy.id, type_url))
        for attributes, by_values in self._alike[type_url].items():
            found = by_values.get(proxy_key(proxy, attributes))
            if found is not None and self._reads.unchanged(found.trace.dependencies, found.checked):
                known = self._carried(before, found, proxy) if before is not None else None
                own = found.trace.refit(self.snapshot, proxy, known, self._changed_fields)
                if own is not None:
                    found.checked = self._reads.generation
                    return found, own
        return None

    def _carried(self, before: _Use, found: _Translation, proxy: Workload) -> OwnFields | None:
        """What the proxy's translation at the last snapshot tells of `found`'s reads that take the
        proxy: for each, the fields it read for this proxy then, where it is the same read with
        the same value (so unchanged fields mean it reads alike), else None (to read again)."""
        if before.proxy is not proxy or before.generation != self._reads.generation - 1:
            return None
        old = before.translation
        key = (id(old), id(found))
        pair = self._same.get(key)
        if pair is None:  # worked out once for all the proxies going from one to the other
            pair = self._same[key] = (old, found, same_reads(old.trace, found.trace))
        return tuple(None if i is None else before.own[i] for i in pair[2])
