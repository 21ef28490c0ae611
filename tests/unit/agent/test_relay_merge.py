"""The relay's merge of delta responses from the control plane into complete state-of-the-world
responses for Envoy: what Envoy gets, what goes back upstream, what a restarted Envoy is replayed.

The relay's two protocol ends are driven directly with real protobuf messages (no sockets): the
requests it queues for the control plane are read from its upstream queue, and what it sends
Envoy from its session's outbox. The gRPC paths themselves are covered by the integration tests.
"""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from lattice.agent.relay import XdsRelay, _EnvoySession, version_of
from lattice.translate import CLUSTER, ENDPOINT


def _any(message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def cla(name: str, *addresses: str) -> discovery_pb2.Resource:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = assignment.endpoints.add()
    for address in addresses:
        group.lb_endpoints.add().endpoint.address.socket_address.address = address
    return discovery_pb2.Resource(name=name, version=f"{name}-{'-'.join(addresses)}", resource=_any(assignment))


def cluster(name: str, timeout: int = 1) -> discovery_pb2.Resource:
    body = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, connect_timeout={"seconds": timeout})
    return discovery_pb2.Resource(name=name, version=f"{name}-{timeout}", resource=_any(body))


def delta(type_url: str, nonce: str, *resources, removed=()) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, resources=list(resources), removed_resources=list(removed)
    )


def sotw(
    type_url: str, names=(), nonce: str = "", error: str | None = None, version: str = ""
) -> discovery_pb2.DiscoveryRequest:
    """Envoy's request: `version` is what it holds (an ACK's is the version of the response it accepts)."""
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def addresses(response: discovery_pb2.DiscoveryResponse) -> dict[str, list[str]]:
    out = {}
    for body in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        body.Unpack(assignment)
        out[assignment.cluster_name] = [
            e.endpoint.address.socket_address.address for g in assignment.endpoints for e in g.lb_endpoints
        ]
    return out


class Ends:
    """A relay with an open upstream stream and an Envoy session, both read from here."""

    def __init__(self) -> None:
        self.relay = XdsRelay(base_pb2.Node(id="web-v1.default"), "unused:0", lambda: None, "cp")
        self.up: asyncio.Queue = asyncio.Queue()
        self.relay._upstream_queue = self.up  # what `_stream_upstream` sets once connected
        self.session = self.envoy_restarts()

    def envoy_restarts(self) -> _EnvoySession:
        self.session = self.relay._session = _EnvoySession()
        return self.session

    def from_envoy(self, request) -> None:
        self.relay._from_envoy(self.session, request)

    def upstream(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        out = []
        while not self.up.empty():
            out.append(self.up.get_nowait())
        return out

    def to_envoy(self) -> list[discovery_pb2.DiscoveryResponse]:
        out = []
        while not self.session.outbox.empty():
            out.append(self.session.outbox.get_nowait())
        return out


@pytest.fixture
def ends():
    return Ends()


def test_envoy_gets_the_whole_merged_view_after_adds_updates_and_removals(ends):
    ends.from_envoy(sotw(ENDPOINT, ["a", "b", "c"]))
    (first,) = ends.upstream()
    assert sorted(first.resource_names_subscribe) == ["a", "b", "c"] and not first.initial_resource_versions

    ends.relay._from_upstream(delta(ENDPOINT, "1", cla("a", "10.0.0.1"), cla("b", "10.0.0.2"), cla("c", "10.0.0.3")))
    (r1,) = ends.to_envoy()
    assert addresses(r1) == {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["10.0.0.3"]}
    ends.from_envoy(sotw(ENDPOINT, ["a", "b", "c"], nonce=r1.nonce, version=r1.version_info))
    (ack,) = ends.upstream()
    assert ack.response_nonce == "1" and not ack.HasField("error_detail")

    # Only "b" changed upstream: Envoy still gets all three, "b" new.
    ends.relay._from_upstream(delta(ENDPOINT, "2", cla("b", "10.0.0.2", "10.0.0.9")))
    (r2,) = ends.to_envoy()
    assert addresses(r2) == {"a": ["10.0.0.1"], "b": ["10.0.0.2", "10.0.0.9"], "c": ["10.0.0.3"]}
    # "c" removed upstream.
    ends.relay._from_upstream(delta(ENDPOINT, "3", removed=["c"]))
    (r3,) = ends.to_envoy()
    assert addresses(r3) == {"a": ["10.0.0.1"], "b": ["10.0.0.2", "10.0.0.9"]}
    assert r3.version_info == version_of([ends.relay.held[ENDPOINT].resources[n] for n in ("a", "b")])
    assert len({r1.version_info, r2.version_info, r3.version_info}) == 3


def test_a_nack_goes_upstream_as_a_delta_nack_and_the_last_good_view_stays(ends):
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "7", cla("a", "10.0.0.1"), cla("b", "10.0.0.2")))
    (good,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"], nonce=good.nonce, version=good.version_info))
    ends.upstream()

    ends.relay._from_upstream(delta(ENDPOINT, "8", cla("a", "10.9.9.9")))
    (bad,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"], nonce=bad.nonce, error="endpoint a is bad"))
    (nack,) = ends.upstream()
    assert nack.type_url == ENDPOINT and nack.response_nonce == "8"
    assert nack.error_detail.message == "endpoint a is bad"
    assert addresses(ends.relay.good[ENDPOINT]) == {"a": ["10.0.0.1"], "b": ["10.0.0.2"]}


def test_a_subscription_change_after_a_nack_is_not_taken_for_an_ack(ends):
    """Envoy's requests after a NACK carry the rejected response's nonce and the version it held
    before (here: a drained listener's filter config dropped from the subscription). Taken for an
    ACK, the rejected view would be kept as good, replayed to a restarted Envoy, and `lattice
    status` would call the rejection accepted."""
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "1", cla("a", "10.0.0.1"), cla("b", "10.0.0.2")))
    (good,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"], nonce=good.nonce, version=good.version_info))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "2", cla("a", "10.9.9.9")))
    (bad,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"], nonce=bad.nonce, version=good.version_info, error="a is bad"))
    (nack,) = ends.upstream()
    assert nack.error_detail.message == "a is bad"

    ends.from_envoy(sotw(ENDPOINT, ["a"], nonce=bad.nonce, version=good.version_info))
    (change,) = ends.upstream()  # only the changed subscription goes up: no ACK of "2"
    assert list(change.resource_names_unsubscribe) == ["b"] and not change.response_nonce
    (again,) = ends.to_envoy()  # Envoy gets the held view for its new subscription, to accept or not
    assert addresses(again) == {"a": ["10.9.9.9"]}
    assert addresses(ends.relay.good[ENDPOINT]) == {"a": ["10.0.0.1"], "b": ["10.0.0.2"]}
    ends.envoy_restarts()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"]))
    assert addresses(ends.to_envoy()[0]) == {"a": ["10.0.0.1"], "b": ["10.0.0.2"]}  # what it accepted


def test_a_view_envoy_rejected_is_not_sent_to_it_again(ends):
    """Envoy keeps a rejected filter config's version (ECDS: a Wasm module that does not load) and
    answers the same version again with an ACK. The relay does not send it again, so the
    rejection stands in `lattice status`; a changed view, or a restarted Envoy, gets it."""
    ends.from_envoy(sotw(ENDPOINT, ["a"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "1", cla("a", "10.9.9.9")))
    (bad,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a"], nonce=bad.nonce, error="a is bad"))
    ends.upstream()

    # A name dropped that was never held: the view is the one rejected.
    ends.from_envoy(sotw(ENDPOINT, ["a", "z"], nonce=bad.nonce))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "2"))  # the control plane has no "z"
    ends.from_envoy(sotw(ENDPOINT, ["a"], nonce=bad.nonce))
    assert ends.to_envoy() == []
    ends.relay._from_upstream(delta(ENDPOINT, "3", cla("a", "10.0.0.1")))  # fixed upstream
    (fixed,) = ends.to_envoy()
    assert addresses(fixed) == {"a": ["10.0.0.1"]}
    ends.relay._from_upstream(delta(ENDPOINT, "4", cla("a", "10.9.9.9")))  # broken again
    (again,) = ends.to_envoy()
    assert again.version_info == bad.version_info  # rejected earlier, accepted since: sent


def test_a_restarted_envoy_is_replayed_everything_it_had_accepted_after_partial_updates(ends):
    ends.from_envoy(sotw(ENDPOINT, ["a", "b", "c"]))
    ends.upstream()
    for nonce, response in (
        ("1", delta(ENDPOINT, "1", cla("a", "1.1.1.1"), cla("b", "2.2.2.2"), cla("c", "3.3.3.3"))),
        ("2", delta(ENDPOINT, "2", cla("a", "1.1.1.9"))),
        ("3", delta(ENDPOINT, "3", cla("c", "3.3.3.9"))),
    ):
        ends.relay._from_upstream(response)
        (sent,) = ends.to_envoy()
        ends.from_envoy(sotw(ENDPOINT, ["a", "b", "c"], nonce=sent.nonce, version=sent.version_info))
        assert ends.upstream()[0].response_nonce == nonce

    ends.relay._upstream_queue = None  # the control plane is down
    ends.envoy_restarts()
    ends.from_envoy(sotw(ENDPOINT, ["a", "b", "c"]))
    (replay,) = ends.to_envoy()
    assert addresses(replay) == {"a": ["1.1.1.9"], "b": ["2.2.2.2"], "c": ["3.3.3.9"]}


def test_endpoints_asked_again_for_warming_clusters_are_answered_by_the_relay(ends):
    ends.from_envoy(sotw(CLUSTER))
    (cds,) = ends.upstream()
    assert cds.type_url == CLUSTER and not cds.resource_names_subscribe  # wildcard, as Envoy asks
    ends.relay._from_upstream(delta(CLUSTER, "1", cluster("a")))
    (c1,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "2", cla("a", "10.0.0.1")))
    (e1,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a"], nonce=e1.nonce, version=e1.version_info))
    ends.from_envoy(sotw(CLUSTER, nonce=c1.nonce, version=c1.version_info))
    ends.upstream()

    # The cluster changes; its endpoints do not, so the control plane sends none: Envoy warms the
    # new cluster and asks for the same endpoints again, and must get them.
    ends.relay._from_upstream(delta(CLUSTER, "3", cluster("a", timeout=5)))
    (c2,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["a"], nonce=e1.nonce, version=e1.version_info))
    (again,) = ends.to_envoy()
    assert again.type_url == ENDPOINT and addresses(again) == {"a": ["10.0.0.1"]}


def test_a_changed_subscription_asks_upstream_only_for_the_difference(ends):
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "1", cla("a", "1.1.1.1"), cla("b", "2.2.2.2")))
    (r1,) = ends.to_envoy()
    ends.from_envoy(sotw(ENDPOINT, ["b", "c"], nonce=r1.nonce, version=r1.version_info))
    ack, change = ends.upstream()
    assert list(change.resource_names_subscribe) == ["c"] and list(change.resource_names_unsubscribe) == ["a"]
    assert not ends.to_envoy()  # "c" comes from upstream; then Envoy gets b and c
    ends.relay._from_upstream(delta(ENDPOINT, "2", cla("c", "3.3.3.3")))
    (r2,) = ends.to_envoy()
    assert addresses(r2) == {"b": ["2.2.2.2"], "c": ["3.3.3.3"]}


def test_on_reconnect_the_relay_tells_the_control_plane_what_it_holds(ends):
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"]))
    ends.upstream()
    ends.relay._from_upstream(delta(ENDPOINT, "1", cla("a", "1.1.1.1"), cla("b", "2.2.2.2")))
    (sent,) = ends.to_envoy()

    # A new stream (to this replica or another): the first request carries the versions held.
    ends.relay._subscribed, ends.relay._stream = {}, ends.relay._stream + 1
    initial = ends.relay._initial(ENDPOINT)
    assert sorted(initial.resource_names_subscribe) == ["a", "b"]
    assert dict(initial.initial_resource_versions) == {"a": "a-1.1.1.1", "b": "b-2.2.2.2"}
    # Envoy's late ACK of what the old stream sent is not passed to the new one (whose nonces
    # start afresh: "1" there is another response).
    ends.from_envoy(sotw(ENDPOINT, ["a", "b"], nonce=sent.nonce, version=sent.version_info))
    assert ends.upstream() == []
