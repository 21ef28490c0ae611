"""The delta stream's per-resource diff: only what changed goes out, worked out once for proxies
that hold the same resources, and nothing a reconnecting client says it holds is sent again."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from lattice.translate import CLUSTER, ENDPOINT
from lattice.xds import SnapshotCache, StatusBoard
from lattice.xds.cache import Encoder
from lattice.xds.delta import DeltaStream, Difference


def assignment(name: str, *addresses: str) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = out.endpoints.add()
    for a in addresses:
        group.lb_endpoints.add().endpoint.address.socket_address.address = a
    return out


def mesh(endpoints: dict[str, tuple[str, ...]]) -> dict:
    return {
        CLUSTER: [(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS)) for n in sorted(endpoints)],
        ENDPOINT: [(n, assignment(n, *a)) for n, a in sorted(endpoints.items())],
    }


def push(cache: SnapshotCache, nodes: list[str], label: str, endpoints: dict) -> None:
    """One push to proxies with equal reads: one encoder, so they hold the same interned sets."""
    encoder = Encoder(cache)
    sets = {t: encoder.resource_set(t, items) for t, items in mesh(endpoints).items()}
    for node in nodes:
        cache.set_resources(node, label, sets)


def request(type_url: str, names=(), nonce: str = "", initial: dict | None = None):
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(names),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    r.node.CopyFrom(base_pb2.Node(id="x"))
    return r


def answer(stream: DeltaStream, cache: SnapshotCache) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    out = [
        discovery_pb2.DeltaDiscoveryResponse.FromString(o.build()) for o in stream.responses(cache.get(stream.node_id))
    ]
    for response in out:  # ACK each, as a client does
        stream.handle(request(response.type_url, nonce=response.nonce))
    return out


def test_an_endpoint_change_sends_each_proxy_only_the_changed_assignment_worked_out_once():
    cache, board = SnapshotCache(), StatusBoard()
    nodes = ["p1", "p2", "p3"]
    before = {"a": ("10.0.0.1",), "b": ("10.0.0.2",), "c": ("10.0.0.3",)}
    push(cache, nodes, "1", before)
    streams = [DeltaStream(n, cache, board) for n in nodes]
    for s in streams:
        s.handle(request(ENDPOINT, ["a", "b", "c"]))
        (first,) = answer(s, cache)
        assert sorted(r.name for r in first.resources) == ["a", "b", "c"]

    push(cache, nodes, "2", before | {"b": ("10.0.0.2", "10.0.0.9")})
    responses = [answer(s, cache) for s in streams]
    for (only,) in responses:
        assert [r.name for r in only.resources] == ["b"] and not only.removed_resources
    chosen = cache.get("p1").chosen(ENDPOINT, frozenset("abc"))
    assert len(chosen.differences) == 1  # one difference for the three streams
    assert all(board.get(n).types[ENDPOINT].resources_sent == 4 for n in nodes)  # 3 at first, then 1

    push(cache, nodes, "3", {"a": ("10.0.0.1",), "b": ("10.0.0.2", "10.0.0.9")})  # "c" goes away
    for s in streams:
        (gone,) = answer(s, cache)
        assert not gone.resources and list(gone.removed_resources) == ["c"]
    assert all(s.responses(cache.get(s.node_id)) == [] for s in streams)  # nothing new: nothing sent


def test_a_reconnect_with_the_versions_held_gets_only_what_differs():
    cache, board = SnapshotCache(), StatusBoard()
    push(cache, ["p1"], "1", {"a": ("10.0.0.1",), "b": ("10.0.0.2",)})
    held = {n: r.version for n, r in cache.get("p1").resources[ENDPOINT].items()}
    push(cache, ["p1"], "2", {"a": ("10.0.0.1",), "b": ("10.0.0.7",)})  # changed while away

    stream = DeltaStream("p1", cache, board)
    stream.handle(request(ENDPOINT, ["a", "b"], initial=held))
    (response,) = answer(stream, cache)
    assert [r.name for r in response.resources] == ["b"]


def test_a_subscription_change_is_answered_with_the_new_name_then_back_on_the_shared_path():
    cache, board = SnapshotCache(), StatusBoard()
    endpoints = {"a": ("10.0.0.1",), "b": ("10.0.0.2",)}
    push(cache, ["p1"], "1", endpoints)
    stream = DeltaStream("p1", cache, board)
    stream.handle(request(ENDPOINT, ["a"]))
    answer(stream, cache)
    stream.handle(request(ENDPOINT, ["b"]))
    (added,) = answer(stream, cache)
    assert [r.name for r in added.resources] == ["b"]
    push(cache, ["p1"], "2", endpoints | {"a": ("10.0.0.5",)})
    (changed,) = answer(stream, cache)
    assert [r.name for r in changed.resources] == ["a"]
    assert stream.subscriptions[ENDPOINT].held is cache.get("p1").chosen(ENDPOINT, frozenset("ab"))


def test_a_response_encoded_from_its_parts_reads_as_the_message_built_field_by_field():
    cache = SnapshotCache()
    push(cache, ["p1"], "1", {"a": ("10.0.0.1",), "b": ("10.0.0.2",) * 1000})  # b: lengths of 3 bytes
    resources = cache.get("p1").select(ENDPOINT, None)
    found = Difference(resources, ["gone", "also-gone"])
    built = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v7",
        type_url=ENDPOINT,
        nonce="42",
        resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.body) for r in resources],
        removed_resources=["gone", "also-gone"],
    )
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(found.response("v7", ENDPOINT, "42")) == built
    assert found.response("v7", ENDPOINT, "43") != found.response("v7", ENDPOINT, "42")  # the nonce is each stream's
