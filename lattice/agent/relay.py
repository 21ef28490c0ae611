"""The agent's xDS relay: Envoy <-> agent <-> control plane, with the last config Envoy ACKed.

Envoy speaks state-of-the-world ADS to the agent over a unix socket; upstream, the agent speaks
incremental (delta) ADS, so an endpoint change to one service costs the control plane one
ClusterLoadAssignment to each proxy that uses it, not every proxy's every cluster.

Why state-of-the-world toward Envoy: it is a local unix socket (its bytes cost nothing that
matters), every response to Envoy is then complete on its own (a restarted Envoy is replayed one
response per type and holds everything), and Envoy's state-of-the-world behaviour (a changed
cluster warms until its endpoints come again) is answered here from what the relay holds, with
no round trip upstream.

What the relay holds, per type: every resource the control plane sent on the stream (added or
updated resources replace by name, removed names go), each with its version; that merged view,
filtered to Envoy's subscription, is what every response to Envoy carries. Envoy's ACK or NACK of
a response built after upstream response X goes back up as a delta ACK or NACK of X's nonce, so
the control plane sees exactly what Envoy accepted (and Envoy's error text). What Envoy ACKs is
kept (`good`): a restarted Envoy is served from it at once, whether or not the control plane is
reachable. On every (re)connect upstream, to this replica or another, the relay tells the control
plane the versions it holds (`initial_resource_versions`), and gets only what differs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from lattice.agent.phases import STARTUP
from lattice.translate import CLUSTER, ENDPOINT, LISTENER, TYPE_ORDER
from lattice.translate.versions import set_version

log = logging.getLogger("lattice.relay")
Request: TypeAlias = discovery_pb2.DiscoveryRequest
Response: TypeAlias = discovery_pb2.DiscoveryResponse
DeltaRequest: TypeAlias = discovery_pb2.DeltaDiscoveryRequest
DeltaResponse: TypeAlias = discovery_pb2.DeltaDiscoveryResponse
_KEEP_NONCES = 16
WILDCARD_TYPES = (CLUSTER, LISTENER)  # subscribed to as a whole (Envoy asks for them by no name)
MORE, FEWER = "more", "fewer"  # how a subscription changed


def _ordered(types) -> list[str]:
    return sorted(types, key=lambda t: TYPE_ORDER.index(t) if t in TYPE_ORDER else len(TYPE_ORDER))


def wanted_names(request: Request) -> frozenset[str] | None:
    """The names an Envoy request subscribes to; None for a wildcard subscription."""
    names = frozenset(request.resource_names)
    if "*" in names or (request.type_url in WILDCARD_TYPES and not names):
        return None
    return names


def version_of(resources: list[discovery_pb2.Resource]) -> str:
    """The version of a set of resources, by the control plane's own formula."""
    return set_version((r.name, r.version) for r in resources)


@dataclass
class Held:
    """One type's resources as the control plane sent them on the current stream, merged."""

    resources: dict[str, discovery_pb2.Resource] = field(default_factory=dict)
    nonce: str = ""  # the newest upstream response's nonce ("" when none on this stream yet)
    updates: int = 0  # upstream responses merged (for tests and the bench: what came, how often)
    received: int = 0  # resources those responses carried, in all
    removed: int = 0  # names they removed, in all

    def merge(self, response: DeltaResponse) -> None:
        for resource in response.resources:
            self.resources[resource.name] = resource
        for name in response.removed_resources:
            self.resources.pop(name, None)
        self.nonce = response.nonce
        self.updates += 1
        self.received += len(response.resources)
        self.removed += len(response.removed_resources)

    def versions(self, names: frozenset[str] | None) -> dict[str, str]:
        return {n: r.version for n, r in self.resources.items() if names is None or n in names}

    def sotw(self, type_url: str, names: frozenset[str] | None) -> Response:
        """The complete state-of-the-world response for Envoy: every held resource it subscribes to."""
        chosen = [self.resources[n] for n in sorted(self.resources) if names is None or n in names]
        return Response(
            version_info=version_of(chosen),
            type_url=type_url,
            resources=[r.resource for r in chosen],
        )


class _EnvoySession:
    """One Envoy stream: what goes out to it, and which response each of our nonces carried
    (with the upstream stream and nonce whose merged state it holds; nonce "" for a replay of
    what was good)."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[Response] = asyncio.Queue()
        self.sent: dict[str, OrderedDict[str, tuple[Response, tuple[int, str]]]] = {}
        # Per type, the version this Envoy last rejected, until another is sent. Not sent again:
        # Envoy keeps a rejected filter config's version, and would take the same one for no change.
        self.rejected: dict[str, str] = {}

    def send(self, response: Response, nonce: str, upstream: tuple[int, str]) -> None:
        down = Response()
        down.CopyFrom(response)
        down.nonce = nonce
        by_nonce = self.sent.setdefault(response.type_url, OrderedDict())
        by_nonce[nonce] = (response, upstream)
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
        self.good: dict[str, Response] = {}  # the last response Envoy ACKed, per type (complete)
        self.held: dict[str, Held] = {}  # per type, what the control plane sent, merged
        self.upstream_connected = False
        self.has_config = asyncio.Event()  # Envoy ACKed clusters and listeners at least once
        self._session: _EnvoySession | None = None
        self._upstream_queue: asyncio.Queue[DeltaRequest] | None = None
        self._subscribed: dict[str, frozenset[str] | None] = {}  # per type, names asked of this stream
        self._stream = 0  # counts upstream streams: a nonce belongs to the stream that sent it
        self._endpoints_after_clusters = False  # Envoy re-asks endpoints for clusters it warms
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
        STARTUP.mark("envoy-connected")
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
            # right away, then with what the control plane sent since, if that differs.
            good = self.good.get(type_url)
            if good is not None:
                session.send(good, self._nonce(), (self._stream, ""))
            if self._subscribe(type_url) != MORE:
                self._send_held(session, type_url, unless_version=good.version_info if good else None)
            return
        found = session.sent.get(type_url, {}).get(request.response_nonce)
        if found is None:
            return  # stale nonce from an earlier session
        answered, (stream, upstream_nonce) = found
        if stream != self._stream:
            upstream_nonce = ""  # a nonce of an earlier upstream stream means nothing on this one
        nack = request.HasField("error_detail")
        # After a NACK, Envoy's next requests (a changed subscription) carry that response's nonce
        # with the version it held before: they answer nothing, and must not pass for an ACK.
        accepted = not nack and request.version_info == answered.version_info
        if accepted:
            self.good[type_url] = answered
            self.on_accept(type_url, answered)
            if CLUSTER in self.good and LISTENER in self.good:
                STARTUP.mark("config-acked")
                self.has_config.set()
        elif nack:
            session.rejected[type_url] = answered.version_info
            log.warning(
                "envoy rejected %s version %s: %s",
                type_url.rsplit(".", 1)[-1],
                answered.version_info,
                request.error_detail.message,
            )
        held = self.held.get(type_url)
        # A NACK of a replay still tells the control plane its newest response is not in force.
        answer_nonce = upstream_nonce or (held.nonce if nack and held is not None else "")
        if answer_nonce and (accepted or nack):
            up = DeltaRequest(type_url=type_url, response_nonce=answer_nonce)
            if nack:
                up.error_detail.CopyFrom(request.error_detail)
            self._upstream(up)
        change = self._subscribe(type_url)
        again = type_url == ENDPOINT and self._endpoints_after_clusters and not nack
        if again:
            self._endpoints_after_clusters = False
        # Names added come from upstream (its answer goes to Envoy); otherwise a changed
        # subscription, or endpoints asked again for warming clusters, are answered from here.
        if change != MORE and (again or change == FEWER):
            self._send_held(session, type_url)

    def _send_held(self, session: _EnvoySession, type_url: str, unless_version: str | None = None) -> None:
        """The merged view of a type, complete, to Envoy (unless it holds that version already)."""
        held = self.held.get(type_url)
        if held is None or not held.nonce:
            return
        response = held.sotw(type_url, wanted_names(self.wanted[type_url]))
        if response.version_info in (unless_version, session.rejected.get(type_url)):
            return
        session.rejected.pop(type_url, None)  # Envoy will hold another version: that one may come again
        if type_url == CLUSTER:
            self._endpoints_after_clusters = True
        elif type_url == ENDPOINT:  # it reaches the clusters Envoy warms: nothing more to answer
            self._endpoints_after_clusters = False
        session.send(response, self._nonce(), (self._stream, held.nonce))

    def _nonce(self) -> str:
        return f"a{next(self._nonces)}"

    # --- control-plane side -----------------------------------------------------------------

    def _subscribe(self, type_url: str) -> str | None:
        """Bring the upstream subscription of a type in line with Envoy's: MORE if names were
        added (the control plane answers with them, and the answer goes to Envoy), FEWER if
        names were only dropped, None if nothing changed or there is no stream to tell."""
        if self._upstream_queue is None:
            return None  # (re)connecting: the initial request will carry the subscription
        names = wanted_names(self.wanted[type_url])
        if type_url not in self._subscribed:
            self._upstream(self._initial(type_url))
            return MORE
        before = self._subscribed[type_url]
        if before == names:
            return None
        self._subscribed[type_url] = names
        if names is None or before is None:  # wildcard switched on or off: rarely, and whole
            subscribe, unsubscribe = (["*"], []) if names is None else (sorted(names), ["*"])
        else:
            subscribe, unsubscribe = sorted(names - before), sorted(before - names)
        held = self.held.get(type_url)
        if held is not None:
            for name in unsubscribe:
                held.resources.pop(name, None)
        self._upstream(
            DeltaRequest(type_url=type_url, resource_names_subscribe=subscribe, resource_names_unsubscribe=unsubscribe)
        )
        return MORE if subscribe else FEWER

    def _initial(self, type_url: str) -> DeltaRequest:
        """A type's first request on a new stream: what Envoy wants, and the versions held of it."""
        names = wanted_names(self.wanted[type_url])
        self._subscribed[type_url] = names
        held = self.held.setdefault(type_url, Held())
        held.nonce = ""  # nonces are the stream's: none from the last one is answered on this one
        for name in [n for n in held.resources if names is not None and n not in names]:
            del held.resources[name]
        return DeltaRequest(
            type_url=type_url,
            # Clusters and listeners are wildcard by asking for no name (Envoy's way); others by "*".
            resource_names_subscribe=sorted(names)
            if names is not None
            else ([] if type_url in WILDCARD_TYPES else ["*"]),
            initial_resource_versions=held.versions(names),
        )

    def _upstream(self, request: DeltaRequest) -> None:
        if self._upstream_queue is not None:
            self._upstream_queue.put_nowait(request)

    def _from_upstream(self, response: DeltaResponse) -> None:
        type_url = response.type_url
        held = self.held.setdefault(type_url, Held())
        held.merge(response)
        if self._session is not None and type_url in self.wanted:
            self._send_held(self._session, type_url)

    async def _localized(self, response: DeltaResponse) -> DeltaResponse:
        if self.localize is None or not response.resources:
            return response
        bodies = Response(type_url=response.type_url, resources=[r.resource for r in response.resources])
        local = await self.localize(bodies)
        if local is not bodies:
            for resource, body in zip(response.resources, local.resources, strict=True):
                resource.resource.CopyFrom(body)
        return response

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
                self._subscribed = {}
            if self.on_upstream_lost is not None:
                await self.on_upstream_lost(was_connected)
                continue
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 5.0)

    async def _stream_upstream(self) -> None:
        options = [("grpc.ssl_target_name_override", self.server_name)]
        async with grpc.aio.secure_channel(self.upstream, self.credentials(), options=options) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=5.0)
            queue: asyncio.Queue[DeltaRequest] = asyncio.Queue()
            self._subscribed = {}
            self._stream += 1
            for type_url in _ordered(self.wanted):
                queue.put_nowait(self._initial(type_url))
            self._upstream_queue = queue
            self.upstream_connected = True
            STARTUP.mark("xds-upstream")
            log.info("xDS stream to control plane %s open", self.upstream)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            async for response in stub.DeltaAggregatedResources(self._requests(queue)):
                self._from_upstream(await self._localized(response))

    async def _requests(self, queue: asyncio.Queue[DeltaRequest]) -> AsyncIterator[DeltaRequest]:
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
