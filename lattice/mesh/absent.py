"""Mesh names that no workload serves right now, so that a sidecar answers for them itself.

A name is the mesh's when a workload served it lately (the registry remembers a service whose last
workload left, for the endpoint grace) or when a mesh-bound VirtualService or a DestinationRule
names it under the mesh's own domain (`<name>.<namespace>.svc.<domain>`). Such a name must never
fall through to the passthrough (where the host's resolver might find something else of that name,
reached in plaintext): the translator gives it a virtual host that answers 503 "no healthy
upstream" with the name (translate/rds.py).
"""

from __future__ import annotations

from typing import Iterable

from lattice.mesh.workload import Service


def absent_services(
    served: Iterable[str],
    departed: Iterable[tuple[str, str, int, str]],
    named_hosts: Iterable[str],
    domain: str,
) -> tuple[Service, ...]:
    """Services (by FQDN) known to the mesh with no workload now; port 0 when no workload ever told it."""
    taken = set(served)
    out: dict[str, Service] = {}
    for name, namespace, port, protocol in departed:
        host = f"{name}.{namespace}.svc.{domain}"
        if host not in taken:
            out.setdefault(host, Service(name, namespace, port, protocol, host))
    suffix = f".svc.{domain}"
    for host in named_hosts:
        parts = host[: -len(suffix)].split(".") if host.endswith(suffix) else []
        if len(parts) == 2 and all(parts) and host not in taken:
            out.setdefault(host, Service(parts[0], parts[1], 0, "http", host))
    return tuple(out[h] for h in sorted(out))
