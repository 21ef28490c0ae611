"""Incremental (delta) ADS: only resources that changed, plus the names that went away."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from envoy.service.discovery.v3 import discovery_pb2

from lattice.xds.cache import ProxySnapshot, XdsResource
from lattice.xds.sotw import WILDCARD_TYPES
from lattice.xds.stream import Outgoing, Stream, next_nonce, type_rank


@dataclass
class _Subscription:
    wildcard: bool
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client holds: name -> version
    nonce: str = ""
    sent_version: str = ""
    must_send: bool = True  # the first request of a type is always answered (Envoy waits on it)


class DeltaStream(Stream):
    def __init__(self, node_id, cache, board, budget=None) -> None:
        super().__init__(node_id, cache, board, budget)
        self.subscriptions: dict[str, _Subscription] = {}

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        sub = self.subscriptions.get(type_url)
        if sub is None:
            subscribe = set(request.resource_names_subscribe)
            wildcard = "*" in subscribe or (type_url in WILDCARD_TYPES and not subscribe)
            sub = self.subscriptions[type_url] = _Subscription(wildcard, known=dict(request.initial_resource_versions))
        elif request.response_nonce:
            if request.response_nonce == sub.nonce:
                self.record_answer(type_url, request, sub.sent_version, sub.sent_version)
        sub.names |= {n for n in request.resource_names_subscribe if n != "*"}
        for name in request.resource_names_subscribe:
            sub.known.pop(name, None)  # a (re)subscription is always answered with the resource
        for name in request.resource_names_unsubscribe:
            sub.names.discard(name)
            sub.known.pop(name, None)
        if "*" in request.resource_names_unsubscribe:
            sub.wildcard = False

    def responses(self, snapshot: ProxySnapshot) -> list[Outgoing]:
        out = []
        for type_url in sorted(self.subscriptions, key=type_rank):
            response = self._response(type_url, self.subscriptions[type_url], snapshot)
            if response is not None:
                out.append(response)
        return out

    def _response(self, type_url: str, sub: _Subscription, snapshot: ProxySnapshot):
        chosen = snapshot.chosen(type_url, None if sub.wildcard else sub.names)
        wanted = chosen.resources
        changed = [r for r in wanted if sub.known.get(r.name) != r.version]
        present = {r.name for r in wanted}
        removed = sorted(n for n in sub.known if n not in present)
        if not changed and not removed and not sub.must_send:
            return None
        for r in changed:
            sub.known[r.name] = r.version
        for name in removed:
            del sub.known[name]
        sub.nonce, sub.sent_version, sub.must_send = next_nonce(), chosen.version, False
        size = sum(len(r.body.value) for r in changed)
        self.board.sent(self.node_id, type_url, sub.sent_version, snapshot.label, size)
        return Outgoing(type_url, size, partial(_response, sub.sent_version, type_url, sub.nonce, changed, removed))


def _response(
    version: str, type_url: str, nonce: str, changed: list[XdsResource], removed: list[str]
) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=type_url,
        nonce=nonce,
        resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.body) for r in changed],
        removed_resources=removed,
    )
