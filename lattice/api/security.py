"""Istio `security.istio.io` schemas (v1beta1 and v1 share one schema): PeerAuthentication.

Field names are Istio's (camelCase); anything not modelled here is refused by name (see `meta.Spec`).
Which policy applies to a workload is decided in `lattice.mesh.peer_auth`, not here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from lattice.api.networking import IstioSpec

# Case-sensitive, as Istio's enum. UNSET means "inherit from the parent level".
MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class WorkloadSelector(IstioSpec):
    match_labels: dict[str, str] = Field(default_factory=dict)


class PeerAuthenticationMutualTLS(IstioSpec):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(IstioSpec):
    selector: WorkloadSelector | None = None
    mtls: PeerAuthenticationMutualTLS | None = None
    port_level_mtls: dict[int, PeerAuthenticationMutualTLS] = Field(default_factory=dict)

    @property
    def match_labels(self) -> dict[str, str]:
        """The selector's labels; empty means the policy is namespace- or mesh-wide."""
        return self.selector.match_labels if self.selector else {}

    @field_validator("port_level_mtls", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        # Checked here rather than by the key type so that errors read `spec.portLevelMtls`, not
        # pydantic's `[key]` location; YAML may write the port numbers as ints or as strings.
        if not isinstance(v, dict):
            return v
        ports = {key: _port_number(key) for key in v}
        bad = [repr(key) for key, port in ports.items() if port is None]
        if bad:
            raise ValueError(f"keys must be port numbers 1..65535; got {', '.join(bad)}")
        null = [str(ports[key]) for key, value in v.items() if value is None]
        if null:
            raise ValueError(
                f"the mTLS setting of port {', '.join(null)} must not be null; give {{mode: ...}} (UNSET inherits)"
            )
        if len(set(ports.values())) != len(ports):
            raise ValueError("a port is given more than once")
        return {ports[key]: value for key, value in v.items()}

    @field_validator("port_level_mtls")
    @classmethod
    def _needs_selector(
        cls, v: dict[int, PeerAuthenticationMutualTLS], info: ValidationInfo
    ) -> dict[int, PeerAuthenticationMutualTLS]:
        if "selector" not in info.data:
            return v  # the selector itself is invalid and already reported
        selector = info.data["selector"]
        if v and (selector is None or not selector.match_labels):
            raise ValueError(
                "portLevelMtls requires a workload selector; a namespace- or mesh-wide PeerAuthentication cannot "
                "set per-port modes"
            )
        return v


def _port_number(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, str) and re.fullmatch(r"[0-9]{1,5}", key):
        key = int(key)
    return key if isinstance(key, int) and 1 <= key <= 65535 else None
