"""What the registry knows of running workloads and the services they make: the mesh's leaf
types, imported by the snapshot (`model`) and by every policy module that selects workloads
(`authz`, `peer_auth`, `rate_limits`, `request_authn`, `service_entry`, `telemetry`), so that
none of them needs the snapshot and the snapshot needs them without a cycle."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, NamedTuple

from lattice.mesh.hosts import host_aliases


class Upstream(NamedTuple):
    """A local port the workload's sidecar forwards to a service port (`lattice run --upstream`).
    A tuple, so a stored record (JSON) reads back as the same value."""

    service: str
    namespace: str
    port: int
    local_port: int


@dataclass(frozen=True)
class Workload:
    """One running instance under a sidecar: what the registry knows of it."""

    id: str  # proxy id, also Envoy's node id: "<name>-<suffix>.<namespace>"
    name: str  # workload name, e.g. "reviews-v1"
    namespace: str
    service: str
    service_account: str
    labels: Mapping[str, str]
    address: str  # where other sidecars reach this workload's inbound listener
    port: int  # service port, served by the inbound listener
    app_port: int  # where the app listens, on 127.0.0.1
    protocol: str
    outbound_port: int
    agent_port: int
    healthy: bool = False
    draining: bool = False  # stopping: callers finish what they sent, then choose other endpoints
    kind: str = "sidecar"  # or "gateway": a `lattice gateway` proxy, serving Gateways, not in any service
    listen: tuple[tuple[int, int], ...] = ()  # a gateway's (Gateway port, local port) overrides
    upstreams: tuple[Upstream, ...] = ()
    # Across hosts `address` is the host's; the listeners only this host may use (outbound, upstream
    # ports) then bind `local_address` (a loopback), and a captured workload's inbound listener binds
    # `inbound_address` (its namespace's). Empty: `address`, as on one machine.
    local_address: str = ""
    inbound_address: str = ""
    capture: bool = False  # the app's traffic is redirected to the outbound listener (`lattice run --capture`)
    host_port: int = 0  # captured: the host's port forwarded to the inbound listener, when not `port` itself

    @property
    def outbound_address(self) -> str:
        return self.local_address or self.address

    @property
    def inbound_bind(self) -> str:
        return self.inbound_address or self.address

    @property
    def version(self) -> str:
        return self.labels.get("version", "")

    # The translator reads these alike for workloads and ServiceEntry endpoints (mesh/service_entry.py).
    @property
    def target_port(self) -> int:
        return self.host_port or self.port  # other sidecars connect to the inbound listener, on the service port

    @property
    def weight(self) -> int:
        return 0  # Envoy's default

    @property
    def locality(self) -> str:
        return ""  # registered workloads declare none

    @staticmethod
    def from_record(record: dict) -> Workload:
        fields = {k: record[k] for k in Workload.__dataclass_fields__ if k in record}
        fields["labels"] = MappingProxyType(dict(record.get("labels", {})))
        # Stored as JSON, so keys come back as strings; a tuple keeps the dataclass hashable and JSON-able.
        fields["listen"] = tuple(sorted((int(k), int(v)) for k, v in dict(record.get("listen") or {}).items()))
        fields["upstreams"] = tuple(
            Upstream(**u) if isinstance(u, dict) else Upstream(*u) for u in record.get("upstreams") or ()
        )
        return Workload(**fields)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    port: int
    protocol: str
    hostname: str  # FQDN
    # Services of registered workloads keep these defaults; ServiceEntries set them (mesh/service_entry.py).
    source: str = "registry"  # or "ServiceEntry"
    resolution: str = "STATIC"  # STATIC (EDS), DNS, DNS_ROUND_ROBIN or NONE (the requested host as-is)
    location: str = "MESH_INTERNAL"
    addresses: tuple[str, ...] = ()  # extra names (IP addresses) the service answers to
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()

    def aliases(self, proxy_namespace: str, domain: str) -> list[str]:
        """Host names a client may use: Kubernetes' forms for registered services, a
        ServiceEntry's host and addresses as written."""
        if self.source == "registry":
            return host_aliases(self.name, self.namespace, proxy_namespace, domain)
        return [self.hostname, *self.addresses]
