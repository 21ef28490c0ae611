"""The bound on response bytes in flight over all streams (xds/budget.py)."""

from __future__ import annotations

import asyncio

import pytest

from lattice.xds.budget import SendBudget


async def test_takers_past_the_limit_wait_and_are_served_in_order():
    budget = SendBudget(100)
    assert await budget.take(60) == 60
    order = []

    async def taker(name: str, size: int):
        await budget.take(size)
        order.append(name)

    waiting = [asyncio.create_task(taker("big", 80), name="big"), asyncio.create_task(taker("small", 10), name="small")]
    await asyncio.sleep(0)
    assert order == [] and budget.free == 40  # the small one waits behind the big one: first come, first served
    budget.give(60)
    await asyncio.gather(*waiting)
    assert order == ["big", "small"] and budget.free == 10


async def test_a_response_larger_than_the_budget_goes_out_alone():
    budget = SendBudget(100)
    assert await budget.take(500) == 100 and budget.free == 0
    budget.give(100)
    assert budget.free == 100


async def test_a_cancelled_taker_leaves_the_budget_whole_and_unblocks_those_behind():
    budget = SendBudget(100)
    await budget.take(90)
    stuck = asyncio.create_task(budget.take(50), name="stuck")
    behind = asyncio.create_task(budget.take(5), name="behind")
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert await asyncio.wait_for(behind, 1) == 5
    assert budget.free == 5


@pytest.mark.parametrize("first_answers", [True, False], ids=["answered", "never-answered"])
async def test_a_proxy_waits_for_the_budget_until_another_answers_its_response(first_answers, monkeypatch):
    """Over real ADS streams: with room for one response, the second proxy's config goes out
    once the first proxy has ACKed its own, or once the first has held it ANSWER_SECONDS
    without answering (shortened here)."""
    from lattice.xds import stream as stream_module

    monkeypatch.setattr(stream_module, "ANSWER_SECONDS", 0.5)
    import grpc
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from lattice.translate import CLUSTER
    from lattice.xds import SnapshotCache, StatusBoard
    from lattice.xds.server import AdsServer, add_to_server

    async def nothing(node):
        return None

    budget = SendBudget(1)
    cache = SnapshotCache()
    for node in ("a", "b"):
        cache.set(node, "1", {CLUSTER: [("c", cluster_pb2.Cluster(name="c", connect_timeout={"seconds": 1}))]})
    server = grpc.aio.server()
    add_to_server(AdsServer(cache, StatusBoard(), nothing, nothing, budget=budget), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    try:
        requests = {node: asyncio.Queue() for node in ("a", "b")}

        async def feed(queue):
            while True:
                yield await queue.get()

        calls = {node: stub.StreamAggregatedResources(feed(q)) for node, q in requests.items()}
        requests["a"].put_nowait(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id="a")))
        first = await asyncio.wait_for(calls["a"].read(), 2)
        requests["b"].put_nowait(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id="b")))
        pending = asyncio.ensure_future(calls["b"].read())
        # b's response is built and waits for the budget (the server runs on this loop): a condition,
        # not a pause. Were the budget not holding it, nothing would wait and this would time out.
        async with asyncio.timeout(5):
            while not budget._waiting:  # noqa: ASYNC110 (the budget has no event to wait on)
                await asyncio.sleep(0.01)
        assert not pending.done()  # a's response holds the whole budget until a answers it
        if first_answers:
            requests["a"].put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce
                )
            )
        assert (await asyncio.wait_for(pending, 2)).type_url == CLUSTER
    finally:
        for call in calls.values():
            call.cancel()
        await channel.close()
        await server.stop(0)
