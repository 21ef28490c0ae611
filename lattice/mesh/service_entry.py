"""ServiceEntries and WorkloadEntries as mesh services and endpoints (Istio's service-entry registry).

Each host and port of a ServiceEntry becomes a `Service` (so DestinationRules, VirtualServices and
cluster names treat it like any other); its endpoints come from `endpoints`, from the
WorkloadEntries its `workloadSelector` picks, or, for DNS resolution with neither, from the hosts.

Mesh mTLS to an entry endpoint follows Istio's auto mTLS: never for MESH_EXTERNAL; for
MESH_INTERNAL, when the endpoint's `security.istio.io/tlsMode` label says `istio`, or, without that
label, when it names a `serviceAccount` (an endpoint with an identity has a sidecar to present it).
A WorkloadEntry with neither is a workload without a sidecar and is spoken to in plaintext, unless
a DestinationRule's `tls` says otherwise.

`network` becomes the endpoint's `topology.istio.io/network` label (Istio's, usable in subsets).
Lattice's proxies declare no network, so, as Istio does for such proxies, no endpoint is filtered
or sent through a network gateway by it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from lattice.api import Resource
from lattice.api.service_entry import ServicePort, WorkloadEntrySpec, exported_to, is_ip
from lattice.mesh.workload import Service

TLS_MODE_LABEL = "security.istio.io/tlsMode"
NETWORK_LABEL = "topology.istio.io/network"  # Istio labels endpoints with their network, for subsets


@dataclass(frozen=True)
class EntryEndpoint:
    """One endpoint of one ServiceEntry port. Shaped like a `Workload` where the translator reads
    both (id, address, port, labels, healthy, namespace, service_account)."""

    id: str  # where it was declared, e.g. "WorkloadEntry default/vm-1"
    namespace: str
    address: str  # IP address, or a host name for DNS resolution
    port: int  # the service port it serves
    target_port: int  # where it listens
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    service_account: str = ""
    weight: int = 0  # 0: Envoy's default of 1
    locality: str = ""  # region/zone/subzone
    mesh_tls: bool = False
    healthy: bool = True  # no health checks for entries, as in Istio: listed means healthy
    draining: bool = False  # only registered workloads drain (`lattice run` stopping)


@dataclass(frozen=True)
class EntryRegistry:
    services: tuple[Service, ...] = ()
    endpoints: Mapping[str, tuple[EntryEndpoint, ...]] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[str, ...] = ()  # config that could not take effect, shown by `lattice status`


def entry_registry(
    service_entries: tuple[Resource, ...], workload_entries: tuple[Resource, ...], taken: set[str]
) -> EntryRegistry:
    """Services and endpoints of every ServiceEntry, oldest first. A host already served by
    registered workloads (`taken`) or by an older ServiceEntry stays with it."""
    services: list[Service] = []
    endpoints: dict[str, list[EntryEndpoint]] = defaultdict(list)
    problems: list[str] = []
    claimed: dict[str, Resource] = {}
    for se in service_entries:
        hosts = _claim(se, [h.lower().rstrip(".") for h in se.spec.hosts], taken, claimed, problems)
        addresses = _claim(se, list(se.spec.addresses), taken, claimed, problems, what="address")
        members = _members(se, workload_entries, problems)
        for i, host in enumerate(hosts):
            for port in se.spec.ports:
                # Addresses are extra names for the service; one host takes them, so each names one route.
                services.append(_service(se, host, port, tuple(addresses) if i == 0 else ()))
                endpoints[host].extend(_endpoints(se, port, host, members))
    return EntryRegistry(
        tuple(services), MappingProxyType({h: tuple(e) for h, e in endpoints.items()}), tuple(problems)
    )


def _claim(
    se: Resource,
    names: list[str],
    taken: set[str],
    claimed: dict[str, Resource],
    problems: list[str],
    what: str = "host",
) -> list[str]:
    kept = []
    for name in dict.fromkeys(names):
        owner = "registered workloads" if name in taken else _label(claimed[name]) if name in claimed else None
        if owner is not None:
            problems.append(f"{_label(se)}: {what} {name} already belongs to {owner}; ignored for that {what}")
            continue
        claimed[name] = se
        kept.append(name)
    return kept


def _label(r: Resource) -> str:
    return f"{r.kind} {r.namespace}/{r.name}"


def _service(se: Resource, host: str, port: ServicePort, addresses: tuple[str, ...]) -> Service:
    spec = se.spec
    return Service(
        host,
        se.namespace,
        port.number,
        port.lattice_protocol,
        host,
        source="ServiceEntry",
        resolution=spec.resolution,
        location=spec.location,
        addresses=addresses,
        export_to=tuple(spec.export_to),
        subject_alt_names=tuple(spec.subject_alt_names),
    )


def _members(
    se: Resource, workload_entries: tuple[Resource, ...], problems: list[str]
) -> list[tuple[str, str, WorkloadEntrySpec]]:
    """(where declared, namespace, entry) for each endpoint the ServiceEntry has."""
    spec = se.spec
    if spec.workload_selector is None:
        return [(f"{_label(se)} endpoints[{i}]", se.namespace, e) for i, e in enumerate(spec.endpoints)]
    wanted = spec.workload_selector.labels.items()
    chosen = [
        (_label(we), we.namespace, we.spec)
        for we in workload_entries
        if we.namespace == se.namespace and wanted <= we.spec.labels.items()
    ]
    if spec.resolution == "STATIC":
        named = [m for m in chosen if not is_ip(m[2].address)]
        problems.extend(
            f"{_label(se)} (STATIC) needs IP addresses; {m[0]} has host name {m[2].address}; left out" for m in named
        )
        chosen = [m for m in chosen if m not in named]
    if spec.resolution == "DNS_ROUND_ROBIN" and len(chosen) > 1:
        problems.append(
            f"{_label(se)} (DNS_ROUND_ROBIN) uses one endpoint; it selects {len(chosen)}, so only {chosen[0][0]} "
            "is used"
        )
        chosen = chosen[:1]
    return chosen


def _endpoints(
    se: Resource, port: ServicePort, host: str, members: list[tuple[str, str, WorkloadEntrySpec]]
) -> list[EntryEndpoint]:
    if se.spec.resolution == "NONE":
        return []  # the client's requested host is the endpoint (see translate/cds.py)
    if not members and se.spec.resolution != "STATIC" and se.spec.workload_selector is None:
        # DNS without endpoints: the host itself is resolved.
        return [
            EntryEndpoint(f"{_label(se)} host {host}", se.namespace, host, port.number, port.target_port or port.number)
        ]
    return [_endpoint(se, port, source, namespace, entry) for source, namespace, entry in members]


def _endpoint(se: Resource, port: ServicePort, source: str, namespace: str, entry: WorkloadEntrySpec) -> EntryEndpoint:
    labels = dict(entry.labels)
    if entry.network:
        labels.setdefault(NETWORK_LABEL, entry.network)
    return EntryEndpoint(
        source,
        namespace,
        entry.address,
        port.number,
        target_port=entry.ports.get(port.name) or port.target_port or port.number,
        labels=MappingProxyType(labels),
        service_account=entry.service_account or "",
        weight=entry.weight or 0,
        locality=entry.locality or "",
        mesh_tls=_mesh_tls(se.spec.location, labels, entry.service_account),
    )


def _mesh_tls(location: str, labels: dict[str, str], service_account: str | None) -> bool:
    if location == "MESH_EXTERNAL":
        return False
    mode = labels.get(TLS_MODE_LABEL)
    return mode == "istio" if mode is not None else bool(service_account)


def visible(service: Service, namespace: str) -> bool:
    """Whether a proxy in `namespace` sees `service` (a ServiceEntry's exportTo; `~` hides it)."""
    if "~" in service.export_to:
        return False
    return exported_to(service.export_to, service.namespace, namespace)
