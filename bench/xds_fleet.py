"""Simulated Envoys for the control-plane scale benchmark: enrolled identities and ADS streams.

Parts:
- `Identity`, `Enroller` — a workload identity obtained as an agent obtains one: a join token, a
  key of its own, a CSR signed by the control plane's CA, registration over the agents' TLS API
  with the certificate it got.
- `SimProxy` / `DeltaSimProxy` — one state-of-the-world ADS stream over gRPC mTLS with that identity, in Envoy's
  order: CDS; EDS for the EDS clusters it got (asked again after every cluster update, since a
  changed cluster warms until its endpoints come); LDS once clusters are warm; RDS for the route
  names the listeners carry. Every response is ACKed with its version and nonce; one that cannot
  be decoded is NACKed with the last good version, as Envoy does. Or the same over incremental
  (delta) ADS, as the agent's relay speaks it upstream (the default).
- `Probe` — waits until every proxy of a chosen set has ACKed a response of one type that passes a
  test, and records when each did (the benchmark's clock is the ACK leaving the proxy).
- `Fleet` — the proxies of one run, their probes, and how quiet the streams are.

Rules: one asyncio loop runs them all. Decoding is memoized by a resource's bytes: a thousand
proxies hold mostly identical resources, and what is measured is the server, not this client.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import aiohttp
import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from lattice.identity import CONTROL_PLANE_NAME, SpiffeId, key_pem, make_csr, new_key
from lattice.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# A subchannel per proxy (gRPC would otherwise try to share them) and room for a big fleet's EDS.
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", CONTROL_PLANE_NAME),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 << 20),
]


# --- identities ---------------------------------------------------------------------------


@dataclass
class Identity:
    proxy_id: str
    service: str
    version: str
    address: str
    namespace: str = "default"
    key: bytes = b""
    chain: bytes = b""
    tls: ssl.SSLContext | None = None  # the agents' API with this certificate

    def registration(self) -> dict:
        """What `lattice run` registers for a healthy workload on port 9080."""
        return {
            "name": f"{self.service}-{self.version}",
            "namespace": self.namespace,
            "service": self.service,
            "service_account": self.service,
            "labels": {"app": self.service, "version": self.version},
            "address": self.address,
            "port": 9080,
            "app_port": 9,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }


def plan(count: int, services: int, versions: int, first: int = 0) -> list[Identity]:
    """`count` identities spread round-robin over services and their versions, each with its own
    loopback address (never bound: nothing sends traffic to a simulated proxy)."""
    out = []
    for i in range(first, first + count):
        service, version = f"svc-{i % services:02d}", f"v{(i // services) % versions + 1}"
        address = f"127.100.{i // 250}.{i % 250 + 1}"
        out.append(Identity(f"{service}-{version}-{i:06d}.default", service, version, address))
    return out


class Enroller:
    """Certificates, registration and deregistration through the agents' API, as agents do it."""

    def __init__(self, agent_api: str, bundle: bytes, directory: Path, concurrency: int = 16) -> None:
        self.api, self.bundle, self.dir = agent_api, bundle, directory
        self._limit = asyncio.Semaphore(concurrency)
        # Registrations in bulk go many at a time, as a fleet starting together would: the
        # server's debounce gathers them into few pushes.
        self._bulk = asyncio.Semaphore(256)
        # No keep-alive: idle connections held for a thousand identities would count in the
        # server's memory as if proxies cost it that.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=900)
        )

    async def close(self) -> None:
        await self._session.close()

    def _context(self, identity: Identity | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.bundle.decode())
        if identity is not None:  # ssl loads a key from files only
            cert, key = self.dir / f"{identity.proxy_id}.crt", self.dir / f"{identity.proxy_id}.key"
            cert.write_bytes(identity.chain)
            key.write_bytes(identity.key)
            context.load_cert_chain(cert, key)
        return context

    async def certify(self, identity: Identity, token: str) -> None:
        """Own key, CSR for spiffe://.../sa/<service>, paid with the service's join token."""
        key = new_key()
        csr = make_csr(key, SpiffeId("cluster.local", identity.namespace, identity.service))
        body = {"csr": csr.decode(), "proxy_id": identity.proxy_id}
        answer = await self._call("POST", "/agent/v1/certificate", None, body, {"Authorization": f"Bearer {token}"})
        identity.key, identity.chain = key_pem(key), answer["chain"].encode()
        identity.tls = self._context(identity)

    async def register(self, identity: Identity, many: bool = False) -> None:
        await self._call(
            "PUT",
            f"/agent/v1/workloads/{identity.proxy_id}",
            identity,
            identity.registration(),
            limit=self._bulk if many else None,
        )

    async def deregister(self, identity: Identity) -> None:
        await self._call("DELETE", f"/agent/v1/workloads/{identity.proxy_id}", identity)

    async def _call(
        self,
        method: str,
        path: str,
        identity: Identity | None,
        body: dict | None = None,
        headers: dict | None = None,
        limit: asyncio.Semaphore | None = None,
    ) -> dict:
        """One request, retried as agents retry (a server busy with a big fleet may be slow to
        take a connection)."""
        for attempt in range(5):
            try:
                return await self._request(method, path, identity, body, headers, limit or self._limit)
            except aiohttp.ClientConnectionError:
                if attempt == 4:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _request(
        self,
        method: str,
        path: str,
        identity: Identity | None,
        body: dict | None,
        headers: dict | None,
        limit: asyncio.Semaphore,
    ) -> dict:
        tls = identity.tls if identity is not None else self._context(None)
        async with (
            limit,
            self._session.request(
                method, self.api + path, json=body, headers=headers, ssl=tls, server_hostname=CONTROL_PLANE_NAME
            ) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer


# --- one simulated Envoy -------------------------------------------------------------------


@dataclass
class _TypeState:
    names: list[str] | None = None  # None: not subscribed yet
    version: str = ""  # last accepted
    nonce: str = ""  # last received
    resources: Sequence[any_pb2.Any] = ()
    acks: int = 0


_cluster_memo: dict[bytes, str | None] = {}
_listener_memo: dict[bytes, frozenset[str]] = {}


def eds_name(body: bytes) -> str | None:
    """The EDS resource an EDS cluster asks for; None for other cluster types."""
    found = _cluster_memo.get(body, "?")
    if found == "?":
        cluster = cluster_pb2.Cluster.FromString(body)
        found = (
            (cluster.eds_cluster_config.service_name or cluster.name)
            if cluster.type == cluster_pb2.Cluster.EDS
            else None
        )
        _cluster_memo[body] = found
    return found


def route_names(body: bytes) -> frozenset[str]:
    """The RDS route configurations a listener's HTTP connection managers name."""
    found = _listener_memo.get(body)
    if found is None:
        listener = listener_pb2.Listener.FromString(body)
        chains = [
            *listener.filter_chains,
            *([listener.default_filter_chain] if listener.HasField("default_filter_chain") else []),
        ]
        managers = [
            hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
            for c in chains
            for f in c.filters
            if f.typed_config.type_url == HCM
        ]
        found = _listener_memo[body] = frozenset(m.rds.route_config_name for m in managers if m.HasField("rds"))
    return found


class SimProxy:
    def __init__(self, identity: Identity, xds: str, bundle: bytes, fleet: Fleet) -> None:
        self.identity, self.xds, self.bundle, self.fleet = identity, xds, bundle, fleet
        self.types = {t: _TypeState() for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        self.nacks = 0
        self.error = ""
        self._call = None
        self._first = True

    @property
    def id(self) -> str:
        return self.identity.proxy_id

    @property
    def synced(self) -> bool:
        return all(t.acks for t in self.types.values())

    STREAM = "StreamAggregatedResources"  # the ADS method this kind of proxy speaks

    async def run(self) -> None:
        i = self.identity
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.bundle, private_key=i.key, certificate_chain=i.chain
        )
        try:
            async with grpc.aio.secure_channel(self.xds, credentials, options=CHANNEL_OPTIONS) as channel:
                self._call = getattr(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), self.STREAM)()
                await self._subscribe(CLUSTER, [])
                while (response := await self._call.read()) is not grpc.aio.EOF:
                    await self._handle(response)
        except grpc.aio.AioRpcError as e:
            self.error = f"{e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            if self._call is not None:
                self._call.cancel()
            raise

    def _node(self) -> base_pb2.Node:
        i = self.identity
        node = base_pb2.Node(id=i.proxy_id, cluster=f"{i.service}.{i.namespace}")
        meta = {
            "NAMESPACE": i.namespace,
            "WORKLOAD_NAME": f"{i.service}-{i.version}",
            "LABELS": {"app": i.service, "version": i.version},
        }
        node.metadata.CopyFrom(_struct(meta))
        return node

    async def _send(self, type_url: str, version: str, nonce: str, error: str | None = None) -> None:
        state = self.types[type_url]
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=state.names or []
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))  # INVALID_ARGUMENT
        if self._first:
            request.node.CopyFrom(self._node())
            self._first = False
        await self._call.write(request)

    async def _subscribe(self, type_url: str, names: list[str]) -> None:
        """A new or changed subscription, carrying what this type last accepted (as Envoy does)."""
        state = self.types[type_url]
        state.names = names
        await self._send(type_url, state.version, state.nonce)

    async def _handle(self, response) -> None:
        await self._on_response(response)

    async def _on_response(self, response: discovery_pb2.DiscoveryResponse) -> None:
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:
            return
        state.nonce = response.nonce
        self.fleet.received(response.ByteSize())
        try:
            await self._follow_up(type_url, response.resources)
        except DecodeError as e:
            self.nacks += 1
            await self._send(type_url, state.version, response.nonce, error=f"cannot decode: {e}")
            return
        first = not state.acks
        state.version, state.resources = response.version_info, response.resources
        await self._send(type_url, response.version_info, response.nonce)
        state.acks += 1
        self.fleet.acked(self, type_url, response.resources)
        if type_url == ENDPOINT and first and self.types[LISTENER].names is None:
            await self._subscribe(LISTENER, [])  # clusters are warm: now listeners

    async def _follow_up(self, type_url: str, resources: Sequence[any_pb2.Any]) -> None:
        """What Envoy asks for because of a response (the type's resources it then holds), before
        it ACKs it."""
        if type_url == CLUSTER:
            wanted = sorted({n for r in resources if (n := eds_name(r.value)) is not None})
            if wanted:  # changed clusters warm until their endpoints come: ask again
                await self._subscribe(ENDPOINT, wanted)
            elif self.types[LISTENER].names is None:
                await self._subscribe(LISTENER, [])
        elif type_url == LISTENER:
            wanted = sorted(set().union(*(route_names(r.value) for r in resources)))
            if wanted != self.types[ROUTE].names:
                await self._subscribe(ROUTE, wanted)


class DeltaSimProxy(SimProxy):
    """One incremental (delta) ADS stream, as the agent's relay speaks upstream: CDS and LDS by
    wildcard, EDS and RDS by name with subscribe/unsubscribe of the difference when the names
    change, every response merged into what the proxy holds (added or updated by name, removed
    names dropped) and ACKed by its nonce. Probes see the merged view, as Envoy gets it from the
    relay. Endpoints asked again for warming clusters are answered by the relay, not upstream,
    so a cluster change asks nothing more here."""

    def __init__(self, identity: Identity, xds: str, bundle: bytes, fleet: Fleet) -> None:
        super().__init__(identity, xds, bundle, fleet)
        self.held: dict[str, dict[str, any_pb2.Any]] = {t: {} for t in self.types}

    STREAM = "DeltaAggregatedResources"

    async def _handle(self, response) -> None:
        await self._on_delta(response)

    async def _write(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if self._first:
            request.node.CopyFrom(self._node())
            self._first = False
        await self._call.write(request)

    async def _subscribe(self, type_url: str, names: list[str]) -> None:
        state = self.types[type_url]
        before, state.names = state.names, names
        if before is None:
            await self._write(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names))
            return
        added, dropped = sorted(set(names) - set(before)), sorted(set(before) - set(names))
        for name in dropped:
            self.held[type_url].pop(name, None)
        if added or dropped:
            await self._write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=added, resource_names_unsubscribe=dropped
                )
            )

    async def _on_delta(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:
            return
        self.fleet.received(response.ByteSize())
        held = self.held[type_url]
        for r in response.resources:
            held[r.name] = r.resource
        for name in response.removed_resources:
            held.pop(name, None)
        state.nonce = response.nonce
        resources = list(held.values())
        answer = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        try:
            await self._follow_up(type_url, resources)
        except DecodeError as e:
            self.nacks += 1
            answer.error_detail.CopyFrom(status_pb2.Status(code=3, message=f"cannot decode: {e}"))
            await self._write(answer)
            return
        first = not state.acks
        state.version, state.resources = response.system_version_info, resources
        await self._write(answer)
        state.acks += 1
        self.fleet.acked(self, type_url, resources)
        if type_url == ENDPOINT and first and self.types[LISTENER].names is None:
            await self._subscribe(LISTENER, [])


PROTOCOLS = {"delta": DeltaSimProxy, "sotw": SimProxy}


def _struct(values: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


# --- what a change must reach ----------------------------------------------------------------


class Probe:
    """Until every proxy in `waiting` ACKed a `type_url` response passing `test`; when each did."""

    def __init__(self, type_url: str, test: Callable[[Sequence[any_pb2.Any]], bool], waiting: set[str]) -> None:
        self.type_url, self.test, self.waiting = type_url, test, set(waiting)
        self.expected = len(waiting)
        self.acked_at: dict[str, float] = {}
        self.done = asyncio.Event()
        if not self.waiting:
            self.done.set()

    def offer(self, proxy_id: str, type_url: str, resources: Sequence[any_pb2.Any], now: float) -> None:
        if type_url == self.type_url and proxy_id in self.waiting and self.test(resources):
            self.waiting.discard(proxy_id)
            self.acked_at[proxy_id] = now
            if not self.waiting:
                self.done.set()


def contains(marker: bytes) -> Callable[[Sequence[any_pb2.Any]], bool]:
    return lambda resources: any(marker in r.value for r in resources)


def lacks(marker: bytes) -> Callable[[Sequence[any_pb2.Any]], bool]:
    return lambda resources: not any(marker in r.value for r in resources)


def address_marker(address: str) -> bytes:
    """An address as it is encoded in a SocketAddress (field 2, length-prefixed): 127.100.0.1
    does not match inside 127.100.0.10."""
    data = address.encode()
    return b"\x12" + bytes([len(data)]) + data


@dataclass
class Fleet:
    xds: str
    bundle: bytes
    proxies: dict[str, SimProxy] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    protocol: str = "delta"  # what the simulated proxies speak: "delta" (as relays do) or "sotw"
    last_ack: float = 0.0
    acks: int = 0
    bytes_received: int = 0  # of responses, over all proxies
    responses: int = 0
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def connect(self, identities: list[Identity]) -> None:
        for identity in identities:
            proxy = PROTOCOLS[self.protocol](identity, self.xds, self.bundle, self)
            self.proxies[identity.proxy_id] = proxy
            self._tasks.append(asyncio.create_task(proxy.run(), name=f"ads-{identity.proxy_id}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def received(self, size: int) -> None:
        self.bytes_received += size
        self.responses += 1

    def acked(self, proxy: SimProxy, type_url: str, resources: Sequence[any_pb2.Any]) -> None:
        now = time.perf_counter()
        self.last_ack, self.acks = now, self.acks + 1
        for probe in self.probes:
            probe.offer(proxy.id, type_url, resources, now)

    def holding(self, test: Callable[[SimProxy], bool]) -> set[str]:
        """The proxies a change will affect, judged by what each holds now."""
        return {p.id for p in self.proxies.values() if test(p)}

    async def settled(self, quiet: float, timeout: float) -> None:
        """Every proxy holds all four types and nothing was ACKed for `quiet` seconds."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            errors = [p.error for p in self.proxies.values() if p.error]
            if errors:
                raise RuntimeError(f"{len(errors)} ADS streams failed, e.g. {errors[0]}")
            now = time.perf_counter()
            if all(p.synced for p in self.proxies.values()) and now - self.last_ack >= quiet:
                return
            await asyncio.sleep(0.05)
        behind = [p.id for p in self.proxies.values() if not p.synced]
        raise TimeoutError(f"fleet not settled after {timeout}s: {len(behind)} proxies lack a type, e.g. {behind[:3]}")
