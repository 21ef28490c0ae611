"""The gRPC AggregatedDiscoveryService: state-of-the-world and delta streams over one cache."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from typing import AsyncIterator, Awaitable, Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from lattice.xds.budget import SendBudget
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
    def __init__(
        self,
        cache: SnapshotCache,
        board: StatusBoard,
        on_connect: ConnectHook,
        on_disconnect: ConnectHook,
        authorize: Authorizer | None = None,
        budget: SendBudget | None = None,
    ) -> None:
        self._cache = cache
        self._authorize = authorize
        self._board = board
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._streams: dict[str, int] = {}  # node id -> open stream count
        self._budget = budget or SendBudget()  # bytes of responses out with proxies, over all streams
        keep_response_buffers()

    # Handlers write with `context.write` rather than yield: gRPC keeps the last object a handler
    # yielded until it yields the next, and a stream waits for its next change for minutes; a
    # thousand proxies' last responses (every endpoint of the mesh, each) would wait with them.

    async def StreamAggregatedResources(self, requests: AsyncIterator, context) -> None:
        await self._serve(requests, context, SotwStream, "sotw")

    async def DeltaAggregatedResources(self, requests: AsyncIterator, context) -> None:
        await self._serve(requests, context, DeltaStream, "delta")

    async def _serve(self, requests: AsyncIterator, context, stream_type, protocol: str) -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        receiver = [_not_taken]  # the stream's `receive`, once it exists
        reader = asyncio.create_task(_pump(requests, inbox, receiver), name="ads-reader")
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
            stream = stream_type(node_id, self._cache, self._board, self._budget)
            receiver[0] = stream.receive
            async for response in stream.run(first, inbox):
                await context.write(response)
                del response  # sent: nothing here holds it while the stream waits
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

    def stats(self) -> dict:
        """What a metrics scrape reads of this server (`lattice.server.metrics.StatsSource`)."""
        return {"connected_proxies": len(self._streams)}


def add_to_server(ads: AdsServer, server) -> None:
    """Serve `ads` on a gRPC server, as the generated `add_AggregatedDiscoveryServiceServicer_to_server`
    does, except that a response may also be handed over already encoded (bytes, `wire.py`)."""
    service = "envoy.service.discovery.v3.AggregatedDiscoveryService"
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            ads.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_encoded,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            ads.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_encoded,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _encoded(response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_response_buffers() -> None:
    """Let the allocator keep a few MB for reuse. By default glibc maps blocks of a few hundred KB
    afresh, or trims them from the heap, as soon as they are freed; a response carrying a proxy's
    endpoints is encoded into such a block, so each would be encoded into newly faulted pages, ten
    times slower than into reused ones (0.6 ms against 0.05 ms for 380 KB). Fixed thresholds end
    that at the cost of at most 4 MB kept. Elsewhere than glibc, nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 2 << 20)
    mallopt(_M_TRIM_THRESHOLD, 4 << 20)


def peer_uris(context) -> list[str]:
    """The URI SANs of the client certificate gRPC verified (empty on an insecure channel)."""
    auth = context.auth_context() or {}
    names = [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    return [n for n in names if n.startswith("spiffe://")]


async def _pump(requests: AsyncIterator, inbox: asyncio.Queue, receiver: list) -> None:
    """Requests to the stream (`receiver[0]`), which takes them in at once or leaves them for the
    queue; None in the queue marks the end of the stream (client closed or broke)."""
    try:
        async for request in requests:
            if not receiver[0](request):
                inbox.put_nowait(request)  # (unbounded: never waits)
    except Exception as e:  # a broken stream ends like a closed one
        log.debug("ADS stream read ended: %s", e)
    finally:
        await inbox.put(None)


def _not_taken(request) -> bool:
    return False
