"""Transparent capture (`lattice run --capture`, root): the app in a network namespace of its own,
like a pod, whose every TCP connection goes through the sidecar without the app knowing.

The namespace (made here, or an existing one the user names) holds the app and its Envoy; the
agent stays in the host's. Inside, as Istio's istio-iptables does it:
- nat OUTPUT: TCP from anyone but Envoy (its group, PROXY_GID) and not to loopback is REDIRECTed
  to the outbound listener (127.0.0.1:15001), whose `original_dst` filter reads where it was going;
- filter INPUT: from outside the namespace only the inbound listener (and the agent port, for the
  control plane) may be reached; the app's own port is not, so nothing skips the sidecar.
On the host: the workload's address and its ports are DNATed to the namespace (other hosts reach
the inbound listener at the host's address), the namespace's traffic is forwarded and masqueraded.
Each workload's host rules live in chains of their own, removed when it stops.

VM mode (`--netns host`, Istio's capture for a VM that runs one app): no namespace; the app runs
in the host's own, whose nat OUTPUT chain sends TCP to the outbound listener (on the sidecar's
loopback) and DNS queries (UDP 53, to any resolver) to the agent's DNS proxy. Spared: Envoy (group
PROXY_GID), loopback, the control plane's addresses (the agent's registration, heartbeats and xDS)
and the agent's own forwarded DNS queries (socket mark DNS_MARK). Nothing inbound is redirected:
the inbound listener binds the host's address and the app listens on 127.0.0.1 only, so SSH and
every other service of the host are left as they are. One such workload per host (a lock); the
next one removes what a killed one left.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lattice.agent.address import LEASE_DIR

log = logging.getLogger("lattice.capture")
PROXY_GID = 1337  # Envoy runs with this group; its own connections are not captured (Istio's 1337)
POD_NETWORK = ipaddress.ip_network("100.127.0.0/16")  # /30 links, host side .1, namespace side .2
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf
HOST_NETNS = "host"  # `--netns host`: the host's own network namespace (VM mode)
DNS_MARK = 0x539  # the agent's forwarded DNS queries carry it, so VM mode does not capture them


class CaptureError(RuntimeError):
    pass


@dataclass
class Pod:
    netns: str
    address: str  # the namespace's own address (its inbound listener binds it)
    created: bool  # made by us, removed by us
    host_if: str = ""
    host_side: str = ""  # the host's end of the veth pair (for a namespace made here)
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    _lease: int | None = None
    _resolv: Path | None = None
    _host_rules: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (table, chain, rule)
    _chains: list[tuple[str, str, str]] = field(default_factory=list)  # (table, parent, chain)

    def command(self, args: list[str]) -> list[str]:
        """`args` run inside the namespace (with its resolv.conf); as they are in VM mode."""
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else list(args)

    def proxy_command(self, args: list[str]) -> list[str]:
        """`args` (Envoy) inside the namespace, in the group whose traffic is not captured."""
        # Changing its group clears the parent-death signal the agent set: setpriv sets it again, after.
        return self.command(["setpriv", f"--regid={PROXY_GID}", "--clear-groups", "--pdeathsig=KILL", "--", *args])


def _run(*args: str, netns: str | None = None) -> str:
    command = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CaptureError(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise CaptureError(
            "--capture needs root: it makes a network namespace and iptables rules. Run it with sudo, or without "
            "--capture (the app then gets HTTP_PROXY and --upstream ports)"
        )


def create_pod(service: str) -> Pod:
    """A new namespace joined to the host by a veth pair on a /30 of POD_NETWORK."""
    require_root()
    index, fd = _lease_link()
    base = POD_NETWORK.network_address + 4 * index
    host_ip, pod_ip = str(base + 1), str(base + 2)
    tag = secrets.token_hex(3)
    pod = Pod(f"lattice-{service[:40]}-{tag}", pod_ip, True, f"lt{tag}h", host_ip, tag, fd)
    _record(fd, {"netns": pod.netns, "tag": tag})  # for whoever takes the lease after a crash (_sweep)
    try:
        _run("ip", "netns", "add", pod.netns)
        _run("ip", "link", "add", pod.host_if, "type", "veth", "peer", "name", f"lt{tag}p")
        _run("ip", "link", "set", f"lt{tag}p", "netns", pod.netns)
        _run("ip", "link", "set", f"lt{tag}p", "name", "eth0", netns=pod.netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", pod.host_if)
        _run("ip", "link", "set", pod.host_if, "up")
        _run("ip", "addr", "add", f"{pod_ip}/30", "dev", "eth0", netns=pod.netns)
        _run("ip", "link", "set", "eth0", "up", netns=pod.netns)
        _run("ip", "link", "set", "lo", "up", netns=pod.netns)
        _run("ip", "route", "add", "default", "via", host_ip, netns=pod.netns)
    except CaptureError:
        release(pod)
        raise
    return pod


def existing_pod(name: str) -> Pod:
    """A namespace the user made (and wired to the network); its first global IPv4 address serves."""
    require_root()
    if not (Path("/run/netns") / name).exists():
        raise CaptureError(f"no network namespace {name!r} (`ip netns list` shows those there are)")
    out = _run("ip", "-4", "-o", "addr", "show", "scope", "global", netns=name).split()
    addresses = [out[i + 1].split("/")[0] for i, word in enumerate(out) if word == "inet"]
    if not addresses:
        raise CaptureError(f"network namespace {name} has no IPv4 address; give it one reachable from the host")
    return Pod(name, addresses[0], False)


def host_pod() -> Pod:
    """VM mode: the host's own namespace, held by one workload at a time; what a killed holder left
    (its OUTPUT chain, which would send the host's connections to a listener that is gone) removed."""
    require_root()
    LEASE_DIR.mkdir(mode=0o1777, parents=True, exist_ok=True)
    fd = os.open(LEASE_DIR / "vm-capture", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptureError(
            "another workload already captures this host's network namespace (--netns host): one per host; "
            "run this one with --capture alone (a namespace of its own)"
        ) from None
    for chain in _vm_chains():
        log.info("removing what a stopped workload left: chain %s", chain)
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", "OUTPUT", "-j", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)
    return Pod("", "", False, _lease=fd)


def _vm_chains() -> list[str]:
    rules = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout.split("\n")
    return sorted({line.split()[1] for line in rules if line.startswith("-N LATTICE-") and line.endswith("-VM")})


def capture_host(pod: Pod, outbound: tuple[str, int], dns: tuple[str, int], spared: list[str]) -> None:
    """VM mode's rules (see the module docstring), in a chain of their own jumped to from nat OUTPUT."""
    chain = f"LATTICE-{pod.tag}-VM"
    nat = ["iptables", "-w", "-t", "nat", "-A", chain]
    _run("iptables", "-w", "-t", "nat", "-N", chain)
    pod._chains.append(("nat", "OUTPUT", chain))
    for protocol in ("tcp", "udp"):
        _run(*nat, "-p", protocol, "-m", "owner", "--gid-owner", str(PROXY_GID), "-j", "RETURN")
    _run(*nat, "-p", "udp", "-m", "mark", "--mark", str(DNS_MARK), "-j", "RETURN")
    _run(*nat, "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", f"{dns[0]}:{dns[1]}")
    _run(*nat, "-p", "tcp", "-d", "127.0.0.0/8", "-j", "RETURN")
    for address in spared:
        _run(*nat, "-p", "tcp", "-d", address, "-j", "RETURN")
    _run(*nat, "-p", "tcp", "-j", "DNAT", "--to-destination", f"{outbound[0]}:{outbound[1]}")
    _run("iptables", "-w", "-t", "nat", "-I", "OUTPUT", "-j", chain)


def capture(
    pod: Pod,
    namespace: str,
    host_address: str | None,
    forwards: dict[int, int],
    inbound: list[int],
    outbound_port: int,
    agent: tuple[int, list[str]] | None = None,
) -> None:
    """Install the namespace's redirection and the host's forwarding (see the module docstring)."""
    resolv = NETNS_ETC / pod.netns / "resolv.conf"
    if not resolv.exists():
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text(
            f"# lattice: the agent's DNS proxy answers mesh names\nnameserver 127.0.0.1\n"
            f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        )
        pod._resolv = resolv
    ns = pod.netns
    nat = ["iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp"]
    _run(*nat, "-m", "owner", "--gid-owner", str(PROXY_GID), "-j", "RETURN", netns=ns)
    _run(*nat, "-d", "127.0.0.0/8", "-j", "RETURN", netns=ns)
    _run(*nat, "-j", "REDIRECT", "--to-ports", str(outbound_port), netns=ns)
    accept = ["iptables", "-w", "-A", "INPUT"]
    _run(*accept, "-i", "lo", "-j", "ACCEPT", netns=ns)
    _run(*accept, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT", netns=ns)
    for port in inbound:
        _run(*accept, "-p", "tcp", "-d", pod.address, "--dport", str(port), "-j", "ACCEPT", netns=ns)
    if agent is not None:  # the agent port: for the control plane only (it reads windows and taps there)
        port, sources = agent
        for source in sources:
            _run(*accept, "-p", "tcp", "-s", source, "--dport", str(port), "-j", "ACCEPT", netns=ns)
    _run(*accept, "-j", "DROP", netns=ns)
    _host_rules(pod, host_address, forwards)


def _host_rules(pod: Pod, host_address: str | None, forwards: dict[int, int]) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    dnat, snat, forward = f"LATTICE-{pod.tag}-IN", f"LATTICE-{pod.tag}-OUT", f"LATTICE-{pod.tag}-FWD"
    for table, parents, chain in (
        ("nat", ("PREROUTING", "OUTPUT"), dnat),
        ("nat", ("POSTROUTING",), snat),
        ("filter", ("FORWARD",), forward),
    ):
        _run("iptables", "-w", "-t", table, "-N", chain)
        for parent in parents:
            _run("iptables", "-w", "-t", table, "-I", parent, "-j", chain)
            pod._chains.append((table, parent, chain))
    if host_address:
        for host_port, port in forwards.items():
            _run("iptables", "-w", "-t", "nat", "-A", dnat, "-d", host_address, "-p", "tcp", "--dport", str(host_port),
                 "-j", "DNAT", "--to-destination", f"{pod.address}:{port}")  # fmt: skip
    _run("iptables", "-w", "-t", "nat", "-A", snat, "-s", pod.address, "-j", "MASQUERADE")
    _run("iptables", "-w", "-A", forward, "-s", pod.address, "-j", "ACCEPT")
    _run("iptables", "-w", "-A", forward, "-d", pod.address, "-j", "ACCEPT")


def release(pod: Pod) -> None:
    """Undo everything: host chains, the namespace (if ours) and its veth, resolv.conf, the lease."""
    for table, parent, chain in pod._chains:
        subprocess.run(["iptables", "-w", "-t", table, "-D", parent, "-j", chain], capture_output=True)
    for table, chain in {(t, c) for t, _, c in pod._chains}:
        subprocess.run(["iptables", "-w", "-t", table, "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", table, "-X", chain], capture_output=True)
    pod._chains.clear()
    if pod.created:
        subprocess.run(["ip", "netns", "delete", pod.netns], capture_output=True)  # takes the veth pair along
    if pod._resolv is not None:
        pod._resolv.unlink(missing_ok=True)
        try:
            pod._resolv.parent.rmdir()
        except OSError:
            pass
        pod._resolv = None
    if pod._lease is not None:
        os.ftruncate(pod._lease, 0)  # all undone: nothing for the lease's next holder to sweep
        os.close(pod._lease)
        pod._lease = None


_CHAINS = (
    ("nat", "PREROUTING", "IN"),
    ("nat", "OUTPUT", "IN"),
    ("nat", "POSTROUTING", "OUT"),
    ("filter", "FORWARD", "FWD"),
)


def _record(fd: int, record: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _sweep(fd: int) -> None:
    """What a holder of this lease that died without cleaning up (SIGKILL, a crash) left behind:
    its namespace (and with it the veth pair), its host chains, its resolv.conf."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        netns, tag = record["netns"], record["tag"]
    except (ValueError, TypeError, KeyError):
        return
    log.info("removing what a stopped workload left: network namespace %s, chains LATTICE-%s-*", netns, tag)
    for table, parent, suffix in _CHAINS:
        subprocess.run(
            ["iptables", "-w", "-t", table, "-D", parent, "-j", f"LATTICE-{tag}-{suffix}"], capture_output=True
        )
    for table, suffix in {(t, x) for t, _, x in _CHAINS}:
        subprocess.run(["iptables", "-w", "-t", table, "-F", f"LATTICE-{tag}-{suffix}"], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", table, "-X", f"LATTICE-{tag}-{suffix}"], capture_output=True)
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for pid in pids:  # an app that outlived its sidecar would keep the namespace alive
        try:
            os.kill(int(pid), 9)
        except (ValueError, OSError):
            pass
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
    (NETNS_ETC / netns / "resolv.conf").unlink(missing_ok=True)
    try:
        (NETNS_ETC / netns).rmdir()
    except OSError:
        pass
    os.ftruncate(fd, 0)


def _lease_link() -> tuple[int, int]:
    """A /30 of POD_NETWORK no other workload on this host holds (a file lock, freed on death)."""
    LEASE_DIR.mkdir(mode=0o1777, parents=True, exist_ok=True)
    for index in range(POD_NETWORK.num_addresses // 4):
        fd = os.open(LEASE_DIR / f"pod-{index}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _sweep(fd)
        return index, fd
    raise CaptureError(f"no free link in {POD_NETWORK} (leases in {LEASE_DIR})")


class CaptureMode:
    """What the sidecar does differently when capturing: where the app, Envoy, the agent port, the
    DNS proxy and the health probe live (see `lattice.agent.sidecar`)."""

    def __init__(self, service: str, netns_name: str | None) -> None:
        from lattice.agent.dns import DnsProxy
        from lattice.agent.netns import Inside

        self.vm = netns_name == HOST_NETNS
        if self.vm:
            self.pod = host_pod()
        else:
            self.pod = existing_pod(netns_name) if netns_name else create_pod(service)
        try:
            self.inside = None if self.vm else Inside(self.pod.netns)
            self.dns = DnsProxy()
            self._dns_socket: socket.socket | None = None
            self._port_leases: list[int] = []
        except Exception:
            release(self.pod)
            raise

    def host_port(self, address: str, port: int) -> int:
        """The host's port that leads to the inbound listener: `port` unless another workload of this
        host holds it (a lease, as for addresses) or anything listens there; then a free one."""
        from lattice.agent.address import app_port, port_free

        for candidate in (port, *(app_port(address) for _ in range(20))):
            fd = os.open(LEASE_DIR / f"port-{address}-{candidate}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if port_free(address, candidate):
                self._port_leases.append(fd)
                return candidate
            os.close(fd)
        raise CaptureError(f"no free port on {address} to forward to the inbound listener")

    def install(
        self,
        namespace: str,
        host_address: str | None,
        forwards: dict[int, int],
        inbound: list[int],
        outbound_port: int,
        agent: tuple[int, list[str]],
    ) -> None:
        from lattice.agent.dns import udp_socket

        capture(self.pod, namespace, host_address, forwards, inbound, outbound_port, agent)
        self._dns_socket = self._here(udp_socket)

    def install_host(self, outbound: tuple[str, int], spared: list[str]) -> None:
        """VM mode: the DNS proxy on a free port of 127.0.0.1, then the host's OUTPUT rules."""
        from lattice.agent.dns import udp_socket

        self._dns_socket = sock = udp_socket("127.0.0.1", 0)
        self.dns.mark = DNS_MARK
        capture_host(self.pod, outbound, sock.getsockname(), spared)

    def _here(self, fn):
        """fn() where the app's sockets live: in its namespace, or (VM mode) right here."""
        return fn() if self.inside is None else self.inside.run(fn)

    def listen(self, port: int):
        """A listening TCP socket on the namespace's address (the agent API: the control plane's way in)."""
        import socket

        def make():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.pod.address, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        return self._here(make)

    async def serve_dns(self) -> None:
        if self._dns_socket is None:
            raise RuntimeError("serve_dns before install/install_host: there is no DNS socket to serve on")
        await self.dns.serve(self._dns_socket)

    async def open(self, port: int) -> bool:
        """Whether the app accepts connections on 127.0.0.1:port inside the namespace."""
        import asyncio
        import socket

        def probe() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return True
            except OSError:
                return False

        executor = None if self.inside is None else self.inside.executor
        return await asyncio.get_running_loop().run_in_executor(executor, probe)

    def on_accept(self, type_url: str, response) -> None:
        """Envoy accepted listeners: the outbound one carries the DNS proxy's name table."""
        from envoy.config.listener.v3 import listener_pb2
        from google.protobuf import json_format

        from lattice.translate import LISTENER
        from lattice.translate.capture import DNS_METADATA
        from lattice.translate.names import OUTBOUND_LISTENER

        if type_url != LISTENER:
            return
        for resource in response.resources:
            listener = listener_pb2.Listener()
            resource.Unpack(listener)
            if listener.name == OUTBOUND_LISTENER:
                table = json_format.MessageToDict(listener.metadata.filter_metadata[DNS_METADATA])
                if table != self.dns.names:
                    log.info("DNS proxy: %d mesh names", len(table))
                self.dns.names = table

    def close(self) -> None:
        if self._dns_socket is not None:
            self._dns_socket.close()
        if self.inside is not None:
            self.inside.close()
        release(self.pod)
        for fd in self._port_leases:
            os.close(fd)
