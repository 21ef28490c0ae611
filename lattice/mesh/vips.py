"""Virtual IPs for services: the address a captured app's DNS lookup gets for a mesh name.

A captured app resolves `reviews` and connects to the answer; its sidecar sees that address (the
connection's original destination) and knows the service by it, which is what a TCP service needs
(HTTP is routed by its Host header anyway). Istio auto-allocates such addresses from 240.240.0.0/16
(reserved, never routed). So does Lattice, in the control plane, so every host agrees: each host
name gets the address its hash points at, the next free one on a clash. The hash keeps a service's
address when others come and go; only two names hashing to one slot depend on each other.
A ServiceEntry that lists `addresses` keeps its own (the first).
"""

from __future__ import annotations

import hashlib
import ipaddress

from lattice.mesh.workload import Service

VIP_NETWORK = ipaddress.ip_network("240.240.0.0/16")
_SLOTS = VIP_NETWORK.num_addresses - 2  # neither the network's first nor its last address


def allocate(hostnames: list[str]) -> dict[str, str]:
    """{host name: virtual IP}, the same for the same names wherever it is computed."""
    taken: set[int] = set()
    out: dict[str, str] = {}
    for host in sorted(set(hostnames)):
        slot = int.from_bytes(hashlib.sha256(host.encode()).digest()[:4], "big") % _SLOTS
        while slot in taken:
            slot = (slot + 1) % _SLOTS
        taken.add(slot)
        out[host] = str(VIP_NETWORK.network_address + 1 + slot)
    return out


def service_address(service: Service, vips: dict[str, str]) -> str | None:
    """Where a captured app's connections to `service` go: a ServiceEntry's own IP address, else
    the virtual IP; None for a wildcard host (no one address answers for it)."""
    for address in service.addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue  # a CIDR range: not one address to answer a lookup with
        return str(ip)
    if service.hostname.startswith("*"):
        return None
    return vips.get(service.hostname)
