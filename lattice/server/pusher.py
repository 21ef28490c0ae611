"""Turns store and registry changes into per-proxy snapshots in the xDS cache."""

from __future__ import annotations

import asyncio
import logging
import time
from types import MappingProxyType

from lattice.api import Resource, validate_object
from lattice.mesh import MeshSnapshot
from lattice.mesh.model import SNAPSHOT_FIELDS
from lattice.registry import Registry
from lattice.server.jwks import JwksCache
from lattice.store import Store, StoredResource
from lattice.translate import translate
from lattice.xds import SnapshotCache

log = logging.getLogger("lattice.push")


class Pusher:
    def __init__(self, store: Store, registry: Registry, cache: SnapshotCache, debounce: float = 0.1, trust_domain: str = "cluster.local", root_namespace: str = "istio-system", outbound_traffic_policy: str = "ALLOW_ANY", h2_upgrade_policy: str = "DO_NOT_UPGRADE", jwks: JwksCache | None = None, extension_providers: tuple = ()) -> None:
        self._jwks = jwks
        self._extension_providers = tuple(extension_providers)  # MeshConfig's, fixed for the server's life
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
        self.snapshot = MeshSnapshot("0")
        self.last_push_seconds = 0.0

    @property
    def pending(self) -> bool:
        """A change arrived that no push has carried yet (it waits out the debounce)."""
        return self._dirty.is_set()

    def request(self) -> None:
        """Ask for a push soon; many requests within the debounce window become one push."""
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)
            if self._jwks is not None:  # keys of a new or changed RequestAuthentication, before its push
                await self._jwks.prepare()  # (never raises); the push stays `pending` meanwhile
            self._dirty.clear()
            try:
                self.push()
            except Exception:  # a push bug must not stop future pushes
                log.exception("push failed; proxies keep their last config")

    async def watch_store(self) -> None:
        revision = self._store.revision
        while True:
            revision = await self._store.wait_for_change(revision)
            self.request()

    def push(self) -> MeshSnapshot:
        started = time.perf_counter()
        self.snapshot = self.build()
        for workload in self.snapshot.workloads:
            self._push_to(workload)
        for node in set(self._cache.nodes()) - {w.id for w in self.snapshot.workloads}:
            self._cache.remove(node)
        self.last_push_seconds = time.perf_counter() - started
        return self.snapshot

    def push_one(self, node_id: str) -> None:
        """Config for one proxy from the current snapshot (a proxy that just connected). A
        workload not in it yet registered after the last build; the push its registration
        requested will include it."""
        workload = self.snapshot.workload(node_id)
        if workload is not None:
            self._push_to(workload)

    def _push_to(self, workload) -> None:
        self._cache.set(workload.id, self.snapshot.version, translate(self.snapshot, workload).by_type)

    def build(self) -> MeshSnapshot:
        version = f"{self._store.revision}.{self._registry.generation}"
        previous, self._parsed = self._parsed, {}
        snapshot = MeshSnapshot(
            version,
            workloads=self._registry.workloads(),
            **{name: self._resources(kind, previous) for kind, name in SNAPSHOT_FIELDS.items()},
            outbound_traffic_policy=self._outbound_traffic_policy,
            h2_upgrade_policy=self._h2_upgrade_policy,
            extension_providers=self._extension_providers,
            jwks=MappingProxyType(dict(self._jwks.keys)) if self._jwks else {},
            jwks_errors=MappingProxyType(dict(self._jwks.errors)) if self._jwks else {},
            created=self._created("VirtualService", "HTTPRoute", "GRPCRoute"),
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
            obj = {"apiVersion": stored.api_version, "kind": stored.kind, "metadata": stored.metadata, "spec": stored.spec}
            parsed = validate_object(obj, f"stored {stored.kind} {stored.namespace}/{stored.name}")
        self._parsed[key] = parsed
        return parsed

