"""State-of-the-world ADS: every response carries the full set of a type's (subscribed) resources."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from envoy.service.discovery.v3 import discovery_pb2

from lattice.translate import CLUSTER, ENDPOINT, LISTENER
from lattice.xds.budget import SendBudget
from lattice.xds.cache import ProxySnapshot, SnapshotCache, XdsResource
from lattice.xds.status import StatusBoard
from lattice.xds.stream import Outgoing, Stream, next_nonce, type_rank

WILDCARD_TYPES = (CLUSTER, LISTENER)


@dataclass
class _Subscription:
    names: frozenset[str] | None  # None: wildcard (all of this proxy's resources of the type)
    nonce: str = ""
    sent_version: str = ""
    must_send: bool = True  # a new or changed subscription is always answered
    # Set for endpoints when clusters were sent: a changed cluster warms until it gets its
    # endpoints, and Envoy asks for them with the same names and nonce, which looks like an ACK.
    answer_next: bool = False


class SotwStream(Stream):
    def __init__(
        self, node_id: str, cache: SnapshotCache, board: StatusBoard, budget: SendBudget | None = None
    ) -> None:
        super().__init__(node_id, cache, board, budget)
        self.subscriptions: dict[str, _Subscription] = {}

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        names = frozenset(request.resource_names)
        wanted = None if (type_url in WILDCARD_TYPES and (not names or "*" in names)) else names
        sub = self.subscriptions.get(type_url)
        if sub is None:
            self.subscriptions[type_url] = _Subscription(wanted)
            return
        if request.response_nonce and request.response_nonce != sub.nonce:
            return  # stale: an answer to a response that a newer one replaced
        if request.response_nonce:
            self.record_answer(type_url, request, sub.sent_version, request.version_info)
        if (
            wanted != sub.names
            or not request.response_nonce
            or (sub.answer_next and not request.HasField("error_detail"))
        ):
            sub.names, sub.must_send, sub.answer_next = wanted, True, False

    def responses(self, snapshot: ProxySnapshot) -> list[Outgoing]:
        out = []
        for type_url in sorted(self.subscriptions, key=type_rank):
            sub = self.subscriptions[type_url]
            chosen = snapshot.chosen(type_url, sub.names)  # worked out once per set of resources
            version = chosen.version
            if version == sub.sent_version and not sub.must_send:
                continue
            sub.nonce, sub.sent_version, sub.must_send = next_nonce(), version, False
            if type_url == CLUSTER and ENDPOINT in self.subscriptions:
                self.subscriptions[ENDPOINT].answer_next = True
            self.board.sent(self.node_id, type_url, version, snapshot.label, chosen.size, len(chosen.resources))
            out.append(
                Outgoing(type_url, chosen.size, partial(_response, version, type_url, sub.nonce, chosen.resources))
            )
        return out


def _response(version: str, type_url: str, nonce: str, resources: list[XdsResource]) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=type_url, nonce=nonce, resources=[r.body for r in resources]
    )
