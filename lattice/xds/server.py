"""The gRPC AggregatedDiscoveryService: state-of-the-world and delta streams over one cache."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from lattice.xds.cache import SnapshotCache
from lattice.xds.delta import DeltaStream
from lattice.xds.sotw import SotwStream
from lattice.xds.status import StatusBoard

log = logging.getLogger("lattice.xds")

# Called with the node id when a proxy's first request arrives, and when its stream ends.
ConnectHook = Callable[[str], Awaitable[None]]
# Called with the node id and the peer's certificate URI SANs; returns why it is refused, or None.
Authorizer = Callable[[str, list[str]], str | None]


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache, board: StatusBoard, on_connect: ConnectHook, on_disconnect: ConnectHook, authorize: Authorizer | None = None) -> None:
        self._cache = cache
        self._authorize = authorize
        self._board = board
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._streams: dict[str, int] = {}  # node id -> open stream count

    async def StreamAggregatedResources(self, requests: AsyncIterator, context) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._serve(requests, context, SotwStream, "sotw"):
            yield response

    async def DeltaAggregatedResources(self, requests: AsyncIterator, context) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in self._serve(requests, context, DeltaStream, "delta"):
            yield response

    async def _serve(self, requests: AsyncIterator, context, stream_type, protocol: str) -> AsyncIterator:
        inbox: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_pump(requests, inbox), name="ads-reader")
        node_id = ""
        try:
            first = await inbox.get()
            if first is None:
                return
            if not first.node.id:
                log.warning("ADS stream without a node id; closing it")
                return
            if self._authorize is not None:
                refused = self._authorize(first.node.id, peer_uris(context))
                if refused:  # before the stream counts as the node's: a stranger cannot disconnect it
                    log.warning("ADS stream for %s refused: %s", first.node.id, refused)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
            node_id = first.node.id
            self._streams[node_id] = self._streams.get(node_id, 0) + 1
            self._board.connected(node_id, protocol)
            await self._on_connect(node_id)
            stream = stream_type(node_id, self._cache, self._board)
            async for response in stream.run(first, inbox):
                yield response
        finally:
            reader.cancel()
            if node_id:
                await self._closed(node_id)

    async def _closed(self, node_id: str) -> None:
        left = self._streams.get(node_id, 1) - 1
        if left > 0:
            self._streams[node_id] = left
            return
        self._streams.pop(node_id, None)
        self._board.disconnected(node_id)
        await self._on_disconnect(node_id)

    def connected_nodes(self) -> list[str]:
        return sorted(self._streams)


def peer_uris(context) -> list[str]:
    """The URI SANs of the client certificate gRPC verified (empty on an insecure channel)."""
    auth = context.auth_context() or {}
    names = [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    return [n for n in names if n.startswith("spiffe://")]


async def _pump(requests: AsyncIterator, inbox: asyncio.Queue) -> None:
    """Requests into a queue; None marks the end of the stream (client closed or broke)."""
    try:
        async for request in requests:
            await inbox.put(request)
    except Exception as e:  # a broken stream ends like a closed one
        log.debug("ADS stream read ended: %s", e)
    finally:
        await inbox.put(None)
