"""The agent's xDS relay: Envoy <-> agent <-> control plane, with the last config Envoy ACKed.

Envoy speaks state-of-the-world ADS to the agent over a unix socket; the agent speaks the same
upstream. Each response from upstream is passed down with a nonce of the agent's; Envoy's ACK or
NACK goes back up under the upstream nonce, so the control plane sees exactly what Envoy accepted
(and Envoy's error text). What Envoy ACKs is kept: a restarted Envoy is served from it at once,
whether or not the control plane is reachable.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import OrderedDict
from typing import AsyncIterator, Awaitable, Callable, TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from lattice.translate import CLUSTER, LISTENER, TYPE_ORDER

log = logging.getLogger("lattice.relay")
Request: TypeAlias = discovery_pb2.DiscoveryRequest
Response: TypeAlias = discovery_pb2.DiscoveryResponse
_KEEP_NONCES = 16


def _ordered(types) -> list[str]:
    return sorted(types, key=lambda t: TYPE_ORDER.index(t) if t in TYPE_ORDER else len(TYPE_ORDER))


class _EnvoySession:
    """One Envoy stream: what goes out to it, and which response each of our nonces carried."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[Response] = asyncio.Queue()
        self.sent: dict[str, OrderedDict[str, Response]] = {}

    def send(self, response: Response, nonce: str) -> None:
        down = Response()
        down.CopyFrom(response)
        down.nonce = nonce
        by_nonce = self.sent.setdefault(response.type_url, OrderedDict())
        by_nonce[nonce] = response
        while len(by_nonce) > _KEEP_NONCES:
            by_nonce.popitem(last=False)
        self.outbox.put_nowait(down)


class XdsRelay(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self, node: base_pb2.Node, upstream: str, credentials: Callable[[], grpc.ChannelCredentials], server_name: str
    ) -> None:
        self.node = node
        self.upstream = upstream
        self.credentials = credentials  # mTLS with the workload's current certificate, per connect
        self.server_name = server_name
        self.wanted: dict[str, Request] = {}  # Envoy's latest request per type (its subscription)
        self.good: dict[str, Response] = {}  # the last response Envoy ACKed, per type
        self.latest_nonce: dict[str, str] = {}  # the newest upstream nonce per type
        self.upstream_connected = False
        self.has_config = asyncio.Event()  # Envoy ACKed clusters and listeners at least once
        self._session: _EnvoySession | None = None
        self._upstream_queue: asyncio.Queue[Request] | None = None
        self._nonces = itertools.count(1)
        self.on_accept: Callable[[str, Response], None] = lambda type_url, response: None  # Envoy ACKed this response
        # Rewrites a response before Envoy sees it (extension configs: Wasm modules as local files).
        self.localize: Callable[[Response], Awaitable[Response]] | None = None
        # Several control-plane replicas (agent/servers.py): called when the stream to one is lost
        # (True if it had been open), it points `upstream` at the next and waits before the retry.
        self.on_upstream_lost: Callable[[bool], Awaitable[None]] | None = None

    # --- Envoy side -------------------------------------------------------------------------

    async def StreamAggregatedResources(self, requests: AsyncIterator[Request], context) -> AsyncIterator[Response]:
        session = self._session = _EnvoySession()
        reader = asyncio.create_task(self._read_envoy(session, requests), name="relay-envoy-reader")
        try:
            while True:
                yield await session.outbox.get()
        finally:
            reader.cancel()
            if self._session is session:
                self._session = None

    async def _read_envoy(self, session: _EnvoySession, requests: AsyncIterator[Request]) -> None:
        try:
            async for request in requests:
                self._from_envoy(session, request)
        except Exception as e:  # Envoy went away; its next stream starts a new session
            log.debug("envoy stream ended: %s", e)

    def _from_envoy(self, session: _EnvoySession, request: Request) -> None:
        type_url = request.type_url
        self.wanted[type_url] = request
        if not request.response_nonce:
            # A new subscription (Envoy started or restarted): answer from what Envoy last accepted
            # right away, then ask upstream for the current state.
            if type_url in self.good:
                session.send(self.good[type_url], self._nonce())
            self._upstream(self._subscription(type_url))
            return
        answered = session.sent.get(type_url, {}).get(request.response_nonce)
        if answered is None:
            return  # stale nonce from an earlier session
        if not request.HasField("error_detail"):
            self.good[type_url] = answered
            self.on_accept(type_url, answered)
            if CLUSTER in self.good and LISTENER in self.good:
                self.has_config.set()
        else:
            log.warning(
                "envoy rejected %s version %s: %s",
                type_url.rsplit(".", 1)[-1],
                answered.version_info,
                request.error_detail.message,
            )
        up = Request()
        up.CopyFrom(request)
        up.ClearField("node")
        # An answer to a cached response carries the newest upstream nonce so a changed
        # subscription still reaches the control plane.
        up.response_nonce = answered.nonce or self.latest_nonce.get(type_url, "")
        self._upstream(up)

    def _nonce(self) -> str:
        return f"a{next(self._nonces)}"

    # --- control-plane side -----------------------------------------------------------------

    def _subscription(self, type_url: str) -> Request:
        wanted = self.wanted[type_url]
        good = self.good.get(type_url)
        return Request(
            type_url=type_url, resource_names=wanted.resource_names, version_info=good.version_info if good else ""
        )

    def _upstream(self, request: Request) -> None:
        if self._upstream_queue is not None:
            self._upstream_queue.put_nowait(request)

    def _from_upstream(self, response: Response) -> None:
        self.latest_nonce[response.type_url] = response.nonce
        if self._session is not None:
            self._session.send(response, self._nonce())

    async def run_upstream(self) -> None:
        """Keep one ADS stream to the control plane; on every (re)connect, resubscribe."""
        backoff = 0.2
        while True:
            was_connected = False
            try:
                await self._stream_upstream()
                backoff = 0.2
            except (grpc.aio.AioRpcError, TimeoutError, ConnectionError) as e:
                log.info("control plane xDS %s unavailable (%s)", self.upstream, _reason(e))
            finally:
                was_connected = self.upstream_connected
                self.upstream_connected = False
                self._upstream_queue = None
            if self.on_upstream_lost is not None:
                await self.on_upstream_lost(was_connected)
                continue
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 5.0)

    async def _stream_upstream(self) -> None:
        options = [("grpc.ssl_target_name_override", self.server_name)]
        async with grpc.aio.secure_channel(self.upstream, self.credentials(), options=options) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=5.0)
            queue: asyncio.Queue[Request] = asyncio.Queue()
            for type_url in _ordered(self.wanted):
                queue.put_nowait(self._subscription(type_url))
            self._upstream_queue = queue
            self.upstream_connected = True
            log.info("xDS stream to control plane %s open", self.upstream)
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(self._requests(queue))
            async for response in call:
                if self.localize is not None:
                    response = await self.localize(response)
                self._from_upstream(response)

    async def _requests(self, queue: asyncio.Queue[Request]) -> AsyncIterator[Request]:
        first = True
        while True:
            request = await queue.get()
            if first:
                request.node.CopyFrom(self.node)
                first = False
            yield request


def _reason(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return type(e).__name__
