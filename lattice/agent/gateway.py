"""`lattice gateway`: an ingress gateway proxy — the sidecar's agent and Envoy, with no app.

It registers as a `kind: gateway` workload (labels `istio=ingressgateway` by default, so Istio's
Gateway selectors match it) and the control plane sends it listeners for the Gateways that select
it. Gateway port N is served on the local port `--listen N=LOCAL` names, else N from 1024 up, else
N + 8000 (Istio's gateway pods likewise serve port 80 on 8080), so no root is needed.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from lattice.agent.address import free_port, port_free
from lattice.agent.drain import DEFAULT_DRAIN_TIMEOUT, drain_gateway
from lattice.agent.handover import registration_from
from lattice.agent.sidecar import AGENT_PORT, OUTBOUND_PORT, Sidecar
from lattice.agent.registration import Registration
from lattice.api.registration import GATEWAY_PORT_OFFSET, gateway_local_port

DEFAULT_LABELS = {"istio": "ingressgateway"}


@dataclass
class GatewayOptions:
    server: str  # the control plane's agent API, https://host:port
    token: str | None = None
    name: str = "ingressgateway"
    namespace: str = "istio-system"
    service_account: str | None = None  # default istio-<name>, as Istio names its gateway
    labels: dict[str, str] = field(default_factory=dict)  # default istio=ingressgateway
    listen: dict[int, int] = field(default_factory=dict)  # Gateway port -> local port
    address: str | None = None  # default: a loopback address of its own
    ready_timeout: float = 60.0
    heartbeat_interval: float = 3.0
    envoy_log_level: str = "warning"
    command: list[str] = field(default_factory=list)  # always empty: a gateway runs no app
    capture: bool = False  # never: a gateway serves on its own address, not inside a captured namespace
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # a stop drains as a sidecar's does (agent/drain.py)

    @property
    def account(self) -> str:
        return self.service_account or f"istio-{self.name}"


class GatewayProxy(Sidecar):
    """The sidecar lifecycle (identity, Envoy, xDS relay, registration) serving Gateways instead of an app."""

    o: GatewayOptions

    async def _graceful_stop(self, app) -> int:
        """Drain, then stop (agent/drain.py): requests in flight through the gateway finish,
        within --drain-timeout. It does not wait for callers' proxies: it is no mesh endpoint."""
        await drain_gateway(self.envoy, asyncio.get_running_loop().time() + self.o.drain_timeout)
        return 0

    def _stats_config(self) -> dict | None:
        return None  # a gateway keeps all of Envoy's stats: one per mesh, and its upstreams are what it serves

    def _ports(self) -> list[int]:
        return sorted(
            {*self.o.listen.values(), gateway_local_port(80, self.o.listen), gateway_local_port(443, self.o.listen)}
        )

    def _registration(self) -> Registration:
        if self.handover is not None:  # upgraded in place (agent/handover.py): the same gateway
            return registration_from(self.handover.registration)
        o = self.o
        address = o.address or (self.lease.address if self.lease is not None else "")
        if not address:  # _place leases a loopback whenever --address is not given
            raise RuntimeError("a gateway without --address serves on a leased loopback address, and none was leased")
        labels = {"app": o.account, **(o.labels or DEFAULT_LABELS)}
        shown = gateway_local_port(80, o.listen)  # `port` is informative for a gateway: its HTTP port
        return Registration(
            id=f"{o.name}-{secrets.token_hex(3)}.{o.namespace}",
            name=o.name,
            namespace=o.namespace,
            service=o.account,
            service_account=o.account,
            labels=labels,
            address=address,
            port=shown,
            app_port=shown,
            protocol="http",
            outbound_port=OUTBOUND_PORT,
            agent_port=AGENT_PORT if port_free(address, AGENT_PORT) else free_port(address),
            kind="gateway",
            listen=o.listen,
        )

    async def _up(self) -> bool:
        return await self.envoy.live()

    def _announce(self) -> None:
        print(describe(self.registration), flush=True)


def describe(reg: Registration) -> str:
    """What a user needs to reach the gateway: its address and where each Gateway port is served."""
    lines = [
        f"gateway {reg.id} ready at {reg.address} (labels "
        f"{', '.join(f'{k}={v}' for k, v in sorted(reg.labels.items()))})"
    ]
    for number, local in sorted(reg.listen.items()):
        lines.append(f"  Gateway port {number}: {_url(reg.address, local)}")
    lines.append(
        f"  other Gateway ports: below 1024 on port + {GATEWAY_PORT_OFFSET} "
        f"(80 -> {_url(reg.address, gateway_local_port(80, {}))}), from 1024 on the port itself"
    )
    return "\n".join(lines)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


async def run_gateway(options: GatewayOptions) -> int:
    return await GatewayProxy(options).run()
