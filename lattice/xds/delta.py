"""Incremental (delta) ADS: only resources that changed, plus the names that went away.

What a stream last sent of a type is known as a `Selection` (the resources, by name, of one
proxy's set) whenever the client holds exactly it; the next push then needs only the difference
between two selections, which is worked out once for all proxies that hold the same pair (proxies
with equal reads hold the same interned sets and selections) and costs each stream only the
resources that changed, not a comparison of all it holds. A stream whose client state is not a
whole selection (a subscription just changed, or it reconnected with the versions it holds)
compares resource by resource once, and is back on the shared path after that response.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial

from envoy.service.discovery.v3 import discovery_pb2

from lattice.xds import wire
from lattice.xds.cache import EMPTY, ProxySnapshot, ResourceSet, Selection, XdsResource
from lattice.xds.sotw import WILDCARD_TYPES
from lattice.xds.stream import Outgoing, Stream, next_nonce, type_rank


@dataclass
class _Subscription:
    wildcard: bool
    names: frozenset[str] = frozenset()  # (a frozenset: its hash is worked out once, not per push)
    known: dict[str, str] = field(default_factory=dict)  # what the client holds: name -> version
    held: Selection | None = None  # when `known` is exactly this selection's resources
    source: ResourceSet | None = None  # the set `held` was chosen from
    nonce: str = ""
    sent_version: str = ""
    must_send: bool = True  # the first request of a type is always answered (Envoy waits on it)


class DeltaStream(Stream):
    def __init__(self, node_id, cache, board, budget=None) -> None:
        super().__init__(node_id, cache, board, budget)
        self.subscriptions: dict[str, _Subscription] = {}
        self._order: list[str] = []  # the subscribed types in the order responses go out

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        type_url = request.type_url
        sub = self.subscriptions.get(type_url)
        subscribe = request.resource_names_subscribe
        if sub is not None:
            if request.response_nonce and request.response_nonce == sub.nonce:
                self.record_answer(type_url, request, sub.sent_version, sub.sent_version)
            if not subscribe and not request.resource_names_unsubscribe and not request.initial_resource_versions:
                return sub.must_send  # an ACK or NACK, most requests by far: nothing else changes
        if sub is None:
            wildcard = "*" in subscribe or (type_url in WILDCARD_TYPES and not subscribe)
            # The versions a client says it holds (after a reconnect) stand for the names it
            # subscribes to in the same request: only what differs is sent.
            sub = self.subscriptions[type_url] = _Subscription(wildcard, known=dict(request.initial_resource_versions))
            self._order = sorted(self.subscriptions, key=type_rank)
        else:
            for name in subscribe:
                sub.known.pop(name, None)  # a later (re)subscription is always answered with the resource
            if "*" in subscribe:
                sub.wildcard = True
        unsubscribe = request.resource_names_unsubscribe
        added = {n for n in subscribe if n != "*"}
        if added - sub.names or unsubscribe:
            sub.names = (sub.names | added) - set(unsubscribe)
        for name in unsubscribe:
            sub.known.pop(name, None)
        if "*" in unsubscribe:
            sub.wildcard = False
        if subscribe or unsubscribe or request.initial_resource_versions:
            sub.held = None  # the client's state is no longer a whole selection
            return True
        return sub.must_send  # a first request naming nothing (a wildcard type): answered, as every first is

    def responses(self, snapshot: ProxySnapshot) -> list[Outgoing]:
        out = []
        for type_url in self._order:
            response = self._response(type_url, self.subscriptions[type_url], snapshot)
            if response is not None:
                out.append(response)
        return out

    def _response(self, type_url: str, sub: _Subscription, snapshot: ProxySnapshot):
        source = snapshot.resources.get(type_url, EMPTY)
        if source is sub.source and sub.held is not None and not sub.must_send:
            return None  # the same set and names as last time: the same selection (a shortcut)
        chosen = source.select(None if sub.wildcard else sub.names)
        sub.source = source
        if sub.held is chosen and not sub.must_send:
            return None
        if sub.held is not None:
            found = difference(sub.held, chosen)  # shared by every stream with this pair
        else:
            found = Difference(*_compared(sub.known, chosen))
        sub.held = chosen
        changed, removed = found.changed, found.removed
        if not changed and not removed and not sub.must_send:
            return None
        for r in changed:
            sub.known[r.name] = r.version
        for name in removed:
            sub.known.pop(name, None)
        sub.nonce, sub.sent_version, sub.must_send = next_nonce(), chosen.version, False
        self.board.sent(self.node_id, type_url, sub.sent_version, snapshot.label, found.size, len(changed))
        return Outgoing(type_url, found.size, partial(found.response, sub.sent_version, type_url, sub.nonce))


class Difference:
    """What a response carries from one selection to another: resources that changed, names that
    went away, and (once asked for) the response's bytes but for the nonce, for every stream
    that goes the same way."""

    __slots__ = ("changed", "removed", "size", "_shared", "__weakref__")

    def __init__(self, changed: list[XdsResource], removed: list[str]) -> None:
        self.changed, self.removed = changed, removed
        self.size = sum(len(r.body.value) for r in changed)
        self._shared: tuple[str, str, bytes] | None = None  # (version, type, encoded)

    def response(self, version: str, type_url: str, nonce: str) -> bytes:
        """The encoded DeltaDiscoveryResponse."""
        if self._shared is None or self._shared[:2] != (version, type_url):
            self._shared = (version, type_url, wire.shared_part(version, type_url, self.changed, self.removed))
        return wire.with_nonce(self._shared[2], nonce)


def difference(old: Selection, new: Selection) -> Difference:
    """Resources of `new` that `old` lacks or holds at another version, and names only `old` has.
    Kept on `new` by `old`'s identity (weakly: a pair is forgotten with its old selection)."""
    found = new.differences.get(id(old))
    if found is not None and found[0]() is old:
        return found[1]
    made = Difference(*_compared({r.name: r.version for r in old.resources}, new))
    new.differences[id(old)] = (weakref.ref(old), made)
    return made


def _compared(held: dict[str, str], new: Selection) -> tuple[list[XdsResource], list[str]]:
    """Resources of `new` not held at their version (`held`: name -> version), and held names `new` lacks."""
    changed = [r for r in new.resources if held.get(r.name) != r.version]
    present = {r.name for r in new.resources}
    return changed, sorted(n for n in held if n not in present)
