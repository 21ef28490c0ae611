"""Turns store and registry changes into per-proxy snapshots in the xDS cache.

A push builds the mesh snapshot, then goes proxy by proxy: each proxy's types are re-translated
only where the snapshot changed what they read (`lattice.server.incremental`, whose state the pusher owns), serialized
(each shared piece once per push), and put in the cache, which wakes that proxy's stream at once.
On the server's loop a push yields every few milliseconds, so ACKs, new connections and the
responses of proxies already done go out while the rest are computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from types import MappingProxyType
from typing import Iterator

from lattice.api import KINDS, Resource, validate_object
from lattice.mesh import MeshSnapshot
from lattice.mesh.model import SNAPSHOT_FIELDS
from lattice.mesh.http_policy import HttpPolicy
from lattice.mesh.telemetry import MeshTelemetry
from lattice.registry import Registry
from lattice.server.jwks import JwksCache
from lattice.server.modules import ModuleCache
from lattice.server.metrics import ControlPlaneMetrics
from lattice.store import StoreBackend, StoredResource
from lattice.translate import TYPE_ORDER
from lattice.server.incremental import ProxyTranslations
from lattice.xds import SnapshotCache
from lattice.xds.cache import Encoder

log = logging.getLogger("lattice.push")

# How long a push computes before it lets the loop serve streams and requests: short enough
# that nothing waits noticeably, long enough that switching costs little.
SLICE_SECONDS = 0.005


class Pusher:
    def __init__(
        self,
        store: StoreBackend,
        registry: Registry,
        cache: SnapshotCache,
        debounce: float = 0.1,
        trust_domain: str = "cluster.local",
        root_namespace: str = "istio-system",
        outbound_traffic_policy: str = "ALLOW_ANY",
        h2_upgrade_policy: str = "DO_NOT_UPGRADE",
        jwks: JwksCache | None = None,
        modules: ModuleCache | None = None,
        extension_providers: tuple = (),
        mesh_telemetry: MeshTelemetry | None = None,
        metrics: ControlPlaneMetrics | None = None,
        http_policy: HttpPolicy | None = None,
        secrets=None,
    ) -> None:
        self._http_policy = http_policy or HttpPolicy()  # MeshConfig's, fixed for the server's life
        self._secrets = secrets  # server/secrets.py: TLS secrets for gateways' credentialName
        self._metrics = metrics or ControlPlaneMetrics()
        self._changed_at: float | None = None  # when the first change not yet pushed arrived
        self._jwks = jwks
        self._modules = modules
        self._extension_providers = tuple(extension_providers)  # MeshConfig's, fixed for the server's life
        self._mesh_telemetry = mesh_telemetry or MeshTelemetry()  # likewise
        self._outbound_traffic_policy = outbound_traffic_policy
        self._h2_upgrade_policy = h2_upgrade_policy
        self._trust_domain = trust_domain
        self._root_namespace = root_namespace
        self._store = store
        self._registry = registry
        self._cache = cache
        self._debounce = debounce
        self._dirty = asyncio.Event()
        self._parsed: dict[tuple[str, str, str, int], Resource] = {}
        self.snapshot = MeshSnapshot("0", mesh_telemetry=self._mesh_telemetry, http_policy=self._http_policy)
        self.last_push_seconds = (
            0.0  # computing time of the last push (time spent serving streams between its slices left out)
        )
        self._translations = ProxyTranslations()
        self._encoder = Encoder(cache)

    @property
    def pending(self) -> bool:
        """A change arrived that no push has carried yet (it waits out the debounce)."""
        return self._dirty.is_set()

    def stats(self) -> dict:
        """What a metrics scrape reads of the pusher: config resources in the mesh as last pushed."""
        return {"config_resources": {kind: len(getattr(self.snapshot, name)) for kind, name in SNAPSHOT_FIELDS.items()}}

    def request(self, trigger: str = "config") -> None:
        """Ask for a push: at once after a quiet spell, else with the others of the debounce window.
        `trigger` says what changed (Istio's `pilot_push_triggers` types: config, endpoint, secret)."""
        self._metrics.push_triggered(trigger)
        if self._changed_at is None:
            self._changed_at = time.time()  # the status board's clock: ACK times are compared to it
        self._dirty.set()

    async def run(self) -> None:
        """Push whenever something changed. A change after a quiet spell (no push ended within the
        debounce window) goes out at once; changes that follow a push closely are gathered for the
        window, so a burst costs two pushes at most, the first of them without waiting."""
        loop = asyncio.get_running_loop()
        last_ended = -self._debounce
        while True:
            await self._dirty.wait()
            if loop.time() - last_ended < self._debounce:
                await asyncio.sleep(self._debounce)
            if self._jwks is not None:  # keys of a new or changed RequestAuthentication, before its push
                await self._jwks.prepare()  # (never raises); the push stays `pending` meanwhile
            if self._modules is not None:  # likewise the Wasm modules of new or changed extensions
                await self._modules.prepare()
            self._dirty.clear()
            try:
                await self.push_sliced()
            except Exception:  # a push bug must not stop future pushes
                self._metrics.internal_error()
                log.exception("push failed; proxies keep their last config")
            last_ended = loop.time()

    async def watch_store(self) -> None:
        revision = self._store.revision
        while True:
            revision = await self._store.wait_for_change(revision)
            self.request()

    def push(self) -> MeshSnapshot:
        """A whole push at once, holding the loop (the first push, before any proxy connects)."""
        for _ in self._pushing():
            pass
        return self.snapshot

    async def push_sliced(self) -> MeshSnapshot:
        """A push that lets the loop run between slices of SLICE_SECONDS."""
        until = time.perf_counter() + SLICE_SECONDS
        for _ in self._pushing():
            if time.perf_counter() >= until:
                await asyncio.sleep(0)
                until = time.perf_counter() + SLICE_SECONDS
        return self.snapshot

    def _pushing(self) -> Iterator[None]:
        """The push, one proxy per step; the caller decides when the loop runs between steps.
        The change's time is reported before any proxy gets config, so a proxy converging on it
        while the push goes on still counts."""
        resumed, busy = time.perf_counter(), 0.0
        changed_at, self._changed_at = self._changed_at, None
        self.snapshot = snapshot = self.build()
        nodes = {w.id for w in snapshot.workloads}
        self._translations.advance(snapshot)
        self._encoder = Encoder(self._cache, self._encoder, self._translations.shared)  # shared pieces: serialized once
        self._metrics.push_started(snapshot.version, changed_at)
        for node in set(self._cache.nodes()) - nodes:
            self._cache.remove(node)
        for workload in snapshot.workloads:
            self._push_to(workload)
            now = time.perf_counter()
            busy, resumed = busy + now - resumed, now
            yield
            resumed = time.perf_counter()
        self.last_push_seconds = busy + time.perf_counter() - resumed
        self._metrics.pushed(snapshot.version, changed_at, self.last_push_seconds)

    def push_one(self, node_id: str) -> None:
        """Config for one proxy from the current snapshot (a proxy that just connected). A
        workload not in it yet registered after the last build; the push its registration
        requested will include it."""
        workload = self.snapshot.workload(node_id)
        if workload is not None:
            self._push_to(workload)

    def _push_to(self, workload) -> None:
        """The proxy's resources, type by type: kept or shared where the snapshot changed
        nothing they read, translated and serialized otherwise."""
        resources = {
            t: self._translations.resources(
                workload, t, partial(self._encoder.resource_set, t, shared=self._translations.shared)
            )
            for t in TYPE_ORDER
        }
        self._cache.set_resources(workload.id, self.snapshot.version, resources)

    def build(self) -> MeshSnapshot:
        version = f"{self._store.revision}.{self._registry.generation}"
        previous, self._parsed = self._parsed, {}
        snapshot = MeshSnapshot(
            version,
            workloads=self._registry.workloads(),
            departed=self._registry.departed(),
            **{name: self._resources(kind, previous) for kind, name in SNAPSHOT_FIELDS.items()},
            outbound_traffic_policy=self._outbound_traffic_policy,
            h2_upgrade_policy=self._h2_upgrade_policy,
            extension_providers=self._extension_providers,
            mesh_telemetry=self._mesh_telemetry,
            http_policy=self._http_policy,
            jwks=MappingProxyType(dict(self._jwks.keys)) if self._jwks else {},
            jwks_errors=MappingProxyType(dict(self._jwks.errors)) if self._jwks else {},
            wasm_modules=MappingProxyType(dict(self._modules.digests)) if self._modules else {},
            wasm_module_errors=MappingProxyType(dict(self._modules.errors)) if self._modules else {},
            tls_credentials=MappingProxyType(self._secrets.credentials()) if self._secrets else {},
            created=self._created("VirtualService", "HTTPRoute", "GRPCRoute", "TrafficExtension", "WasmPlugin"),
            trust_domain=self._trust_domain,
            root_namespace=self._root_namespace,
        )
        return snapshot

    def _resources(self, kind: str, previous: dict) -> tuple[Resource, ...]:
        stored = sorted(self._store.list(kind), key=lambda r: (r.created_at, r.namespace, r.name))
        return tuple(self._parse(r, previous) for r in stored)

    def _created(self, *kinds: str) -> dict[tuple[str, str, str], float]:
        """Creation times of routing resources: VirtualServices and Gateway API routes claim a host
        oldest first, whichever API they come from."""
        return {(r.kind, r.namespace, r.name): r.created_at for kind in kinds for r in self._store.list(kind)}

    def _parse(self, stored: StoredResource, previous: dict) -> Resource:
        # Stored specs were validated on apply; parsing again only when a resource changed keeps
        # a push proportional to what changed, not to everything stored.
        key = (stored.kind, stored.namespace, stored.name, stored.revision)
        parsed = previous.get(key)
        if parsed is None:
            obj = {
                "apiVersion": stored.api_version,
                "kind": KINDS[stored.kind].kind,
                "metadata": stored.metadata,
                "spec": stored.spec,
            }
            parsed = validate_object(obj, f"stored {stored.kind} {stored.namespace}/{stored.name}")
        self._parsed[key] = parsed
        return parsed
