"""What an agent tells the control plane about its workload when it registers."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lattice.api.meta import DNS1123_LABEL, DNS1123_SUBDOMAIN

PROTOCOLS = ("http", "http2", "grpc", "tcp")


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
    healthy: bool = False

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

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(PROTOCOLS)}")
        return v
