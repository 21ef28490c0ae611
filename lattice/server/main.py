"""`lattice server`: the control plane's process lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from datetime import timedelta

import grpc
from cryptography.hazmat.primitives import serialization
from aiohttp import web

from lattice.identity import SpiffeId
from lattice.registry import Registry
from lattice.server import limits
from lattice.server.agent_api import AgentApi
from lattice.server.ca import CaManager
from lattice.server.ca_duty import CaDuty, RotationPolicy
from lattice.server.config import METRICS_TOKEN_FILE, ServerConfig, admin_token, write_discovery
from lattice.server.jwks import JwksCache
from lattice.server.modules import ModuleCache
from lattice.server.metrics import ControlPlaneMetrics
from lattice.server.drain import callers_hold_drain
from lattice.server.gc_pacing import GcPacer
from lattice.server.pusher import Pusher
from lattice.server.replicas import Replica, run_once
from lattice.server.rest import RestApi, refresh_revocations
from lattice.server.secrets import SecretVault
from lattice.server.traces import TraceStore
from lattice.store import SharedStore, StoreError, is_shared, open_store
from lattice.xds import SnapshotCache, StatusBoard
from lattice.xds.server import AdsServer, add_to_server

log = logging.getLogger("lattice.server")
MAX_XDS_MESSAGE = 16 << 20
SWEEP_INTERVAL = 300.0
COUNT_INTERVAL = 5.0


class ControlPlane:
    """Everything the server holds, built in data-flow order: store → registry → pusher → xDS."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.home.chmod(0o700)  # the store, CA keys and admin credential live here
        # A workload's etcd lease outlives silence as long as --endpoint-grace keeps its endpoints.
        ttl = max(config.heartbeat_timeout, config.endpoint_grace)
        self.store = open_store(config.store, config.db, config.store_tls, workload_ttl=ttl)
        self.ca = CaManager(
            config.home,
            config.trust_domain,
            timedelta(seconds=config.cert_ttl),
            config.ca_cert,
            config.ca_key,
            root_validity=timedelta(seconds=config.root_lifetime),
        )
        self.ca_duty = CaDuty(self.ca, RotationPolicy.for_rotation_at(config.root_rotate_at))
        if is_shared(self.store):
            self.ca.set_mesh_roots(_check_trusted_root(self.store, self.ca))
        self.cache = SnapshotCache()
        self.metrics = ControlPlaneMetrics()  # served on the REST port's /metrics, without the admin token
        self.board = StatusBoard(events=self.metrics)
        self.registry = Registry(
            self.store,
            config.heartbeat_timeout,
            on_change=lambda: self.pusher.request("endpoint"),
            grace=config.endpoint_grace,
        )
        self.jwks = JwksCache(self.store, on_change=lambda: self.pusher.request("secret"), refresh=config.jwks_refresh)
        self.modules = ModuleCache(
            self.store,
            config.home / "modules",
            on_change=lambda: self.pusher.request("config"),
            refresh=config.module_refresh,
        )
        self.secrets = SecretVault(self.store, config.home)  # gateways' credentialName (lattice secret)
        self.pusher = Pusher(
            self.store,
            self.registry,
            self.cache,
            config.debounce,
            trust_domain=config.trust_domain,
            root_namespace=config.root_namespace,
            outbound_traffic_policy=config.outbound_traffic_policy,
            h2_upgrade_policy=config.h2_upgrade_policy,
            jwks=self.jwks,
            modules=self.modules,
            extension_providers=config.extension_providers,
            mesh_telemetry=config.mesh_telemetry,
            http_policy=config.http_policy,
            metrics=self.metrics,
            secrets=self.secrets,
        )
        self.ads = AdsServer(self.cache, self.board, self._on_connect, self._on_disconnect, self._authorize)
        self.traces = TraceStore()  # the embedded trace collector: agents post spans, the REST API serves them
        self.replica = Replica(self.store, self.registry, lambda: len(self.ads.connected_nodes()), self._ca_record)
        self.rest = RestApi(
            self.store,
            self.registry,
            self.pusher,
            self.board,
            self.ads.connected_nodes,
            self.ca,
            admin_token(config.home),
            metrics=self.metrics,
            traces=self.traces,
            modules=self.modules,
            replica=self.replica,
            metrics_token=admin_token(config.home, METRICS_TOKEN_FILE),
            secrets=self.secrets,
        )
        self.agents = AgentApi(
            self.ca,
            self.store,
            self.registry,
            metrics=self.metrics,
            traces=self.traces,
            modules=self.modules,
            callers_hold_drain=lambda workload_id: callers_hold_drain(
                self.pusher.snapshot, self.pusher.pending, self.board, workload_id
            ),
        )
        self.agents.replica_list = self.replica.others
        self.metrics.read_state(self.ads, self.board, self.registry, self.pusher, self.ca, self.ca_duty)
        self.rest.expiry_warnings = self.ca_duty.warnings
        refresh_revocations(self.store, self.ca)  # certificates revoked before a restart stay refused

    def _ca_record(self) -> dict:
        """What other replicas need to know of this one's CA: the root it signs under, and the roots
        its proxies' certificates come from (`lattice ca trust remove` refuses a root still in use)."""
        return {"ca_root": self.ca.root_fingerprint, "held_roots": self.ca.held_roots(self.ads.connected_nodes())}

    def _authorize(self, node_id: str, peer: list[str]) -> str | None:
        """Config goes only to a registered proxy, over a connection holding that proxy's identity."""
        workload = self.registry.get(node_id)
        if workload is None:
            return f"proxy {node_id} is not registered"
        expected = str(SpiffeId(self.config.trust_domain, workload.namespace, workload.service_account))
        if expected not in peer:
            return f"the client certificate ({', '.join(peer) or 'none'}) is not {expected}, the identity of {node_id}"
        return None

    def _xds_credentials(self) -> grpc.ServerCredentials:
        """mTLS for xDS; every handshake sees the current server certificate and trust bundle."""
        seen: list = [None]

        def current():
            chain, key = self.ca.server_credentials()
            wanted = (chain, self.ca.bundle_version)
            if wanted == seen[0]:
                return None  # unchanged
            seen[0] = wanted
            return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=self.ca.bundle_pem)

        initial = current()
        return grpc.dynamic_ssl_server_credentials(initial, current, require_client_authentication=True)

    async def _on_connect(self, node_id: str) -> None:
        if self.cache.get(node_id) is None:
            self.pusher.push_one(node_id)

    async def _on_disconnect(self, node_id: str) -> None:
        log.info("proxy %s disconnected", node_id)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        grpc_server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_XDS_MESSAGE),
                ("grpc.max_receive_message_length", MAX_XDS_MESSAGE),
                *limits.GRPC_OPTIONS,
            ]
        )
        add_to_server(self.ads, grpc_server)
        try:
            xds_port = grpc_server.add_secure_port(
                f"{self.config.xds_host}:{self.config.xds_port}", self._xds_credentials()
            )
        except RuntimeError:
            xds_port = 0
        if not xds_port:
            raise SystemExit(
                f"cannot listen on {self.config.xds_host}:{self.config.xds_port} for xDS; pass --xds-port 0 for a "
                "free port"
            )
        limits.raise_open_file_limit()
        runner = web.AppRunner(self.rest.app(), access_log=None, **limits.runner_options())
        await runner.setup()
        api_socket = _listen(self.config.api_host, self.config.api_port, "the REST API", "--api-port")
        site = web.SockSite(runner, api_socket)
        agent_runner = web.AppRunner(self.agents.app(), access_log=None, **limits.runner_options())
        await agent_runner.setup()
        agent_socket = _listen(self.config.agent_host, self.config.agent_port, "the agent API", "--agent-port")
        agent_site = web.SockSite(agent_runner, agent_socket, ssl_context=self.agents.ssl_context())
        await grpc_server.start()
        await site.start()
        await agent_site.start()
        api_port, agent_port = api_socket.getsockname()[1], agent_socket.getsockname()[1]
        self.rest.xds_address = self.agents.xds_address = f"{self.config.xds_host}:{xds_port}"
        api, agents = f"http://{self.config.api_host}:{api_port}", f"https://{self.config.agent_host}:{agent_port}"
        write_discovery(self.config.discovery_file, api, self.rest.xds_address, agents)
        self.replica.addresses = {"api": api, "xds": self.rest.xds_address, "agent": agents}
        log.info(
            "control plane up: REST %s, agents %s, xDS %s (mTLS), trust domain %s, state %s",
            api,
            agents,
            self.rest.xds_address,
            self.config.trust_domain,
            self.store.name,
        )
        await self.jwks.prepare()  # stored RequestAuthentications' keys, before the first push
        await self.modules.prepare()  # and stored extensions' Wasm modules
        self.pusher.push()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.pusher.run(), name="pusher")
                tasks.create_task(self.pusher.watch_store(), name="store-watch")
                tasks.create_task(self._expire_loop(), name="registry-expiry")
                tasks.create_task(run_once(self.store, "jwks-refresh", self.replica.id, self.jwks.run), name="jwks")
                tasks.create_task(run_once(self.store, "ca-rotation", self.replica.id, self.ca_duty.run), name="ca")
                tasks.create_task(self._count_loop(), name="ca-counts")
                tasks.create_task(GcPacer().run(), name="gc-pacing")
                tasks.create_task(self.modules.run(), name="wasm-module-refresh")
                tasks.create_task(run_once(self.store, "sweep", self.replica.id, self._sweep), name="sweep")
                if is_shared(self.store):
                    tasks.create_task(self.replica.announce(), name="replica-announce")
                    tasks.create_task(self.replica.follow_workloads(), name="registry-follow")
                    tasks.create_task(self.jwks.follow(), name="jwks-follow")
                if ready is not None:
                    ready.set()
        finally:
            # Reverse order of start: stop taking requests, then stop streaming config, then state.
            self.config.discovery_file.unlink(missing_ok=True)
            await runner.cleanup()
            await agent_runner.cleanup()
            await grpc_server.stop(grace=1.0)
            with contextlib.suppress(StoreError, TimeoutError):  # the last certificates' counts
                await asyncio.wait_for(self._add_counts(), COUNT_INTERVAL)
            self.store.close()

    async def _expire_loop(self) -> None:
        interval = max(0.2, min(self.config.heartbeat_timeout, self.config.endpoint_grace) / 5)
        while True:
            await asyncio.sleep(interval)
            for workload_id in self.registry.expire():
                log.warning(
                    "workload %s sent no heartbeat for %.0fs (--endpoint-grace); dropped",
                    workload_id,
                    self.config.endpoint_grace,
                )
            try:  # revocations made on another replica, and expired certificates leaving the CRL
                await asyncio.to_thread(refresh_revocations, self.store, self.ca)
            except StoreError as e:
                log.warning("reading revoked certificates: %s", e)
            if is_shared(self.store):  # roots trusted or dropped with `lattice ca trust` on any replica
                self.ca.set_mesh_roots(self.store.ca_roots())

    async def _count_loop(self) -> None:
        """Add what this replica's CA counted to the store's totals, so `lattice ca show` on any
        replica counts the whole mesh's certificates, across restarts."""
        while True:
            try:
                await self._add_counts()
            except StoreError as e:
                log.info("cannot add CA counts to the store now (%s); adding them later", e)
            await asyncio.sleep(COUNT_INTERVAL)

    async def _add_counts(self) -> None:
        added = self.ca.uncounted()
        totals = await asyncio.to_thread(self.store.add_counts, "ca", dict(added))
        self.ca.counted(added, totals)

    async def _sweep(self) -> None:
        """Once-only duty: drop join tokens that expired (an hour ago, so `lattice token list` can
        still say why a late agent was refused)."""
        while True:
            try:
                purged = await asyncio.to_thread(self.store.purge_tokens, time.time() - 3600)
                if purged:
                    log.info("dropped %d expired join tokens", purged)
                await asyncio.to_thread(self.store.purge_grants, time.time())  # all their certificates expired
            except StoreError as e:
                log.warning("sweeping expired tokens: %s", e)
            await asyncio.sleep(SWEEP_INTERVAL)


def _check_trusted_root(store: SharedStore, ca: CaManager) -> list[dict]:
    """Every replica signs under a root the mesh trusts: the first records its own; a replica with
    another refuses to start until `lattice ca trust add` has made it trusted everywhere (so no
    workload is handed a certificate its peers cannot check). Returns the mesh's roots."""
    pem = ca.ca.root.public_bytes(serialization.Encoding.PEM).decode()
    recorded = store.claim_ca_root(ca.root_fingerprint, pem)
    if ca.root_fingerprint not in {r["fingerprint"] for r in recorded}:
        trusted = ", ".join(r["fingerprint"][:16] + "..." for r in recorded)
        raise SystemExit(
            f"this replica's CA root (sha256 {ca.root_fingerprint[:16]}...) is not among the mesh's trusted roots "
            f"({trusted}), recorded in {store.name}: give every replica the same --ca-cert/--ca-key files, or, to "
            "rotate to this root, first run `lattice ca trust add <its root.pem>` against a running replica"
        )
    return recorded


def _listen(host: str, port: int, what: str, flag: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(
            f"cannot listen on {host}:{port} for {what}: {e.strerror}; pass {flag} 0 for a free port"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_server(config: ServerConfig) -> None:
    """The control plane until SIGINT/SIGTERM. A store that cannot be opened or used ends it with
    the store's message (what and where), as a port that cannot be bound does."""
    try:
        await _serve(config)
    except StoreError as e:
        raise SystemExit(f"error: {e}") from None


async def _serve(config: ServerConfig) -> None:
    plane = ControlPlane(config)
    main = asyncio.current_task()
    assert main is not None, "_serve runs as a task of asyncio.run"
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await plane.serve()
    except asyncio.CancelledError:
        log.info("control plane stopped")
