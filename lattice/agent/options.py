"""What `lattice run` / `lattice agent` were asked for: the sidecar's options, plain data.

A leaf module: the CLI builds `RunOptions` and hands them to the agent process (agent/main.py)
as JSON, without loading the agent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from lattice.agent.registration import Upstream

DEFAULT_DRAIN_TIMEOUT = 30.0  # as Kubernetes' default grace period: ample for a web service


class ProxyOptions(Protocol):
    """What the proxy lifecycle (agent/sidecar.py) reads of its options, a sidecar's (RunOptions) or
    a gateway's (agent/gateway.py GatewayOptions) alike."""

    server: str
    token: str | None
    address: str | None
    command: list[str]
    capture: bool
    ready_timeout: float
    heartbeat_interval: float
    envoy_log_level: str
    drain_timeout: float


@dataclass
class RunOptions:
    service: str
    port: int
    server: str  # the control plane's agent API, https://host:port
    token: str | None = None  # join token: who this workload may be
    command: list[str] = field(default_factory=list)
    version: str = "v1"
    namespace: str = "default"
    service_account: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    # Where other hosts reach this workload. Default: a leased loopback when the control plane is on
    # this machine, else this host's address on its route to the control plane.
    address: str | None = None
    app_port: int | None = None
    protocol: str = "http"
    upstreams: list[Upstream] = field(default_factory=list)  # local ports forwarding to service ports
    ready_timeout: float = 60.0
    heartbeat_interval: float = 3.0
    envoy_log_level: str = "warning"
    capture: bool = False  # the app in a network namespace of its own, its traffic captured (root)
    netns: str | None = None  # with capture: an existing network namespace to use instead of a new one
    # Envoy stats kept besides Istio's short default list (agent/bootstrap.py): Istio's
    # statsInclusionPrefixes, statsInclusionSuffixes, statsInclusionRegexps.
    stats_inclusion: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # a stop's whole budget: callers, connections, app (agent/drain.py)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunOptions:
        """The options `to_json` wrote (lists back into tuples and upstreams)."""
        data = dict(data)
        data["upstreams"] = [Upstream(**u) for u in data.get("upstreams", ())]
        data["stats_inclusion"] = tuple(tuple(items) for items in data.get("stats_inclusion", ((), (), ())))
        return cls(**data)
