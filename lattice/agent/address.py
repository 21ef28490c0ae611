"""A loopback address per workload, so many workloads share one machine without port clashes.

Leases are advisory file locks in a machine-wide directory: the kernel releases a lock when its
holder dies, so a crashed workload never leaks its address. The directory is shared by every local
user (sticky, like /tmp), so it is checked before use: a real directory, not a symlink, owned by
root or by us; lease files are opened without following symlinks, so another user's planted link
never makes us open (or lock) a file of theirs choosing.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import random
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

LEASE_DIR = Path(os.environ.get("LATTICE_LEASE_DIR", "/tmp/lattice-loopback"))
FIRST_SUBNET = 10  # 127.0.10.x first, as DESIGN.md says


@dataclass
class AddressLease:
    address: str
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lease_loopback(ports: list[int]) -> AddressLease:
    """The first 127.0.x.y not leased by another workload on which all `ports` are free."""
    _check_lease_dir(LEASE_DIR)
    for third in range(FIRST_SUBNET, 255):
        for fourth in range(2, 255):
            address = f"127.0.{third}.{fourth}"
            fd = _try_lock(LEASE_DIR / address)
            if fd is None:
                continue
            if all(port_free(address, p) for p in ports):
                return AddressLease(address, fd)
            os.close(fd)
    raise RuntimeError(f"no free loopback address in 127.0.{FIRST_SUBNET}.0-127.0.254.255 (leases in {LEASE_DIR})")


def _check_lease_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o1777)  # every local user leases here; sticky: none can remove another's lease
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(
            f"the lease directory {path} is not a directory (a symlink?); remove it or set LATTICE_LEASE_DIR"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise RuntimeError(
            f"the lease directory {path} belongs to uid {info.st_uid}, not root or us: another user may have planted "
            "it; remove it or set LATTICE_LEASE_DIR"
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise RuntimeError(f"the lease directory {path} is writable by others but not sticky; chmod 1777 it")


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError:  # a symlink planted there (ELOOP), or another user's lease we may not open: taken
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def app_port(address: str = "127.0.0.1") -> int:
    """A free port for an app to bind a moment later, chosen below the kernel's ephemeral range.

    bind(0) and outgoing connections take their ports from the ephemeral range, so on a busy
    machine a port found free there can be taken again before the app binds it ("address already
    in use"). Below that range only another such pick can take it, and picking at random makes
    that unlikely.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, low)
        if port_free(address, port):
            return port
    return free_port(address)


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; macOS starts at 49152
    return max(low, 20001)


def host_address_towards(host: str, port: int) -> str:
    """This host's address on its route to `host`: the one a peer there sees it connect from, and
    so the one to advertise to other hosts. No packet is sent (a UDP socket only picks a route)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, target = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(target)
        return s.getsockname()[0]


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses: a control plane on this very machine."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_own(address: str) -> None:
    """A clear error unless `address` is one of this host's (a socket can bind it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as e:
            raise RuntimeError(
                f"--address {address} is not an address of this host ({e.strerror}); "
                "give one of its own, as `ip -brief address` lists them"
            ) from None
