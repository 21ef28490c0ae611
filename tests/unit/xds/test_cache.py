"""The snapshot cache's serialization (xds/cache.py): a message shared by many proxies is serialized
once per push, with the same bytes and version as serializing it for each; sets of resources alike
are one object, whose selections and versions are worked out once."""

from __future__ import annotations

import hashlib

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from lattice.translate import CLUSTER, ROUTE
from lattice.xds import ProxySnapshot, SnapshotCache
from lattice.xds.cache import Encoder, ResourceSet


def cluster(name: str, seconds: int = 1) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, connect_timeout={"seconds": seconds})


def test_a_shared_message_is_serialized_once_with_the_bytes_and_version_of_the_plain_path():
    cache = SnapshotCache()
    encoder = Encoder(cache)
    shared = cluster("a")
    first = encoder.encode(CLUSTER, "a", shared, shared=True)
    shared.connect_timeout.seconds = 9  # (never done to a shared piece: shows it is not serialized again)
    assert encoder.encode(CLUSTER, "a", shared, shared=True) is first
    plain = cluster("a").SerializeToString(deterministic=True)
    assert first.body.value == plain and first.body.type_url == CLUSTER
    assert first.version == hashlib.blake2b(plain, digest_size=8).hexdigest()
    assert (
        cache.set("p", "1", {CLUSTER: [("a", cluster("a"))]}).resources[CLUSTER]["a"] is first
    )  # what the plain path gives


def test_messages_not_marked_shared_are_serialized_each_time():
    encoder = Encoder(SnapshotCache())
    message = cluster("a")
    first = encoder.encode(CLUSTER, "a", message)
    message.connect_timeout.seconds = 9
    assert (
        encoder.encode(CLUSTER, "a", message).body.value
        == cluster("a", 9).SerializeToString(deterministic=True)
        != first.body.value
    )


def test_the_next_push_keeps_the_serializations_of_pieces_still_shared():
    cache = SnapshotCache()
    kept, dropped = cluster("kept"), cluster("dropped")
    encoder = Encoder(cache)
    before = {m.name: encoder.encode(CLUSTER, m.name, m, shared=True) for m in (kept, dropped)}
    following = Encoder(cache, encoder, still_shared=lambda m: m is kept)
    kept.connect_timeout.seconds = dropped.connect_timeout.seconds = 5
    assert following.encode(CLUSTER, "kept", kept, shared=True) is before["kept"]
    assert following.encode(CLUSTER, "dropped", dropped, shared=True) is not before["dropped"]


def test_proxies_with_the_same_resources_hold_one_set_and_its_selections_are_worked_out_once():
    cache = SnapshotCache()
    a = cache.set("p1", "1", {CLUSTER: [("a", cluster("a")), ("b", cluster("b"))]})
    b = cache.set("p2", "1", {CLUSTER: [("a", cluster("a")), ("b", cluster("b"))]})
    assert a.resources[CLUSTER] is b.resources[CLUSTER]
    selection = a.chosen(CLUSTER, None)
    assert b.chosen(CLUSTER, None) is selection
    assert [r.name for r in selection.resources] == ["a", "b"]
    assert selection.version == ProxySnapshot.version_of(selection.resources)
    assert selection.size == sum(len(r.body.value) for r in selection.resources)
    assert [r.name for r in a.chosen(CLUSTER, ["b", "missing"]).resources] == ["b"]
    assert a.chosen(ROUTE, None).resources == [] and a.chosen(ROUTE, None).version == "empty"


def test_a_stream_is_woken_only_when_a_type_changed():
    cache = SnapshotCache()
    woken = []
    cache.watch("p", lambda: woken.append(1))
    encoder = Encoder(cache)
    routes = encoder.resource_set(ROUTE, [("r", route_pb2.RouteConfiguration(name="r"))])
    cache.set_resources("p", "1", {ROUTE: routes})
    cache.set_resources("p", "2", {ROUTE: encoder.resource_set(ROUTE, [("r", route_pb2.RouteConfiguration(name="r"))])})
    assert len(woken) == 1 and cache.get("p").label == "2"
    cache.set_resources("p", "3", {ROUTE: ResourceSet({})})
    assert len(woken) == 2
