"""A sidecar's graceful stop: no caller loses a request because this workload goes away.

In order, within `--drain-timeout` seconds:
1. the workload is reported draining (EDS health DRAINING), and the agent waits until every proxy
   connected to the control plane holds that (server/drain.py): callers finish the requests they
   sent here and choose other endpoints for new ones;
2. Envoy drains its inbound listener (`/drain_listeners?graceful&inboundonly`): HTTP/1.1
   responses carry `Connection: close`, HTTP/2 and gRPC connections get GOAWAY, and the agent
   waits until the callers' connections are gone (long-lived streams: until the time left for
   the app is reached);
3. the app is asked to stop (SIGTERM), so it ends its own streams cleanly (gRPC status,
   WebSocket close frame), and is killed if it has not stopped by the deadline;
4. then (sidecar.py) deregistration, Envoy, the agent.
The outbound listener stays up throughout: the app may call others while it finishes requests.

A gateway (agent/gateway.py) has no app and is nobody's endpoint: its stop is `drain_gateway`,
Envoy draining every listener and the requests in flight through it finishing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from lattice.agent.control import RegistryClient
from lattice.agent.envoy import EnvoyProcess
from lattice.agent.options import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT

log = logging.getLogger("lattice.agent")
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class DrainBudget:
    """How `--drain-timeout` is shared: the app always keeps a part of it to stop in."""

    total: float

    @property
    def app_share(self) -> float:
        return min(10.0, max(1.0, self.total / 3))

    @property
    def callers_share(self) -> float:
        return max(0.5, (self.total - self.app_share) / 2)


async def drain_callers(registry: RegistryClient, budget: DrainBudget) -> None:
    """Step 1: callers stop choosing this endpoint."""
    started = asyncio.get_running_loop().time()
    if await registry.drain(budget.callers_share):
        log.info("every proxy holds this endpoint as draining (%.2fs)", asyncio.get_running_loop().time() - started)
    else:
        log.warning("not every proxy confirmed the drain within %.1fs; going on", budget.callers_share)


async def drain_inbound(envoy: EnvoyProcess, port: int, tcp: bool, until: float) -> None:
    """Step 2: Envoy closes the callers' connections as their requests finish; wait for those
    requests (TCP: connections) to the app to end."""
    envoy.forget_listen_sockets()  # once Envoy closes a listener, no socket the agent kept takes its calls
    status, body = await envoy.admin("/drain_listeners", {"graceful": "", "inboundonly": ""}, post=True, timeout=2.0)
    if status != 200:
        log.warning("Envoy did not start draining (%s %s)", status, body[:200])
        return
    loop = asyncio.get_running_loop()
    active = None
    while loop.time() < until:
        active = await open_to_app(envoy, port, tcp)
        if active == 0:
            log.info("no request open to the app")
            return
        await asyncio.sleep(POLL_SECONDS)
    log.info("%s %s still open at the drain deadline; stopping the app", active, "connections" if tcp else "requests")


async def open_to_app(envoy: EnvoyProcess, port: int, tcp: bool) -> int | None:
    """Requests (TCP: connections) Envoy has open to the app, from its inbound cluster's stats."""
    name = rf"^cluster\.inbound\|{port}\|\|\.upstream_{'cx' if tcp else 'rq'}_active$"
    status, body = await envoy.admin("/stats", {"filter": name}, timeout=1.0)
    if status != 200:
        return None
    values = [int(v) for v in re.findall(rb": (\d+)\s*$", body, re.MULTILINE)]
    return sum(values) if values else 0


async def drain_gateway(envoy: EnvoyProcess, until: float) -> None:
    """A gateway's stop: Envoy drains all its listeners (HTTP/1.1 answers carry `Connection:
    close`, HTTP/2 gets GOAWAY, and after Envoy's drain time the listeners close, so new
    connections go to another gateway); wait until no request is in flight through it, or `until`."""
    envoy.forget_listen_sockets()
    status, body = await envoy.admin("/drain_listeners", {"graceful": ""}, post=True, timeout=2.0)
    if status != 200:
        log.warning("Envoy did not start draining (%s %s)", status, body[:200])
        return
    loop = asyncio.get_running_loop()
    active = None
    while loop.time() < until:
        active = await requests_in_flight(envoy)
        if active == 0:
            log.info("no request in flight through the gateway")
            return
        await asyncio.sleep(POLL_SECONDS)
    log.info("%s requests still in flight at the drain deadline; stopping", active)


async def requests_in_flight(envoy: EnvoyProcess) -> int | None:
    """Requests the gateway's HTTP listeners have open (Envoy's admin interface not counted)."""
    status, body = await envoy.admin("/stats", {"filter": r"^http\..*\.downstream_rq_active$"}, timeout=1.0)
    if status != 200:
        return None
    values = re.findall(rb"^http\.(.*)\.downstream_rq_active: (\d+)\s*$", body, re.MULTILINE)
    return sum(int(value) for prefix, value in values if prefix != b"admin")
