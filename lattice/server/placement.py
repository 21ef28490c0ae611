"""Where a workload may be registered: at an address its peers reach, and never on another's;
and where its agent finds xDS.

An agent on another host must advertise an address of its own host: a loopback or link-local one
reaches nobody else, and any other host's address would steal that host's traffic. The control
plane checks it against the address the agent's connection comes from. Two live workloads never
share an address and port (they would answer for each other); a silent one (no heartbeat within
the timeout) on the same address and port is taken to be gone, replaced by the one registering,
and so is one of the same identity whose agent port refuses connections (its agent was killed
and is being restarted: agent_api.py).
"""

from __future__ import annotations

import asyncio
import ipaddress

from lattice.api.registration import Registration
from lattice.mesh import Workload


class PlacementRefused(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_address(registration: Registration, peer: str | None, local: str | None) -> None:
    """Refuse (400) an address other hosts cannot reach, or that is not the registering host's.
    `peer` is where the agent's connection comes from, `local` where it arrived. Whoever registers,
    never a link-local, multicast, unspecified or reserved address: callers' sidecars would send
    requests there (169.254.169.254 is a cloud's metadata service)."""
    for field, value in (("address", registration.address), ("local address", registration.local_address)):
        if value and _nowhere(ipaddress.ip_address(value)):
            raise PlacementRefused(
                400,
                f"workload {registration.id} would be advertised with {field} {value}, which is link-local, "
                "multicast, unspecified or reserved: no workload lives there; give --address an address of its host",
            )
    if peer is None or _local(peer) or peer == local:
        return  # an agent on the control plane's own host: loopback leases are how it shares a machine
    address = ipaddress.ip_address(registration.address)
    peer_ip = _ip(peer)
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        raise PlacementRefused(
            400,
            f"workload {registration.id} would be advertised at {address}, which other hosts cannot reach; "
            f"run it with --address set to its host's address (this control plane sees the host as {peer_ip})",
        )
    if address != peer_ip:
        raise PlacementRefused(
            400,
            f"workload {registration.id} would be advertised at {address}, but its agent connects from {peer_ip}; "
            f"a workload is advertised at its own host's address: run it with --address {peer_ip}",
        )


def _nowhere(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved


def conflicts(registration: Registration, workloads: tuple[Workload, ...]) -> list[Workload]:
    """Other workloads already at this registration's address and service port."""
    return [
        w
        for w in workloads
        if w.id != registration.id
        and w.kind == registration.kind == "sidecar"
        and w.address == registration.address
        and w.target_port == (registration.host_port or registration.port)
    ]


async def agent_listening(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a workload's agent port accepts connections: refused means its agent is gone; no
    answer in time (a loaded or distant host) counts as listening, so nothing live is replaced."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return False
    except (OSError, TimeoutError):
        return True
    writer.close()
    return True


def taken(registration: Registration, holder: Workload) -> PlacementRefused:
    return PlacementRefused(
        409,
        f"{registration.address}:{registration.host_port or registration.port} is already workload {holder.id}'s; "
        f"two workloads cannot share "
        f"an address and port: give this one another --port, or another --address",
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _local(peer: str) -> bool:
    try:
        return _ip(peer).is_loopback
    except ValueError:
        return True  # a unix socket: the same host


def xds_for(xds: str, arrived_at: str | None) -> str:
    """The xDS address to give an agent: as bound, or, when xDS listens on every address, the one
    the agent reached the control plane on (it reaches that one)."""
    host, _, port = xds.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::") and arrived_at:
        address = _ip(arrived_at)
        return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    return xds
