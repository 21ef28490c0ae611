"""Valid but suspicious configuration: what `lattice apply` warns about and `lattice analyze` lists.

Validation (lattice.api) refuses what cannot work; this finds what works but probably does not do
what its author meant: a subset no DestinationRule defines or no workload matches, weights that do
not add up to 100, a host that resolves to nothing, a Gateway that does not exist, two resources
claiming one host, an AuthorizationPolicy host without its `:port` variant, a Telemetry naming a
provider the server's mesh config does not have. Pure: a snapshot in, findings out.

Offline (`lattice analyze -f FILE` with no server), the snapshot holds only the files' resources and
no workloads, so the checks that need the registry (hosts, subset members) are skipped and say so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from lattice.api import Resource
from lattice.mesh.model import SNAPSHOT_FIELDS, MeshSnapshot
from lattice.mesh.telemetry import provider_problems


@dataclass(frozen=True)
class Finding:
    level: str  # "warning" or "info"
    resource: str  # "Kind namespace/name"
    field: str  # path of the field concerned, as in validation errors
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def snapshot_of(resources: Iterable[Resource], **settings) -> MeshSnapshot:
    """A snapshot holding `resources` (grouped by kind, in the order given) and `settings`."""
    grouped: dict[str, list[Resource]] = {}
    for r in resources:
        if r.kind_key in SNAPSHOT_FIELDS:
            grouped.setdefault(SNAPSHOT_FIELDS[r.kind_key], []).append(r)
    by_field: dict[str, Any] = {k: tuple(v) for k, v in grouped.items()}
    return MeshSnapshot("analyze", **by_field, **settings)


def analyze(snapshot: MeshSnapshot, targets: Iterable[Resource], registry_known: bool) -> list[Finding]:
    """Findings about `targets` (resources in `snapshot`). With `registry_known`, the snapshot's
    workloads are the mesh's, so hosts and subset members can be checked against them."""
    out: list[Finding] = []
    for r in targets:
        if r.kind == "VirtualService":
            out += _virtual_service(snapshot, r, registry_known)
        elif r.kind == "DestinationRule":
            out += _destination_rule(snapshot, r, registry_known)
        elif r.kind == "AuthorizationPolicy":
            out += _host_ports(r)
        elif r.kind == "Telemetry" and registry_known:  # offline there is no mesh config to name providers
            out += [_finding(r, path, message) for path, message in provider_problems(snapshot.mesh_telemetry, r.spec)]
    keys = {(r.kind, r.namespace, r.name) for r in targets}
    out += [Finding("warning", _conflict_subject(c), "", c) for c in snapshot.conflicts() if _mentions(c, keys)]
    if not registry_known and any(r.kind in ("VirtualService", "DestinationRule") for r in targets):
        out.append(
            Finding(
                "info",
                "",
                "",
                "offline: no control plane consulted, so hosts and subset members were not checked (run with a "
                "server to check them)",
            )
        )
    return out


def _virtual_service(snapshot: MeshSnapshot, vs: Resource, registry_known: bool) -> list[Finding]:
    out = []
    spec = vs.spec
    for gw in spec.gateways:
        if gw != "mesh" and not _gateway_exists(snapshot, gw, vs.namespace):
            out.append(
                _finding(
                    vs,
                    "spec.gateways",
                    f"Gateway {gw!r} does not exist; this VirtualService applies to no gateway until it does",
                )
            )
    for section in ("http", "tcp", "tls"):
        for i, rule in enumerate(getattr(spec, section)):
            out += _weights(vs, f"spec.{section}[{i}].route", rule.route)
            for j, d in enumerate(rule.route):
                out += _destination(
                    snapshot, vs, f"spec.{section}[{i}].route[{j}].destination", d.destination, registry_known
                )
            for j, m in enumerate(getattr(rule, "mirrors", ())):
                out += _destination(
                    snapshot, vs, f"spec.{section}[{i}].mirrors[{j}].destination", m.destination, registry_known
                )
            if getattr(rule, "mirror", None) is not None:
                out += _destination(snapshot, vs, f"spec.{section}[{i}].mirror", rule.mirror, registry_known)
    return out


def _weights(r: Resource, path: str, route: list) -> list[Finding]:
    weights = [d.weight for d in route]
    if len(route) == 1 and weights[0] not in (None, 100):
        return [
            _finding(
                r,
                f"{path}[0].weight",
                f"the only destination has weight {weights[0]}; it gets all traffic anyway (write 100 or leave it out)",
            )
        ]
    total = sum(w or 0 for w in weights)
    if len(route) > 1 and total != 100:
        shares = ", ".join(f"{(w or 0) * 100 / total:.1f}%" for w in weights) if total else "nothing"
        return [_finding(r, path, f"weights add up to {total}, not 100; traffic is split in proportion ({shares})")]
    return []


def _destination(snapshot: MeshSnapshot, r: Resource, path: str, d, registry_known: bool) -> list[Finding]:
    host = snapshot.resolve_host(d.host, r.namespace)
    out = []
    known = any(s.hostname == host for s in snapshot.services)
    if registry_known and not known:
        out.append(
            _finding(
                r,
                f"{path}.host",
                f"host {d.host!r} ({host}) resolves to no service or ServiceEntry; requests routed there get 503",
            )
        )
    if d.port is not None and known and d.port.number not in snapshot.service_ports(host):
        ports = ", ".join(map(str, snapshot.service_ports(host)))
        out.append(_finding(r, f"{path}.port.number", f"{host} has no port {d.port.number} (it has {ports})"))
    if d.subset:
        rule = snapshot.destination_rule_for(host)
        if rule is None or d.subset not in {s.name for s in rule.spec.subsets}:
            where = f"DestinationRule {rule.namespace}/{rule.name}" if rule else "no DestinationRule"
            out.append(
                _finding(
                    r,
                    f"{path}.subset",
                    f"subset {d.subset!r} of {host} is not defined ({where}); requests routed there get 503",
                )
            )
    return out


def _destination_rule(snapshot: MeshSnapshot, dr: Resource, registry_known: bool) -> list[Finding]:
    if not registry_known:
        return []
    host = snapshot.resolve_host(dr.spec.host, dr.namespace)
    if not any(s.hostname == host for s in snapshot.services):
        return [
            _finding(
                dr,
                "spec.host",
                f"host {dr.spec.host!r} ({host}) resolves to no service or ServiceEntry; this rule applies to "
                "nothing yet",
            )
        ]
    members = snapshot.endpoints(host)
    out = []
    for i, subset in enumerate(dr.spec.subsets):
        if not any(all(w.labels.get(k) == v for k, v in subset.labels.items()) for w in members):
            labels = ",".join(f"{k}={v}" for k, v in sorted(subset.labels.items())) or "(none)"
            out.append(
                _finding(
                    dr,
                    f"spec.subsets[{i}]",
                    f"subset {subset.name!r} (labels {labels}) matches no workload of {host}; requests routed "
                    "there get 503",
                )
            )
    return out


def _host_ports(policy: Resource) -> list[Finding]:
    """As istioctl warns: hosts match the request's Host exactly, so `example.com` does not match a
    request sent with `Host: example.com:8080`. A DENY on such a host is walked around by adding the
    port; an ALLOW refuses clients that send it. Name both (`example.com`, `example.com:*`)."""
    out = []
    for i, rule in enumerate(policy.spec.rules or ()):
        for j, op in enumerate(rule.operations):
            for field, hosts in (("hosts", op.hosts), ("notHosts", op.not_hosts)):
                ported = {h.rsplit(":", 1)[0].lower() for h in hosts if _has_port(h)}
                for host in hosts:
                    if host != "*" and not _has_port(host) and host.lower() not in ported:
                        out.append(_host_port_finding(policy, f"spec.rules[{i}].to[{j}].operation.{field}", host))
    return out


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1  # `[::1]:80` and `a:80` have one, `[::1]` and `a` none


def _host_port_finding(policy: Resource, path: str, host: str) -> Finding:
    effect = (
        "a client adding the port to Host (`{h}:80`) is not denied"
        if policy.spec.action in ("DENY", "AUDIT", "CUSTOM")
        else "a client adding the port to Host (`{h}:80`) is not matched"
    ).format(h=host)
    return _finding(
        policy,
        path,
        f"host {host!r} has no port variant: hosts match the Host header exactly, so {effect}; "
        f"list {host!r} and '{host}:*' together",
    )


def _gateway_exists(snapshot: MeshSnapshot, ref: str, namespace: str) -> bool:
    ns, _, name = ref.rpartition("/")
    return any(g.name == name and g.namespace == (ns or namespace) for g in snapshot.gateways)


def _finding(r: Resource, field: str, message: str) -> Finding:
    return Finding("warning", f"{r.kind} {r.namespace}/{r.name}", field, message)


def _mentions(conflict: str, keys: set[tuple[str, str, str]]) -> bool:
    return any(conflict.startswith(f"{kind} {ns}/{name}") or f"{ns}/{name}" in conflict for kind, ns, name in keys)


def _conflict_subject(conflict: str) -> str:
    return conflict.split(":", 1)[0]
