"""ADS protocol behaviour over a real in-process gRPC server: what a client sends, what it gets."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from lattice.translate import CLUSTER, ENDPOINT, ROUTE
from lattice.xds import SnapshotCache, StatusBoard
from lattice.xds.server import AdsServer, add_to_server

NODE = "web-v1-000001.default"


def _clusters(*names: str, timeout: int = 1) -> dict:
    return {
        CLUSTER: [(n, cluster_pb2.Cluster(name=n, connect_timeout={"seconds": timeout})) for n in names],
        ENDPOINT: [(n, endpoint_pb2.ClusterLoadAssignment(cluster_name=n)) for n in names],
    }


@pytest.fixture
async def ads():
    cache, board = SnapshotCache(), StatusBoard()
    connected = []

    async def on_connect(node):
        connected.append(node)

    server = grpc.aio.server()
    add_to_server(AdsServer(cache, board, on_connect, on_connect), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield cache, board, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), connected
    await channel.close()
    await server.stop(0)


class Client:
    """A scripted xDS client: requests go out through a queue, responses are read one by one."""

    def __init__(self, call_factory):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.responses: asyncio.Queue = asyncio.Queue()
        self.call = call_factory(self._requests())
        # Reading in the background: cancelling a pending read() would cancel the whole RPC.
        self.reader = asyncio.ensure_future(self._read())
        self.sentinels = 0

    async def _requests(self):
        while True:
            yield await self.queue.get()

    async def _read(self):
        async for response in self.call:
            self.responses.put_nowait(response)

    def send(self, request) -> None:
        self.queue.put_nowait(request)

    async def recv(self, timeout: float = 2.0):
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self) -> bool:
        """Whether the requests sent so far got no response: a sentinel goes after them (a route
        subscription to a name never asked before, which the server always answers, in the order
        the requests came) and must be the next response."""
        self.sentinels += 1
        self.send(_sotw(ROUTE, names=[f"sentinel-{self.sentinels}"]))
        return (await self.recv()).type_url == ROUTE


async def _until(condition, timeout: float = 5.0) -> None:
    """Until `condition()` holds on the server's status board (the server runs on this loop)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the board has no event to wait on)
            await asyncio.sleep(0.01)


def _sotw(type_url: str, names=(), version: str = "", nonce: str = "", error: str | None = None, node: bool = False):
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
    )
    if node:
        r.node.CopyFrom(base_pb2.Node(id=NODE))
    if error:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


async def test_sotw_ack_nack_and_updates(ads):
    cache, board, stub, connected = ads
    cache.set(NODE, "1", _clusters("a", "b"))
    client = Client(stub.StreamAggregatedResources)
    client.send(_sotw(CLUSTER, node=True))
    first = await client.recv()
    assert [cluster_pb2.Cluster.FromString(r.value).name for r in first.resources] == ["a", "b"]
    assert connected == [NODE]
    client.send(_sotw(CLUSTER, version=first.version_info, nonce=first.nonce))
    await _until(lambda: board.get(NODE).types[CLUSTER].state == "SYNCED")

    cache.set(NODE, "2", _clusters("a", "b", timeout=5))
    second = await client.recv()
    assert second.version_info != first.version_info
    client.send(_sotw(CLUSTER, version=first.version_info, nonce=second.nonce, error="bad cluster"))
    await _until(lambda: board.get(NODE).types[CLUSTER].state == "NACKED")
    status = board.get(NODE).types[CLUSTER]
    assert status.state == "NACKED" and status.nack == "bad cluster" and status.acked_version == first.version_info
    assert await client.nothing()  # a NACKed version is not pushed again until the config changes

    client.send(_sotw(CLUSTER, version=first.version_info, nonce="999"))  # stale nonce: ignored
    assert await client.nothing()
    assert board.get(NODE).types[CLUSTER].state == "NACKED"
    # The same nonce again without an error, still holding the first version (what Envoy sends
    # when it asks for something else after rejecting): the NACK stands, with Envoy's message.
    client.send(_sotw(CLUSTER, version=first.version_info, nonce=second.nonce))
    assert await client.nothing()
    status = board.get(NODE).types[CLUSTER]
    assert (status.state, status.nack) == ("NACKED", "bad cluster")

    cache.set(NODE, "3", _clusters("a", "b"))  # fixed: the next version is accepted
    third = await client.recv()
    client.send(_sotw(CLUSTER, version=third.version_info, nonce=third.nonce))
    await _until(lambda: board.get(NODE).types[CLUSTER].state == "SYNCED")
    assert board.get(NODE).types[CLUSTER].nack == ""


async def test_sotw_named_subscription_gets_only_those(ads):
    cache, _, stub, _ = ads
    cache.set(NODE, "1", _clusters("a", "b", "c"))
    client = Client(stub.StreamAggregatedResources)
    client.send(_sotw(ENDPOINT, names=["c", "a", "missing"], node=True))
    response = await client.recv()
    assert [endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name for r in response.resources] == [
        "a",
        "c",
    ]
    client.send(_sotw(ENDPOINT, names=["b"], version=response.version_info, nonce=response.nonce))
    changed = await client.recv()
    assert [endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name for r in changed.resources] == ["b"]


async def test_sotw_answers_the_endpoint_request_of_a_changed_cluster(ads):
    """A changed cluster warms until it gets endpoints; Envoy asks again with the same names and
    nonce. Unanswered, the cluster would wait out Envoy's 15 s initial fetch timeout."""
    cache, _, stub, _ = ads
    cache.set(NODE, "1", _clusters("a"))
    client = Client(stub.StreamAggregatedResources)
    client.send(_sotw(CLUSTER, node=True))
    clusters = await client.recv()
    client.send(_sotw(CLUSTER, version=clusters.version_info, nonce=clusters.nonce))
    client.send(_sotw(ENDPOINT, names=["a"]))
    endpoints = await client.recv()
    client.send(_sotw(ENDPOINT, names=["a"], version=endpoints.version_info, nonce=endpoints.nonce))
    assert await client.nothing()  # a plain ACK gets no answer

    cache.set(NODE, "2", _clusters("a", timeout=5))  # the cluster changes, its endpoints do not
    changed = await client.recv()
    assert changed.type_url == CLUSTER
    client.send(_sotw(ENDPOINT, names=["a"], version=endpoints.version_info, nonce=endpoints.nonce))
    again = await client.recv()
    assert again.type_url == ENDPOINT and again.version_info == endpoints.version_info
    client.send(_sotw(ENDPOINT, names=["a"], version=again.version_info, nonce=again.nonce))
    assert await client.nothing()  # and only that once


async def test_unregistered_node_waits_until_it_has_a_snapshot(ads):
    cache, _, stub, _ = ads
    client = Client(stub.StreamAggregatedResources)
    client.send(_sotw(CLUSTER, node=True))
    # No sentinel can pass a stream that waits for its node's first snapshot: a bounded wait it is.
    await asyncio.sleep(0.3)
    assert client.responses.empty()
    cache.set(NODE, "1", _clusters("a"))
    assert len((await client.recv()).resources) == 1


def _delta(
    type_url: str,
    subscribe=(),
    unsubscribe=(),
    nonce: str = "",
    initial=None,
    error: str | None = None,
    node: bool = False,
):
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if node:
        r.node.CopyFrom(base_pb2.Node(id=NODE))
    if error:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


async def test_delta_sends_only_changes_and_removals(ads):
    cache, board, stub, _ = ads
    cache.set(NODE, "1", _clusters("a", "b"))
    client = Client(stub.DeltaAggregatedResources)
    client.send(_delta(CLUSTER, node=True))
    first = await client.recv()
    assert sorted(r.name for r in first.resources) == ["a", "b"] and not first.removed_resources
    client.send(_delta(CLUSTER, nonce=first.nonce))
    await _until(lambda: board.get(NODE).types[CLUSTER].state == "SYNCED")

    snapshot = _clusters("a", "c")
    snapshot[CLUSTER][0] = ("a", cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 9}))
    cache.set(NODE, "2", snapshot)
    second = await client.recv()
    assert sorted(r.name for r in second.resources) == ["a", "c"] and list(second.removed_resources) == ["b"]
    client.send(_delta(CLUSTER, nonce=second.nonce, error="no"))
    await _until(lambda: board.get(NODE).types[CLUSTER].nack == "no")


async def test_delta_reconnect_with_known_versions_gets_nothing_it_has(ads):
    cache, _, stub, _ = ads
    snapshot = cache.set(NODE, "1", _clusters("a", "b"))
    known = {name: r.version for name, r in snapshot.resources[CLUSTER].items()}
    client = Client(stub.DeltaAggregatedResources)
    client.send(_delta(CLUSTER, initial=known, node=True))
    response = await client.recv()  # the first request is always answered, here with nothing new
    assert not response.resources and not response.removed_resources


async def test_identical_resources_are_serialized_once_across_proxies(ads):
    cache, *_ = ads
    a = cache.set("p1", "1", _clusters("shared"))
    b = cache.set("p2", "1", _clusters("shared"))
    assert a.resources[CLUSTER]["shared"] is b.resources[CLUSTER]["shared"]
