"""The frozen mesh snapshot the translator reads."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from lattice.api import Resource
from lattice.mesh.hosts import fqdn
from lattice.mesh.peer_auth import mtls_mode


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

    @property
    def version(self) -> str:
        return self.labels.get("version", "")

    @staticmethod
    def from_record(record: dict) -> Workload:
        fields = {k: record[k] for k in Workload.__dataclass_fields__ if k in record}
        fields["labels"] = MappingProxyType(dict(record.get("labels", {})))
        return Workload(**fields)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    port: int
    protocol: str
    hostname: str  # FQDN


@dataclass(frozen=True)
class MeshSnapshot:
    """Config plus registry; indexes are derived once in __post_init__."""

    version: str
    workloads: tuple[Workload, ...] = ()
    virtual_services: tuple[Resource, ...] = ()
    destination_rules: tuple[Resource, ...] = ()
    peer_authentications: tuple[Resource, ...] = ()
    domain: str = "cluster.local"  # DNS suffix of service host names
    trust_domain: str = "cluster.local"  # SPIFFE trust domain of workload identities
    root_namespace: str = "istio-system"  # where mesh-wide policies live
    services: tuple[Service, ...] = field(init=False)
    _endpoints: Mapping[str, tuple[Workload, ...]] = field(init=False, repr=False)
    _vs_by_host: Mapping[str, Resource] = field(init=False, repr=False)
    _dr_by_host: Mapping[str, Resource] = field(init=False, repr=False)
    _inbound_mtls: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        endpoints: dict[str, list[Workload]] = defaultdict(list)
        services: dict[tuple[str, int], Service] = {}
        for w in sorted(self.workloads, key=lambda w: w.id):
            host = fqdn(w.service, w.namespace, self.domain)
            endpoints[host].append(w)
            services.setdefault((host, w.port), Service(w.service, w.namespace, w.port, w.protocol, host))
        object.__setattr__(self, "services", tuple(services[k] for k in sorted(services)))
        object.__setattr__(self, "_endpoints", MappingProxyType({h: tuple(ws) for h, ws in endpoints.items()}))
        object.__setattr__(self, "_vs_by_host", MappingProxyType(self._first_by_host(self.virtual_services, "hosts")))
        object.__setattr__(self, "_dr_by_host", MappingProxyType(self._first_by_host(self.destination_rules, "host")))
        # Once per snapshot: every proxy's endpoints read each destination's mode.
        modes = {w.id: mtls_mode(self.peer_authentications, w, w.port, self.root_namespace) for w in self.workloads}
        object.__setattr__(self, "_inbound_mtls", MappingProxyType(modes))

    def _first_by_host(self, resources: tuple[Resource, ...], attr: str) -> dict[str, Resource]:
        # Istio: when several resources claim one host, the oldest wins; callers pass them oldest first.
        index: dict[str, Resource] = {}
        for r in resources:
            hosts = getattr(r.spec, attr)
            for h in [hosts] if isinstance(hosts, str) else hosts:
                index.setdefault(fqdn(h, r.namespace, self.domain), r)
        return index

    def endpoints(self, hostname: str) -> tuple[Workload, ...]:
        return self._endpoints.get(hostname, ())

    def service_ports(self, hostname: str) -> list[int]:
        return [s.port for s in self.services if s.hostname == hostname]

    def virtual_service_for(self, hostname: str) -> Resource | None:
        return self._vs_by_host.get(hostname)

    def destination_rule_for(self, hostname: str) -> Resource | None:
        return self._dr_by_host.get(hostname)

    def inbound_mtls(self, workload: Workload) -> str:
        """STRICT, PERMISSIVE or DISABLE for traffic arriving at `workload` on its service port."""
        return self._inbound_mtls[workload.id]

    def identity(self, workload: Workload) -> str:
        return f"spiffe://{self.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}"

    def workload(self, proxy_id: str) -> Workload | None:
        return next((w for w in self.workloads if w.id == proxy_id), None)

    def conflicts(self) -> list[str]:
        """Resources that lost a host to an older one (shown by `lattice status`)."""
        out = []
        for resources, index, attr in ((self.virtual_services, self._vs_by_host, "hosts"), (self.destination_rules, self._dr_by_host, "host")):
            for r in resources:
                hosts = getattr(r.spec, attr)
                for h in [hosts] if isinstance(hosts, str) else hosts:
                    winner = index.get(fqdn(h, r.namespace, self.domain))
                    if winner is not None and winner is not r:
                        out.append(f"{r.kind} {r.namespace}/{r.name}: host {h} is already claimed by {winner.namespace}/{winner.name}; ignored for that host")
        return out
