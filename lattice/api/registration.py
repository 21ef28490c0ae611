"""What an agent tells the control plane about its workload when it registers."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lattice.api.constants import PROTOCOLS as PROTOCOLS
from lattice.api.meta import DNS1123_LABEL, DNS1123_SUBDOMAIN


class Upstream(BaseModel):
    """`lattice run --upstream`: a local port on the workload's address that forwards to a service
    port, for TCP and for clients that cannot use an HTTP proxy (Consul's explicit upstreams)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(min_length=1, max_length=63)
    namespace: str = Field(min_length=1, max_length=63)
    port: int = Field(ge=1, le=65535)
    local_port: int = Field(ge=1, le=65535)

    @field_validator("service", "namespace")
    @classmethod
    def _label(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return v


# A gateway serves a Gateway port below 1024 this far up, as Istio's gateway pods serve 80 on 8080:
# no root needed.
GATEWAY_PORT_OFFSET = 8000


def gateway_local_port(number: int, listen: dict[int, int]) -> int:
    """Where a gateway proxy serves Gateway port `number`: as `--listen` maps it, else the port
    itself from 1024 up, else number + 8000 (80 -> 8080, 443 -> 8443)."""
    if number in listen:
        return listen[number]
    return number if number >= 1024 else number + GATEWAY_PORT_OFFSET


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=253)
    name: str = Field(min_length=1, max_length=63)
    namespace: str = "default"
    service: str = Field(min_length=1, max_length=63)
    service_account: str = Field(min_length=1, max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    address: str
    port: int = Field(ge=1, le=65535)
    app_port: int = Field(ge=1, le=65535)
    protocol: str = "http"
    outbound_port: int = Field(ge=1, le=65535)
    agent_port: int = Field(ge=1, le=65535)
    upstreams: list[Upstream] = Field(default_factory=list, max_length=256)
    healthy: bool = False
    # A gateway proxy (`lattice gateway`) runs no app: it serves the Gateways that select it, on the
    # local ports `listen` maps Gateway ports to. `port` and `app_port` are then only informative.
    kind: Literal["sidecar", "gateway"] = "sidecar"
    listen: dict[int, int] = Field(default_factory=dict)
    # Where this host's own listeners bind when `address` is reachable from other hosts (see
    # lattice.mesh.model.Workload): outbound and upstream ports on `local_address`, the inbound
    # listener on `inbound_address` (a captured workload's network namespace).
    local_address: str = ""
    inbound_address: str = ""
    capture: bool = False
    host_port: int = Field(default=0, ge=0, le=65535)  # captured: the host's port forwarded to `port`

    @property
    def outbound_address(self) -> str:
        return self.local_address or self.address

    @field_validator("namespace", "service", "name")
    @classmethod
    def _label(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return v

    @field_validator("id", "service_account")
    @classmethod
    def _subdomain(cls, v: str) -> str:
        if not DNS1123_SUBDOMAIN.match(v):
            raise ValueError("must be lowercase letters, digits, '-' and '.'")
        return v

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("local_address", "inbound_address")
    @classmethod
    def _optional_ip(cls, v: str) -> str:
        if v:
            ipaddress.ip_address(v)
        return v

    @field_validator("listen")
    @classmethod
    def _ports(cls, v: dict[int, int]) -> dict[int, int]:
        bad = [f"{k}={p}" for k, p in v.items() if not (1 <= k <= 65535 and 1 <= p <= 65535)]
        if bad:
            raise ValueError(f"ports must be 1-65535: {', '.join(bad)}")
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(PROTOCOLS)}")
        return v

    @model_validator(mode="after")
    def _upstream_ports(self) -> Registration:
        """Each upstream needs a port of its own on the workload's address."""
        taken = {
            self.port: "the service port",
            self.outbound_port: "the outbound proxy port",
            self.agent_port: "the agent port",
        }
        for u in self.upstreams:
            owner = taken.get(u.local_port)
            if owner is not None:
                raise ValueError(
                    f"upstream {u.service}.{u.namespace}:{u.port}: local port {u.local_port} is already {owner}"
                )
            taken[u.local_port] = f"upstream {u.service}.{u.namespace}:{u.port}'s"
        return self
