"""`lattice run` / `lattice agent`: the sidecar's lifecycle around one app."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import urllib.parse
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import struct_pb2

from lattice.agent.access_log import Peer
from lattice.agent.address import (
    AddressLease,
    app_port,
    check_own,
    free_port,
    host_address_towards,
    is_loopback_host,
    lease_loopback,
    port_free,
)
from lattice.agent.bootstrap import bootstrap, stats_matcher, write_bootstrap
from lattice.agent.capture import CaptureMode
from lattice.agent.control import RegistryClient
from lattice.agent.drain import DrainBudget, drain_callers, drain_inbound
from lattice.agent.envoy import HOT_RESTART, EnvoyProcess, die_with_parent
from lattice.agent import heap
from lattice.agent.handover import AdoptedProcess, Handover, incoming, reexec, registration_from
from lattice.agent.http import agent_app
from lattice.agent.identity import Identity
from lattice.agent.kept_identity import IdentityKeeper
from lattice.agent.modules import ModuleFetcher
from lattice.agent.observer import Observer
from lattice.agent.options import ProxyOptions, RunOptions
from lattice.agent.proxy_credential import ProxyCredential
from lattice.agent.phases import STARTUP
from lattice.agent.registration import Registration
from lattice.agent.relay import XdsRelay
from lattice.agent.servers import ControlPlanes
from lattice.agent.servers import follow as follow_replicas
from lattice.agent.sds import SecretServer
from lattice.agent.traces import TraceRelay
from lattice.agent.traces import add_to_server as add_trace_service
from lattice.agent.web import Server
from lattice.agent.web_client import ClientError
from lattice.identity import CONTROL_PLANE_NAME
from lattice.mesh.protocol import OPAQUE
from lattice.translate import LISTENER
from lattice.translate.agent_names import PEER_ENV, peer_value

log = logging.getLogger("lattice.agent")
OUTBOUND_PORT = 15001
AGENT_PORT = 15020
SECRET_ENV = ("LATTICE_TOKEN", "LATTICE_ADMIN_TOKEN")  # credentials the app must not inherit
SOCKET_PATH_BYTES = 107  # a unix socket's path: sun_path's 108 bytes, less the NUL
ENVOY_SOCKETS = ("xds", "sds", "telemetry")  # the agent's unix sockets for its Envoy, in its run directory


def socket_name(name: str, generation: int) -> str:
    """An agent that took over (agent/handover.py) uses new names, so the Envoy it replaces never
    reconnects to it."""
    return f"{name}.sock" if generation == 0 else f"{name}-{generation}.sock"


def longest_socket_name(generation: int) -> str:
    """The longest of an agent's socket names: whether its paths fit a run directory depends on it."""
    return max((socket_name(name, generation) for name in ENVOY_SOCKETS), key=len)


def run_directory() -> str:
    """A new private (0700) directory under TMPDIR for the agent's sockets and Envoy's files; an
    error naming TMPDIR if its unix sockets' paths would not fit there."""
    base = tempfile.gettempdir()
    room = SOCKET_PATH_BYTES - len("/lattice-12345678/" + longest_socket_name(0))  # mkdtemp: 8 random characters
    if len(os.fsencode(base)) > room:
        raise RuntimeError(
            f"the temporary directory {base} is too deep for the agent's unix sockets (a socket's path has "
            f"at most 108 bytes): set TMPDIR to a directory of at most {room} bytes, such as /tmp"
        )
    return tempfile.mkdtemp(prefix="lattice-")


class Sidecar:
    def __init__(self, options: ProxyOptions) -> None:
        self.o = options
        self.lease: AddressLease | None = None
        self.handover = incoming()  # this process re-executed a previous agent (agent/handover.py)
        self.run_dir = Path(self.handover.run_dir if self.handover else run_directory())
        self.generation = self.handover.generation + 1 if self.handover else 0
        self.app: asyncio.subprocess.Process | AdoptedProcess | None = None
        self.app_healthy = self.handover.app_healthy if self.handover else False
        self._inbound_served = False  # the inbound listener has accepted a connection (agent health)
        self.exit_code = 0
        self._agent_port: Server | None = None
        self._servers: list[grpc.aio.Server] = []
        self.capture: CaptureMode | None = None  # `--capture`: the app in a network namespace of its own
        self._lost = 0  # xDS connection attempts failed in a row (failover between replicas)
        self._stop = asyncio.Event()  # a signal while serving: drain, then stop (agent/drain.py)
        self._serving = False
        self._restarting: asyncio.Task | None = None  # an Envoy hot restart (SIGUSR1)
        self._upgrade_later: asyncio.Task | None = None  # a SIGHUP waiting for a replaced Envoy to settle
        # Proxy mode: what the outbound listener asks of its clients (agent/proxy_credential.py).
        self.credential: ProxyCredential | None = None
        self.credential_file: Path | None = None
        self._envoy: asyncio.Task | None = None  # Envoy's supervision (agent/envoy.py)

    @property
    def run_options(self) -> RunOptions:
        """The options of `lattice run` / `lattice agent`: what a sidecar's own methods read (a gateway
        overrides each of them)."""
        if not isinstance(self.o, RunOptions):
            raise TypeError(f"{type(self).__name__} was given {type(self.o).__name__}, not RunOptions")
        return self.o

    def _place(self) -> tuple[str, str]:
        """(advertised address, local address): on one machine a leased loopback serves as both;
        across hosts the host's address is advertised (only the inbound listener binds it) and
        what only this host may use (outbound, upstream ports) binds a leased loopback."""
        o = self.o
        if self.handover is not None:
            if self.handover.lease_address is not None:
                self.lease = AddressLease(self.handover.lease_address, self.handover.lease_fd)
            return self.handover.placed
        server = urllib.parse.urlsplit(o.server)
        address = o.address
        host = server.hostname or "127.0.0.1"
        if address is None and not is_loopback_host(host):
            try:
                address = host_address_towards(host, server.port or 443)
            except OSError as e:
                raise RuntimeError(
                    f"no route to the control plane at {o.server} ({e.strerror or e}); "
                    "check --server, or give --address"
                ) from None
            log.info("advertising this host's address %s (its route to %s); --address overrides it", address, o.server)
        if (
            self.capture is not None and not self.capture.vm
        ):  # its namespace's address, if this host's is not for others
            if address is None or ipaddress.ip_address(address).is_loopback:
                return self.capture.pod.address, "127.0.0.1"
            return address, "127.0.0.1"
        if address is None:
            self.lease = lease_loopback(self._ports())
            return self.lease.address, ""
        check_own(address)
        if ipaddress.ip_address(address).is_loopback:
            return address, ""
        self.lease = lease_loopback(self._ports()[1:])
        return address, self.lease.address

    def _registration(self) -> Registration:
        if self.handover is not None:
            return registration_from(self.handover.registration)
        o = self.run_options
        address, local = self.placed
        name = o.name or (f"{o.service}-{o.version}" if o.version else o.service)
        labels = {**o.labels, "app": o.service, **({"version": o.version} if o.version else {})}
        upstream_ports = {u.local_port for u in o.upstreams}
        host_port = 0
        pod = self.capture if self.capture is not None and not self.capture.vm else None  # VM mode: as proxy mode
        if pod is not None and address != pod.pod.address:  # reached through the host's ports
            agent_port = free_port(address)
            host_port = pod.host_port(address, o.port)
        elif pod is not None:  # the namespace is the workload's own: its ports are free
            agent_port = AGENT_PORT if AGENT_PORT not in upstream_ports | {o.port} else free_port()
        elif AGENT_PORT not in upstream_ports and port_free(address, AGENT_PORT):
            agent_port = AGENT_PORT
        else:
            agent_port = free_port(address)
        return Registration(
            id=f"{name}-{secrets.token_hex(3)}.{o.namespace}",
            name=name,
            namespace=o.namespace,
            service=o.service,
            service_account=o.service_account or o.service,
            labels=labels,
            address=address,
            port=o.port,
            app_port=o.app_port or app_port(),
            protocol=o.protocol,
            outbound_port=OUTBOUND_PORT,
            agent_port=agent_port,
            upstreams=o.upstreams,
            local_address=local,
            capture=self.capture is not None,
            host_port=host_port if host_port != o.port else 0,
            inbound_address=pod.pod.address if pod is not None else "",
        )

    async def run(self) -> int:
        if self.o.capture:
            self.capture = CaptureMode(self.run_options.service, self.run_options.netns)
        try:
            return await self._run()
        finally:
            if self.capture is not None:
                self.capture.close()

    async def _run(self) -> int:
        # --server may name several replicas (or a name with several addresses): start on the first.
        self.planes = ControlPlanes(self.o.server)
        self.o.server = self.planes.current.agent
        self.placed = self._place()
        self.registration = reg = self._registration()
        if self.capture is None and reg.kind == "sidecar":
            self.credential = ProxyCredential.for_run_dir(self.run_dir)
            self.credential_file = self.credential.write(self.run_dir, reg.outbound_address, reg.outbound_port)
            log.warning("%s", exposure_warning(reg))
        node = base_pb2.Node(id=reg.id, cluster=f"{reg.service}.{reg.namespace}")
        node.metadata.CopyFrom(_struct({"NAMESPACE": reg.namespace, "WORKLOAD_NAME": reg.name, "LABELS": reg.labels}))
        self.sds = SecretServer()
        self.identity = Identity(
            self.o.server,
            reg.id,
            reg.namespace,
            reg.service_account,
            self.o.token,
            self.run_dir,
            self._publish_secrets,
            IdentityKeeper(reg.namespace, reg.service_account),
        )
        self.envoy = EnvoyProcess(
            self.run_dir / "envoy.json",
            self.run_dir / "admin.sock",
            self.run_dir / "envoy.log",
            self.o.envoy_log_level,
            {
                PEER_ENV: peer_value(reg.name, reg.namespace, reg.labels, reg.service),
                **(self.credential.envoy_env() if self.credential else {}),
            },
        )
        if self.capture is not None:  # Envoy beside the app, in the group whose traffic is not captured
            self.envoy.wrap = self.capture.pod.proxy_command
        if self.handover is not None:
            h = self.handover
            self.envoy.adopt(AdoptedProcess(h.envoy_pid), h.envoy_epoch, h.envoy_base_id)
        self._write_bootstrap(node)
        main = asyncio.current_task()
        assert main is not None, "the sidecar runs as a task of asyncio.run"
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, self._on_signal, main)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._on_restart_envoy, node)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_upgrade)
        # One registry client from registration to deregistration, cleanup included.
        async with RegistryClient(self.o.server, reg, lambda: self.app_healthy, self.identity) as self.registry:
            try:
                # The xDS address is the certificate's answer's: set once the identity is obtained.
                self.relay = XdsRelay(node, "", self._xds_credentials, CONTROL_PLANE_NAME)
                if self.handover is not None:  # the new Envoy gets what the old one held at once
                    self.relay.good.update(self.handover.decoded_config())
                self.observer = Observer(self._me(), f"{reg.service}.{reg.namespace}.svc.cluster.local")
                self.relay.on_accept = self._on_accept
                # Extensions' Wasm modules: fetched from the control plane, given to Envoy as files.
                self.modules = ModuleFetcher(self.o.server, self.run_dir / "modules", self.identity.ssl)
                self.relay.localize = self.modules.localize
                self.relay.on_upstream_lost = self._fail_over
                self.observer.envoy = self.envoy
                self.traces = TraceRelay(self.o.server, self.identity)  # Envoy's spans, on to the control plane
                self.observer.span_counts = self.traces.counts
                if self.capture is not None:
                    self._install_capture(self.capture)
                await self._serve_envoy()
                await self._obtain_identity()
                STARTUP.mark("identity")
                if self.handover is None:
                    # Envoy starts while the registration is made and the control plane builds this
                    # proxy's config (not before the certificate: a refused workload starts nothing).
                    self._envoy = asyncio.get_running_loop().create_task(self.envoy.supervise(), name="envoy")
                self.observer.receiver.me = self._me()  # with the certificate's SPIFFE id
                self._check_xds_reachable()
                self.relay.upstream = self._xds_address()
                self.planes.set_xds(self.relay.upstream)
                await self._serve()
            except asyncio.CancelledError:
                log.info("stopping %s", reg.id)
                self.exit_code = await self._stop_app() if self.app else 0
            finally:
                await self._cleanup()
        return self.exit_code

    def _on_accept(self, type_url: str, response) -> None:
        """Envoy accepted config: the observer learns it; with new listeners, the agent keeps
        their sockets for a replacement Envoy (agent/hot_parent.py)."""
        self.observer.on_accept(type_url, response)
        if type_url == LISTENER:
            self.envoy.listeners_changed()

    def _write_bootstrap(self, node: base_pb2.Node) -> None:
        reg = self.registration
        write_bootstrap(
            self.envoy.bootstrap,
            bootstrap(
                reg.id,
                node.cluster,
                {"NAMESPACE": reg.namespace},
                self.envoy.admin_socket,
                self._socket("xds"),
                self._socket("sds"),
                self._socket("telemetry"),
                self._stats_config(),
            ),
        )

    def _socket(self, name: str) -> Path:
        """Where this agent serves Envoy."""
        return self.run_dir / socket_name(name, self.generation)

    def _on_upgrade(self) -> None:
        """SIGHUP: re-execute `lattice run` (its code as installed now) while the app runs on."""
        stand_in = self.envoy.stand_in
        if stand_in is not None and stand_in.serving:  # the agent is a new Envoy's parent for a few seconds
            if self._upgrade_later is None or self._upgrade_later.done():
                log.info("SIGHUP: upgrading once the Envoy that replaced a dead one has taken over")
                self._upgrade_later = asyncio.get_running_loop().create_task(
                    self._upgrade_after(stand_in.terminated), name="upgrade-later"
                )
            return
        envoy = self.envoy.process
        busy = (
            not self._serving
            or self._stop.is_set()
            or self.capture is not None
            or not HOT_RESTART
            or self.envoy.draining
            or envoy is None
            or envoy.returncode is not None
            or (self.o.command and (self.app is None or self.app.returncode is not None))
        )
        if busy or envoy is None:
            log.warning(
                "SIGHUP: not upgrading now (starting, stopping, Envoy restarting; never under --capture or "
                "off Linux); send it again, or roll the workload"
            )
            return
        deepest = self.run_dir / longest_socket_name(self.generation + 1)
        if len(os.fsencode(deepest)) > SOCKET_PATH_BYTES:
            log.warning(
                "SIGHUP: not upgrading: the next agent's socket %s is too long a path; roll the workload", deepest
            )
            return
        reexec(
            Handover(
                run_dir=str(self.run_dir),
                generation=self.generation,
                registration=self.registration.dump(),
                placed=self.placed,
                lease_address=self.lease.address if self.lease else None,
                lease_fd=self.lease._fd if self.lease else None,
                app_pid=self.app.pid if self.app else None,
                app_healthy=self.app_healthy,
                envoy_pid=envoy.pid,
                envoy_epoch=self.envoy.epoch,
                envoy_base_id=self.envoy.base_id,
                config=Handover.encode(self.relay.good),
            ),
            # Started by `lattice run` (agent/launch.py): the new agent reads the same options.
            {"options": self.o.to_json(), "log_level": self.o.envoy_log_level}
            if isinstance(self.o, RunOptions)
            else None,
        )

    async def _upgrade_after(self, settled: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(settled.wait(), 30)
        except TimeoutError:
            pass
        self._on_upgrade()

    def _on_restart_envoy(self, node: base_pb2.Node) -> None:
        """SIGUSR1: a new Envoy with a freshly written bootstrap, by hot restart (agent/envoy.py)."""
        if self._restarting is not None and not self._restarting.done():
            return
        if not self._serving:
            log.info("SIGUSR1 before the sidecar serves: Envoy is not restarted")
            return
        self._write_bootstrap(node)
        self._restarting = asyncio.get_running_loop().create_task(self.envoy.hot_restart(), name="envoy-hot-restart")

    async def _obtain_identity(self) -> None:
        """The first certificate, before Envoy starts: no certificate, no mesh traffic at all."""
        backoff, said = 0.2, -1e9
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self.identity.obtain(self.registry.session)
            except (ClientError, TimeoutError) as e:
                if loop.time() - said > 30:  # at the default log level, but not on every retry
                    said = loop.time()
                    log.warning(
                        "cannot reach the control plane at %s (%s); retrying. Check that `lattice server` runs "
                        "with --listen on an address this host reaches (not 127.0.0.1) and that its port is open.",
                        self.o.server,
                        e or type(e).__name__,
                    )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _check_xds_reachable(self) -> None:
        """A control plane on another host whose xDS listens on its own loopback cannot serve us."""
        host = self._xds_address().rsplit(":", 1)[0].strip("[]")
        server_host = urllib.parse.urlsplit(self.o.server).hostname or ""
        if is_loopback_host(host) and not is_loopback_host(server_host):
            raise RuntimeError(
                f"the control plane at {self.o.server} serves xDS on {self._xds_address()}, its own loopback, "
                f"which this host cannot reach: start it with `lattice server --listen <its address>` (or --xds-host)"
            )

    def _stats_config(self) -> dict | None:
        """Istio's short list of Envoy stats, and what the workload asked for besides."""
        return stats_matcher(*self.run_options.stats_inclusion)

    def _me(self) -> Peer:
        reg = self.registration
        return Peer(
            reg.name,
            reg.namespace,
            reg.labels.get("app", reg.service),
            reg.labels.get("version", "unknown") or "unknown",
            self.identity.spiffe,
        )

    def _publish_secrets(self) -> None:
        self.sds.update(self.identity.chain, self.identity.key, self.identity.bundle, self.identity.crl)

    def _xds_credentials(self) -> grpc.ChannelCredentials:
        i = self.identity
        return grpc.ssl_channel_credentials(root_certificates=i.bundle, private_key=i.key, certificate_chain=i.chain)

    async def _fail_over(self, was_connected: bool) -> None:
        """The xDS stream broke: move every conversation with the control plane to the next replica
        (servers.py), after a spread delay, or the usual backoff when there is only one."""
        self._lost = 0 if was_connected else self._lost + 1
        if len(self.planes) < 2:
            await asyncio.sleep(min(5.0, 0.2 * 2**self._lost) * random.uniform(0.8, 1.2))
            return
        # The first retry after losing a replica is spread (no stampede on the others); a round of
        # failed tries through every replica backs off.
        rounds = self._lost // len(self.planes)
        await asyncio.sleep(self.planes.reconnect_delay() if was_connected else min(5.0, 0.2 * 2**rounds))
        target = self.planes.advance()
        if not target.xds:
            target = await self._learn_xds(target)
        self.o.server = target.agent
        self.registry.api = self.identity.server = self.modules.api = target.agent
        self.traces.url = f"{target.agent}/agent/v1/traces"
        if target.xds:
            self.relay.upstream = target.xds
        log.info("control plane: moving to %s (xDS %s)", target.agent, self.relay.upstream)

    async def _learn_xds(self, target):
        """A replica known only by its agent API: its xDS address, as it tells agents."""
        try:
            async with self.registry.session.get(
                f"{target.agent}/agent/v1/bundle", ssl=self.identity.ssl(), server_hostname=CONTROL_PLANE_NAME
            ) as response:
                xds = (await response.json()).get("xds", "")
        except Exception as e:  # unreachable: the next round tries another
            log.info("control plane %s unreachable (%s)", target.agent, e)
            return target
        if xds.startswith(("0.0.0.0:", "[::]:")):
            xds = f"{urllib.parse.urlsplit(target.agent).hostname}:{xds.rsplit(':', 1)[1]}"
        self.planes.set_xds(xds)
        return self.planes.current

    def _xds_address(self) -> str:
        """Where xDS is: as the control plane says, with its host if it listens on all addresses."""
        xds = self.identity.xds
        host = urllib.parse.urlsplit(self.o.server).hostname or "127.0.0.1"
        if xds.startswith(("0.0.0.0:", "[::]:")):
            return f"{host}:{xds.rsplit(':', 1)[1]}"
        return xds

    async def _serve_envoy(self) -> None:
        """The agent's unix sockets for its Envoy: xDS (relayed), secrets, access logs and spans."""
        local = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.relay, local)
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self.sds, local)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self.observer.receiver, local)
        add_trace_service(self.traces, local)
        for name in ENVOY_SOCKETS:
            local.add_insecure_port(f"unix:{self._socket(name)}")
        await local.start()
        for name in ENVOY_SOCKETS:  # our Envoy only (the directory is 0700 too)
            os.chmod(self._socket(name), 0o600)
        self._servers.append(local)

    async def _supervise_envoy(self) -> None:
        """Envoy's supervision, started early (see `_run`) or now (an upgraded agent's hot restart)."""
        if self._envoy is None:
            self._envoy = asyncio.get_running_loop().create_task(self.envoy.supervise(), name="envoy")
        await self._envoy

    async def _serve(self) -> None:
        # The xDS stream opens while the registration is made: the control plane answers it once
        # the registration's push includes this proxy.
        upstream = asyncio.get_running_loop().create_task(self.relay.run_upstream(), name="xds-upstream")
        try:
            await self.registry.register()
        except BaseException:
            upstream.cancel()
            raise
        STARTUP.mark("registered")
        self._agent_port = agent_app(
            self.envoy, lambda: self.app_healthy, self.observer, lambda: self.identity.agent_key
        )
        if self.capture is not None and not self.capture.vm:  # in the namespace, where the control plane is let in
            await self._agent_port.listen(sock=self.capture.listen(self.registration.agent_port))
        else:
            await self._agent_port.listen(self.registration.address, self.registration.agent_port)
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(_watched(upstream), name="xds-upstream-watch"),
                tasks.create_task(self._supervise_envoy(), name="envoy-watch"),
                tasks.create_task(self.registry.heartbeats(self.o.heartbeat_interval), name="heartbeats"),
                tasks.create_task(self.identity.renew_forever(self.registry.session), name="renewal"),
                tasks.create_task(self._probe_forever(), name="app-probe"),
                tasks.create_task(heap.trim_forever(), name="heap-trim"),
                tasks.create_task(self.traces.forward(self.registry.session), name="trace-relay"),
                tasks.create_task(self.observer.poll_forever(), name="envoy-stats"),
                tasks.create_task(
                    follow_replicas(self.planes, self.registry.session, self.identity.ssl, CONTROL_PLANE_NAME),
                    name="replicas-follow",
                ),
            ]
            if self.capture is not None:
                background.append(tasks.create_task(self.capture.serve_dns(), name="dns-proxy"))
            await self._wait_ready()
            STARTUP.mark("ready")
            if not self.o.command and self.handover is None:
                log.info("%s", STARTUP.line())
            self._announce()
            self.exit_code = await self._until_stopped()
            for task in background:
                task.cancel()

    def _on_signal(self, main: asyncio.Task) -> None:
        """The first signal while serving starts a graceful stop; any other stops at once."""
        if self._stop.is_set() or not self._serving:
            main.cancel()
            return
        log.info("stopping: draining first (at most %.0fs; signal again to stop at once)", self.o.drain_timeout)
        self._stop.set()

    async def _until_stopped(self) -> int:
        """Run the app (`lattice agent`: none) until it exits, or until a signal: then drain and
        stop it (agent/drain.py). An app that exits by itself ends the sidecar with its code."""
        self._serving = True
        stop = asyncio.create_task(self._stop.wait(), name="stop-signal")
        app = asyncio.create_task(self._run_app(), name="app") if self.o.command else None
        try:
            await asyncio.wait([t for t in (stop, app) if t], return_when=asyncio.FIRST_COMPLETED)
            if app is not None and app.done():
                return app.result()
            return await self._graceful_stop(app)
        finally:
            stop.cancel()

    async def _graceful_stop(self, app: asyncio.Task | None) -> int:
        loop = asyncio.get_running_loop()
        budget = DrainBudget(self.o.drain_timeout)
        deadline = loop.time() + budget.total
        await drain_callers(self.registry, budget)
        tcp = self.registration.protocol in OPAQUE
        await drain_inbound(self.envoy, self.registration.port, tcp, deadline - budget.app_share)
        if app is None:
            return 0
        if self.app is None:  # the signal came before the app was started
            app.cancel()
            return 0
        code = await self._stop_app(max(1.0, deadline - loop.time()))
        await asyncio.gather(app, return_exceptions=True)
        return code

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.o.ready_timeout
        try:  # the config first (no need to ask Envoy before), then Envoy's word that it serves it
            await asyncio.wait_for(self.relay.has_config.wait(), self.o.ready_timeout)
            while not await self.envoy.live():
                if loop.time() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.01)  # its listeners warm within milliseconds once the secrets are there
        except TimeoutError:
            raise RuntimeError(
                f"Envoy did not get its config within {self.o.ready_timeout:.0f}s; is the control plane's xDS "
                f"at {self.relay.upstream} reachable?\n{self.envoy.log_tail()}"
            ) from None

    async def _run_app(self) -> int:
        reg = self.registration
        # Captured, the app needs no proxy settings: its connections reach the sidecar anyway.
        proxy_env = self.credential.app_env(reg.outbound_address, reg.outbound_port) if self.credential else {}
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV} | {
            "PORT": str(reg.app_port),
            **proxy_env,
            "LATTICE_WORKLOAD": reg.name,
            "LATTICE_PROXY_ID": reg.id,
            "LATTICE_SERVICE": reg.service,
            **_no_proxy(reg.outbound_address),
            **upstream_env(reg),
        }
        if self.handover is not None and self.handover.app_pid is not None:  # started by the previous agent
            self.app = adopted = AdoptedProcess(self.handover.app_pid)
            code = _exit_status(await adopted.wait())
            log.info("app exited with %s", code)
            return code
        try:
            command = self.capture.pod.command(self.o.command) if self.capture else self.o.command
            # Its own process group: a terminal's Ctrl-C (or systemd's KillMode=mixed) reaches the
            # agent alone, which drains first and then stops the app (agent/drain.py).
            self.app = await asyncio.create_subprocess_exec(
                *command, env=env, preexec_fn=die_with_parent, process_group=0
            )
            STARTUP.mark("app-started")
            log.info("%s", STARTUP.line())  # (an upgraded agent adopts the app: never here)
        except OSError as e:
            log.error("cannot start %s: %s", self.o.command[0], e.strerror)
            return 127
        code = _exit_status(await self.app.wait())
        log.info("app exited with %s", code)
        return code

    def _ports(self) -> list[int]:
        """Ports this proxy serves on its address, so the leased loopback has them free."""
        o = self.run_options
        return [o.port, OUTBOUND_PORT, *(u.local_port for u in o.upstreams)]

    def _install_capture(self, capture: CaptureMode) -> None:
        """The namespace's rules, now that the ports are known; the DNS proxy's names with each push."""
        reg = self.registration
        if capture.vm:
            capture.install_host((reg.outbound_address, OUTBOUND_PORT), self._control_plane_sources(capture))
        else:
            self._install_pod_capture(capture)
        accepted = self.relay.on_accept

        def on_accept(type_url, response) -> None:
            accepted(type_url, response)
            capture.on_accept(type_url, response)

        self.relay.on_accept = on_accept

    def _install_pod_capture(self, capture: CaptureMode) -> None:
        reg = self.registration
        host_address = None if reg.address == capture.pod.address else reg.address
        forwards = {reg.host_port or reg.port: reg.port, reg.agent_port: reg.agent_port}
        capture.install(
            reg.namespace,
            host_address,
            forwards,
            [reg.port],
            OUTBOUND_PORT,
            (reg.agent_port, self._control_plane_sources(capture)),
        )

    def _control_plane_sources(self, capture: CaptureMode) -> list[str]:
        """Where the control plane's calls to the agent port come from: its host's address, or, on this
        very host, the host's end of the namespace's link."""
        host = urllib.parse.urlsplit(self.o.server).hostname or "127.0.0.1"
        if is_loopback_host(host):
            return [capture.pod.host_side] if capture.pod.host_side else []
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, socket.AF_INET)})

    def _announce(self) -> None:
        if self.capture is not None and self.capture.vm:
            print(
                "capture mode (VM): the app runs in this host's network namespace; its TCP goes through the "
                f"sidecar ({self.registration.outbound_address}:{OUTBOUND_PORT}), its DNS through the agent",
                file=sys.stderr,
                flush=True,
            )
        elif self.capture is not None:
            print(
                f"capture mode: the app runs in network namespace {self.capture.pod.netns} "
                f"({self.capture.pod.address}); its TCP goes through the sidecar, mesh names resolve there",
                file=sys.stderr,
                flush=True,
            )
        elif self.credential_file is not None:
            reg = self.registration
            who = "the app reaches" if self.o.command else "apps reach"
            print(
                f"proxy mode: {who} the mesh through HTTP_PROXY (http://{reg.outbound_address}:{reg.outbound_port}, "
                f"with a credential only they hold: in the app's environment and in {self.credential_file}) "
                "and --upstream ports (run as root with --capture to capture its traffic instead)",
                file=sys.stderr,
                flush=True,
            )
        log.info(
            "sidecar %s ready at %s (inbound :%d, outbound :%d)",
            self.registration.id,
            self.registration.address,
            self.registration.port,
            OUTBOUND_PORT,
        )
        for (variable, where), u in zip(
            upstream_env(self.registration).items(), self.registration.upstreams, strict=False
        ):
            print(f"upstream {u.service}.{u.namespace}:{u.port} at {where} (${variable})", file=sys.stderr, flush=True)

    async def _up(self) -> bool:
        """What the health reported to the control plane means: the app accepts connections, and
        so does the sidecar's inbound listener once it has."""
        if self.capture is not None:
            app = await self.capture.open(self.registration.app_port)
        else:
            app = await _tcp_open("127.0.0.1", self.registration.app_port)
        if not app or self.capture is not None:
            return app
        # Once its inbound listener has served, a sidecar whose listener stops accepting (Envoy
        # told to `/drain_listeners`, as Istio's failover task does) leaves its callers' endpoints.
        inbound = await _tcp_open(self.registration.address, self.registration.port)
        self._inbound_served = self._inbound_served or inbound
        return inbound or not self._inbound_served

    async def _probe_forever(self) -> None:
        while True:
            healthy = await self._up()
            if healthy != self.app_healthy:
                self.app_healthy = healthy
                self.registry.heartbeat_now.set()
            await asyncio.sleep(0.5 if healthy else 0.1)

    async def _stop_app(self, timeout: float = 5.0) -> int:
        app = self.app
        if app is None:
            return 0  # none was started
        if app.returncode is None:
            app.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(app.wait(), timeout)
            except TimeoutError:
                app.kill()
        return _exit_status(await app.wait())

    async def _cleanup(self) -> None:
        """Reverse order of start: app (above), registration, Envoy, agent port, relay, lease."""
        if self.app is not None and self.app.returncode is None:
            await self._stop_app()
        await self.identity.keysmith.close()  # one started for a certificate never asked for
        if self.identity.chain:  # registered with it; without one there is nothing to undo
            await self.registry.deregister()
        await self.envoy.stop()
        if self._envoy is not None:
            self._envoy.cancel()
            await asyncio.gather(self._envoy, return_exceptions=True)
        if self._agent_port is not None:
            await self._agent_port.close()
        for server in self._servers:
            await server.stop(grace=0.2)
        if self.lease is not None:
            self.lease.release()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def upstream_env(reg: Registration) -> dict[str, str]:
    """LATTICE_UPSTREAM_<SERVICE>_<PORT>=host:port per upstream, so the app finds its local ports;
    the namespace joins the name for a service of another namespace."""
    out = {}
    for u in reg.upstreams:
        parts = [u.service] if u.namespace == reg.namespace else [u.service, u.namespace]
        out["_".join(["LATTICE_UPSTREAM", *parts, str(u.port)]).upper().replace("-", "_")] = (
            f"{reg.outbound_address}:{u.local_port}"
        )
    return out


def _no_proxy(address: str) -> dict[str, str]:
    """The upstream ports are dialed directly: HTTP clients and gRPC (which also obeys http_proxy)
    must not send those connections to the HTTP proxy."""
    current = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    value = ",".join(filter(None, [current, address]))
    return {"no_proxy": value, "NO_PROXY": value}


def _exit_status(code: int) -> int:
    """A shell's exit status: the code, or 128 + the signal that ended the process."""
    return code if code >= 0 else 128 - code


async def _watched(task: asyncio.Task) -> None:
    """A task started before the sidecar's task group, as one of its own: its failure stops the
    sidecar, and the group's end cancels it."""
    try:
        await task
    finally:
        task.cancel()


async def _tcp_open(address: str, port: int) -> bool:
    """Whether something accepts a connection on address:port (an IP). A bare socket, closed once
    connected: a fifth less CPU per probe than a stream's transport and buffers."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), 1.0)
        except (OSError, TimeoutError):
            return False
    return True


def _struct(values: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def exposure_warning(reg) -> str:
    """What other local users can and cannot do to a workload run without capture (README,
    "Security model")."""
    identity = f"{reg.namespace}/{reg.service_account}"
    protected = (
        f"without --capture (root), this workload shares the host's loopback with every local user: its outbound "
        f"listener ({reg.outbound_address}:{reg.outbound_port}) answers only requests carrying the credential in "
        "the app's HTTP_PROXY (407 otherwise)"
    )
    upstreams = ", ".join(str(u.local_port) for u in reg.upstreams)
    lent = (
        f"; but any local user can send connections through its --upstream port(s) {upstreams} on "
        f"{reg.outbound_address}, which cannot carry a credential and leave with this workload's identity ({identity})"
        if upstreams
        else ""
    )
    return (
        f"{protected}{lent}; any local user can also call the app's own port on 127.0.0.1 around the sidecar. "
        "Run with --capture to give the workload a network namespace of its own (README, 'Security model')"
    )


async def run_sidecar(options: RunOptions) -> int:
    return await Sidecar(options).run()
