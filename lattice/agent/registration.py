"""What the agent tells the control plane about its workload, as the agent builds it.

The same fields as the control plane's `lattice.api.registration.Registration` (which validates
what arrives, and refuses what it does not accept with a message the agent shows), held in plain
dataclasses: the agent builds one record and sends it as JSON, so it loads no schema library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Upstream:
    """`lattice run --upstream`: a local port on the workload's address that forwards to a service port."""

    service: str
    namespace: str
    port: int
    local_port: int


@dataclass(frozen=True)
class Registration:
    id: str
    name: str
    service: str
    service_account: str
    address: str
    port: int
    app_port: int
    outbound_port: int
    agent_port: int
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    protocol: str = "http"
    upstreams: list[Upstream] = field(default_factory=list)
    healthy: bool = False
    kind: str = "sidecar"  # or "gateway": no app, it serves the Gateways that select it on `listen`
    listen: dict[int, int] = field(default_factory=dict)
    local_address: str = ""  # where this host's own listeners bind when `address` is for other hosts
    inbound_address: str = ""
    capture: bool = False
    host_port: int = 0  # captured: the host's port forwarded to `port`

    @property
    def outbound_address(self) -> str:
        return self.local_address or self.address

    def dump(self) -> dict:
        """The record as the control plane's agent API takes it (JSON)."""
        return asdict(self)
