"""What computations read of mesh snapshots and proxies, so that a new snapshot redoes only what
it changed, and proxies alike share one result.

The translator is pure: what it gives for a proxy is a function of what it read, of the snapshot
and of the proxy. `TracedSnapshot` stands in for a `MeshSnapshot` and notes each read (a field, or
a method with its arguments, and the value it gave); `TracedProxy` stands in for the `Workload`
and notes the attributes read. Since the same reads giving the same values take a computation
down the same path to the same result:
- a result none of whose snapshot reads changed in a new snapshot is still the result
  (`SnapshotReads` keeps the reads from one snapshot to the next and reads them again);
- a result is another proxy's too when that proxy's attributes read alike, and so do the
  snapshot reads that took the proxy as an argument (`Trace.refit`).
Nothing is listed by hand: what a computation depends on is what it read.

`memo` pieces (built once per snapshot, shared by many proxies) keep their own reads, and a
computation that used one notes only its key: a piece shared by a thousand proxies is checked
once per snapshot, not once per proxy. A piece whose reads read alike in the next snapshot is
offered to it, and taken when the build asked for closes over equal values (a build may depend
on what its caller read before asking, as well as on its own reads).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Callable, Hashable, Mapping, TypeVar, cast

from lattice.mesh.model import MeshSnapshot, Workload

T = TypeVar("T")
Key = tuple  # (field,) or (method, argument keys...)
_PROXY = object()  # where a read took the traced proxy as an argument
_PLAIN = frozenset({str, int, bool, type(None)})


@dataclass(frozen=True)
class Dependencies:
    """Snapshot reads a computation made, and the memo pieces it used."""

    reads: frozenset[Key]
    memos: frozenset[Hashable]


@dataclass(frozen=True)
class _Read:
    name: str
    args: tuple | None  # None: a field
    kwargs: tuple
    value: Any
    fields: frozenset[str] | None = None  # the snapshot's fields the method read (None: not known)

    def again(self, snapshot: MeshSnapshot, proxy: Workload | None = None) -> Any:
        found = getattr(snapshot, self.name)
        if self.args is None:
            return found
        return found(*(proxy if a is _PROXY else a for a in self.args), **dict(self.kwargs))


class SnapshotReads:
    """Reads noted by computations over successive snapshots, and which of them the newest
    snapshot changed. `advance` moves to a new snapshot; `unchanged` then says whether a
    computation's dependencies read alike in it."""

    def __init__(self) -> None:
        self.generation = 0  # advances with every snapshot
        self._reads: dict[Key, _Read] = {}
        self._memos: dict[Hashable, Dependencies] = {}
        self._changed: frozenset[Key] = frozenset()
        self._changed_memos: frozenset[Hashable] = frozenset()
        self._interned: dict[frozenset, frozenset] = {}
        self._kept = 0  # how many entries the last sweep kept

    def advance(self, snapshot: MeshSnapshot) -> None:
        """Read everything noted so far again from `snapshot`. Changed reads are dropped: the
        computations that made them run again on `snapshot` and note them anew."""
        self.generation += 1
        self._interned = {}  # sets are shared among what one snapshot's computations note
        self._changed = frozenset(key for key, read in self._reads.items() if _differs(read, snapshot))
        for key in self._changed:
            del self._reads[key]
        verdicts: dict[Hashable, bool] = {}
        self._changed_memos = frozenset(key for key in self._memos if self._memo_changed(key, verdicts))
        for memo_key in self._changed_memos:
            del self._memos[memo_key]

    def unchanged(self, dependencies: Dependencies, checked: int) -> bool:
        """Whether everything behind `dependencies`, which read alike up to generation `checked`,
        reads alike in the newest snapshot. Dependencies not checked at the previous generation
        missed the changes between, and count as changed."""
        if checked == self.generation:
            return True
        return (
            checked == self.generation - 1
            and dependencies.reads.isdisjoint(self._changed)
            and dependencies.memos.isdisjoint(self._changed_memos)
        )

    def note(self, key: Key, read: _Read) -> None:
        self._reads.setdefault(key, read)

    def memo_built(self, key: Hashable, dependencies: Dependencies) -> None:
        self._memos[key] = dependencies

    def memo_current(self, key: Hashable) -> bool:
        """Whether the memo piece `key`, as last built, reads alike in the newest snapshot."""
        return key in self._memos  # (changed ones were dropped by `advance`)

    def dependencies(self, reads: set, memos: set) -> Dependencies:
        """Dependencies with their sets shared: computations alike read alike."""
        return Dependencies(self._intern(frozenset(reads)), self._intern(frozenset(memos)))

    def sweep(self, live: list[Dependencies]) -> None:
        """Forget reads and pieces no live computation depends on (proxies gone, objects that
        were replaced); only once the tables have doubled since the last sweep, so it costs a
        fraction of the pushes it follows."""
        if len(self._reads) + len(self._memos) < 2 * self._kept + 1000:
            return
        memos: set = set()
        pending = [m for d in live for m in d.memos]
        while pending:
            key = pending.pop()
            if key not in memos and key in self._memos:
                memos.add(key)
                pending.extend(self._memos[key].memos)
        reads = set().union(*(d.reads for d in live), *(self._memos[m].reads for m in memos))
        self._reads = {k: v for k, v in self._reads.items() if k in reads}
        self._memos = {k: v for k, v in self._memos.items() if k in memos}
        self._kept = len(self._reads) + len(self._memos)

    def _memo_changed(self, key: Hashable, verdicts: dict[Hashable, bool]) -> bool:
        found = verdicts.get(key)
        if found is None:
            dependencies = self._memos.get(key)
            verdicts[key] = True  # (a piece never depends on itself; this only ends a cycle)
            found = (
                dependencies is None
                or not dependencies.reads.isdisjoint(self._changed)
                or any(self._memo_changed(m, verdicts) for m in dependencies.memos)
            )
            verdicts[key] = found
        return found

    def _intern(self, keys: frozenset) -> frozenset:
        return self._interned.setdefault(keys, keys)


def _differs(read: _Read, snapshot: MeshSnapshot, proxy: Workload | None = None) -> bool:
    try:
        return read.again(snapshot, proxy) != read.value
    except Exception:  # a read that fails now (a workload gone) has changed
        return True


class TracedProxy:
    """A `Workload` as one translation sees it, noting the attributes read (first value each).
    Unhashable, as a Workload is, so nothing holding it can pass for a plain value."""

    __slots__ = ("_workload", "_read")

    def __init__(self, workload: Workload) -> None:
        self._workload = workload
        self._read: dict[str, Any] = {}

    def __eq__(self, other: object) -> bool:  # identity, as object's; defining it sets __hash__ to None
        return self is other

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._workload, name)
        self._read.setdefault(name, value)
        return value


@dataclass(frozen=True)
class Trace:
    """What one proxy's computation read: of the proxy, attributes (`attributes`, in the order
    read, and `values` as `proxy_key` makes them); of the snapshot, `dependencies`, and `own`,
    the reads that took the proxy as an argument. The same values read from another proxy and
    from the same snapshot would take the computation down the same path, to the same result."""

    attributes: tuple[str, ...]
    values: tuple
    own: tuple[_Read, ...]
    dependencies: Dependencies
    read_from: Workload  # the proxy it was made from (holding what `values` may know by identity)

    def own_fields(self) -> OwnFields:
        """The snapshot fields each read that took the proxy as an argument read for `read_from`."""
        return tuple(read.fields for read in self.own)

    def refit(
        self,
        snapshot: MeshSnapshot,
        proxy: Workload,
        known: OwnFields | None = None,
        changed: frozenset[str] = frozenset(),
    ) -> OwnFields | None:
        """Whether the reads that took the proxy as an argument read alike for `proxy` in
        `snapshot` (its attributes are matched by `values`; `dependencies` by SnapshotReads): the
        snapshot fields each of them read for `proxy` when they do, None when not. With `known`,
        the fields each read for this same proxy at the previous snapshot, and `changed`, the
        fields that changed since: a read whose fields are known and unchanged reads alike
        without reading it again (the same path through the same values)."""
        out: list[frozenset[str] | None] = []
        for i, read in enumerate(self.own):
            noted = known[i] if known is not None else None
            if noted is None or not noted.isdisjoint(changed):
                alike, noted = _read_noting_fields(read, snapshot, proxy)
                if not alike:
                    return None
            out.append(noted)
        return tuple(out)


# Per read that took a proxy as an argument: the snapshot fields it read for that proxy (None: unknown)
OwnFields = tuple[frozenset[str] | None, ...]


def own_fields_union(own: OwnFields) -> frozenset[str] | None:
    """All the fields, or None when one read's are unknown."""
    if None in own:
        return None
    return frozenset().union(*own)  # type: ignore[arg-type]


def same_reads(old: Trace, new: Trace) -> tuple[int | None, ...]:
    """For each read of `new` that took the proxy as an argument, the index of the read of `old`
    that is the same read (method and arguments) and gave the same value, or None. A proxy that
    fitted `old` and whose fields behind that read did not change gives that value again, so it
    fits `new` there without reading it again."""
    by_key: dict[tuple, int] = {}
    for index, read in enumerate(old.own):
        try:
            by_key.setdefault(_read_key(read), index)
        except TypeError:  # an unhashable argument: not matched
            pass
    out: list[int | None] = []
    for read in new.own:
        try:
            found = by_key.get(_read_key(read))
        except TypeError:
            found = None
        if found is not None:
            before = old.own[found].value
            if type(before) is not type(read.value) or not _equal((before,), (read.value,)):
                found = None
        out.append(found)
    return tuple(out)


def _read_key(read: _Read) -> tuple:
    return (read.name, tuple((type(a), a) for a in read.args or ()), read.kwargs)


def _read_noting_fields(read: _Read, snapshot: MeshSnapshot, proxy: Workload) -> tuple[bool, frozenset[str] | None]:
    """Whether `read` reads alike for `proxy` in `snapshot`, and the fields it read doing so."""
    recorder = _FieldReads(snapshot)
    try:
        value = read.again(cast(MeshSnapshot, recorder), proxy)
    except Exception:  # not with the recorder as its `self`: read plainly, fields unknown
        return not _differs(read, snapshot, proxy), None
    try:
        alike = bool(value == read.value)
    except Exception:  # values that cannot be compared are not known to be equal
        return False, None
    return alike, _known(recorder.fields) if alike else None


def proxy_key(proxy: Any, attributes: tuple[str, ...]) -> tuple:
    """The values of `attributes` of `proxy`, hashable: proxies with equal keys read alike."""
    return tuple(_value_key(getattr(proxy, a)) for a in attributes)


class _Frame:
    """What a computation under way has read so far."""

    __slots__ = ("reads", "memos", "proxy", "own", "opaque")

    def __init__(self, proxy: TracedProxy | None = None) -> None:
        self.reads: set = set()
        self.memos: set = set()
        self.proxy = proxy
        self.own: list[_Read] = []
        self.opaque = False  # a read took an argument known only by identity (it might hold the proxy)


class TracedSnapshot:
    """A `MeshSnapshot` as the translator sees it, noting what each computation run through
    `trace` read. Its memo pieces are its own, built traced; those of the `previous` one still
    current are offered again (an endpoint added rebuilds its service's endpoints, not every
    service's)."""

    __slots__ = ("_snapshot", "_reads", "_memo", "_carried", "_held", "_open")

    def __init__(self, snapshot: MeshSnapshot, reads: SnapshotReads, previous: TracedSnapshot | None = None) -> None:
        self._snapshot = snapshot
        self._reads = reads
        self._memo: dict[Hashable, tuple[Any, tuple]] = {}  # key -> (piece, what its build closed over)
        self._carried: dict[Hashable, tuple[Any, tuple]] = {}  # likewise, from the previous snapshot
        self._held: set[int] = set()  # ids of the objects memo pieces hold (alive as long as this)
        self._open: list[_Frame] = []  # computations under way, innermost last
        offered = (
            {**previous._carried, **previous._memo} if previous is not None else {}
        )  # (pieces no proxy asked for last time too)
        for key, entry in offered.items():
            if reads.memo_current(key):
                self._carried[key] = entry
                self._hold(entry[0])

    @property
    def snapshot(self) -> MeshSnapshot:
        return self._snapshot

    def trace(self, proxy: Workload, compute: Callable[[MeshSnapshot, Workload], T]) -> tuple[T, Trace]:
        """`compute(snapshot, proxy)` with both traced, and what it read of them."""
        traced = TracedProxy(proxy)
        frame = _Frame(traced)
        self._open.append(frame)
        try:
            # Stand-ins for both: they answer every attribute as the real ones do, noting the read.
            value = compute(cast(MeshSnapshot, self), cast(Workload, traced))
        finally:
            self._open.pop()
        attributes = tuple(traced._read)
        if frame.opaque:  # then only a proxy equal in every attribute reads alike
            attributes = tuple(f.name for f in fields(Workload))
        values = proxy_key(proxy, attributes)
        return value, Trace(
            attributes, values, _distinct(frame.own), self._reads.dependencies(frame.reads, frame.memos), proxy
        )

    def shared(self, value: object) -> bool:
        """Whether `value` is (in) a memo piece of this snapshot: the same object for every proxy."""
        return id(value) in self._held

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """`MeshSnapshot.memo`, noting the piece's own reads against its key."""
        entry = self._memo.get(key)
        if entry is None:
            closed = _closed_over(build)
            entry = self._carried.pop(key, None)
            if entry is None or not _equal(entry[1], closed):
                frame = _Frame()
                self._open.append(frame)
                try:
                    value = build()
                finally:
                    self._open.pop()
                self._reads.memo_built(key, self._reads.dependencies(frame.reads, frame.memos))
                entry = (value, closed)
                self._hold(value)
            self._memo[key] = entry
        if self._open:
            self._open[-1].memos.add(key)
        return entry[0]

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._snapshot, name)
        if isinstance(found, types.MethodType):
            return lambda *args, **kwargs: self._call(name, found, args, kwargs)
        self._note((name,), _Read(name, None, (), found))
        return found

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        plain = tuple(a._workload if type(a) is TracedProxy else a for a in args)
        value = method(*plain, **kwargs)
        if not self._open:
            return value
        frame, items = self._open[-1], tuple(sorted(kwargs.items()))
        if frame.proxy is not None and any(a is frame.proxy for a in args):  # the computation's own proxy
            fields = _fields_read(self._snapshot, name, plain, kwargs)
            frame.own.append(
                _Read(
                    name,
                    tuple(_PROXY if a is frame.proxy else p for a, p in zip(args, plain, strict=True)),
                    items,
                    value,
                    fields,
                )
            )
            return value
        keys, named = [_arg_key(a) for a in plain], [(k, _arg_key(v)) for k, v in items]
        frame.opaque = (
            frame.opaque or any(type(k) is _Identity for k in keys) or any(type(k) is _Identity for _, k in named)
        )
        self._note((name, *keys, *named), _Read(name, plain, items, value))
        return value

    def _note(self, key: Key, read: _Read) -> None:
        self._reads.note(key, read)
        if self._open:
            self._open[-1].reads.add(key)

    def _hold(self, value: object) -> None:
        self._held.add(id(value))
        if isinstance(value, (list, tuple)):
            self._held.update(id(v) for v in value)


class _FieldReads:
    """A snapshot as `self` of one of its own methods, noting the fields the method reads (those
    of methods it calls on itself too)."""

    __slots__ = ("_snapshot", "fields")

    def __init__(self, snapshot: MeshSnapshot) -> None:
        self._snapshot = snapshot
        self.fields: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._snapshot, name)
        if isinstance(found, types.MethodType):
            return types.MethodType(found.__func__, self)
        self.fields.add(name)
        return found


def _fields_read(snapshot: MeshSnapshot, name: str, args: tuple, kwargs: dict) -> frozenset[str] | None:
    """The snapshot fields method `name` reads for these arguments (None when it cannot be told)."""
    recorder = _FieldReads(snapshot)
    try:
        getattr(type(snapshot), name)(recorder, *args, **kwargs)
    except Exception:
        return None
    return _known(recorder.fields)


def _known(names: set[str]) -> frozenset[str] | None:
    """Fields a method read, when `changed_fields` compares each of them: a property (read
    through on the real snapshot, whatever fields it reads in turn) is not one."""
    return frozenset(names) if names <= _COMPARED_FIELDS else None


_COMPARED_FIELDS = frozenset(f.name for f in fields(MeshSnapshot) if f.compare)


def changed_fields(old: MeshSnapshot, new: MeshSnapshot) -> frozenset[str]:
    """The fields of two snapshots (derived indexes too) whose values differ."""
    out = set()
    for f in fields(MeshSnapshot):
        if not f.compare:
            continue
        a, b = getattr(old, f.name, None), getattr(new, f.name, None)
        if a is not b and not _equal((a,), (b,)):
            out.add(f.name)
    return frozenset(out)


def _distinct(reads: list[_Read]) -> tuple[_Read, ...]:
    """Each read once: the same method with the same arguments reads alike (computations are pure)."""
    seen: set = set()
    out = []
    for read in reads:
        key = _read_key(read)
        try:
            if key in seen:
                continue
            seen.add(key)
        except TypeError:  # an unhashable argument: kept as it is
            pass
        out.append(read)
    return tuple(out)


def _closed_over(build: Callable) -> tuple:
    """What a build function depends on besides its reads: its code, defaults and the values it
    closes over (the traced snapshot and proxy aside: reads of those are noted as they happen).
    Anything but a plain function is known by identity only, so it never matches another."""
    code = getattr(build, "__code__", None)
    if code is None:
        return (_Identity(build), build)
    cells = []
    for cell in build.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if type(value) not in (TracedSnapshot, TracedProxy):
            cells.append(value)
    return (code, build.__defaults__, tuple(cells))


def _equal(a: tuple, b: tuple) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values that cannot be compared are not known to be equal
        return False


class _Identity:
    """An object known by its identity, in a key (the key's holder holds the object too, so the
    identity is not reused while the key lives). Equal only to another _Identity."""

    __slots__ = ("id",)

    def __init__(self, value: object) -> None:
        self.id = id(value)

    def __eq__(self, other: object) -> bool:
        return type(other) is _Identity and other.id == self.id

    def __hash__(self) -> int:
        return hash((_Identity, self.id))


def _arg_key(value: object) -> Hashable:
    """An argument as part of a read's key: itself when hashable, else its identity."""
    try:
        hash(value)
    except TypeError:
        return _Identity(value)
    return (type(value), value) if isinstance(value, (bool, float)) else value


def _value_key(value: object) -> Hashable:
    """A proxy attribute's value, hashable: mappings and sequences by their contents."""
    if type(value) in _PLAIN:
        return value
    if type(value) is MappingProxyType:  # a workload's labels
        return ("#map", tuple(sorted((k, _value_key(v)) for k, v in value.items())))
    try:
        hash(value)
        return value
    except TypeError:
        pass
    if isinstance(value, Mapping):
        return ("#map", tuple(sorted((k, _value_key(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("#seq", tuple(_value_key(v) for v in value))
    return _Identity(value)  # (the Trace holds the values it was made from)
