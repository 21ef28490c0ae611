"""Real hosts for multi-host tests: network namespaces on one private switch (root needed).

    with Network() as net:                        # a switch namespace with a bridge, subnet 10.77.0.0/24
        a, b = net.host("a"), net.host("b")       # each a namespace with eth0 (10.77.0.1, .2, ...) on the bridge
        plane = net.control_plane(a, tmp / "home")  # `lattice server --listen <a's address>` inside a
        w = net.workload(plane, b, "reviews", "v1", extra=("--capture",))  # `lattice run` inside b
        b.exec(["curl", "--noproxy", "*", "http://..."])   # any command inside a host
        b.call(socket.create_connection, (a.address, 15012))  # Python code inside a host (a thread of its own)
        net.cut(b, c); net.restore(b, c)          # drop, then pass again, everything between two hosts

Every name (namespaces, interfaces) carries a per-run suffix, so parallel runs never collide; the
bridge lives in the switch namespace, never in the root one, and `close()` (the context manager's
exit) removes every namespace it made, which takes their interfaces and processes' sockets along.
Processes started through a host die with the test process (PR_SET_PDEATHSIG) and are stopped by
whoever started them (`Workload.stop`, `ControlPlane.stop`).

`Host.call(fn, *args)` runs `fn` in a thread that has entered the host's network namespace: the
sockets it opens are that host's. `Host.popen`/`Host.exec` run a command under `ip netns exec`.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import secrets
import subprocess
from pathlib import Path

from harness import ENV_BASE, LATTICE, ControlPlane, Workload, die_with_parent, http, wait_for

SUBNET = "10.77.0"  # exists only inside the namespaces below
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    result = subprocess.run([*prefix, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} (netns {netns}): {result.stderr.strip()}")
    return result


def _enter(netns: str) -> None:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


class Host:
    """One machine: a network namespace with eth0 on the switch."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.network, self.name = network, name
        self.netns = f"lt{network.suffix}-{name}"
        self.address = f"{SUBNET}.{index}"
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _create(self) -> None:
        net = self.network
        outside, inside = f"lt{net.suffix}{self.name}", f"lt{net.suffix}{self.name}i"  # <= 15 characters
        ip("netns", "add", self.netns)
        ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        ip("link", "set", inside, "netns", self.netns)
        ip("link", "set", inside, "name", "eth0", netns=self.netns)
        ip("link", "set", outside, "netns", net.switch)
        ip("link", "set", outside, "master", "br0", "up", netns=net.switch)
        ip("addr", "add", f"{self.address}/24", "dev", "eth0", netns=self.netns)
        ip("link", "set", "eth0", "up", netns=self.netns)
        ip("link", "set", "lo", "up", netns=self.netns)

    def popen(self, args: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *args], preexec_fn=die_with_parent, **kw)

    def exec(self, args: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True, timeout=timeout, **kw
        )

    def call(self, fn, *args, **kw):
        """fn(*args, **kw) in this host's network namespace."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=_enter, initargs=(self.netns,))
        return self._pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        ip("netns", "delete", self.netns, check=False)


class Network:
    """A switch (a namespace holding bridge br0) and the hosts plugged into it."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(2)
        self.switch = f"lt{self.suffix}-switch"
        self.hosts: list[Host] = []
        self._cuts: set[tuple[str, str]] = set()

    def __enter__(self) -> Network:
        ip("netns", "add", self.switch)
        ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        ip("link", "set", "br0", "up", netns=self.switch)
        subprocess.run(
            ["ip", "netns", "exec", self.switch, "nft", "add table bridge cut; add chain bridge cut forward "
             "{ type filter hook forward priority 0; }"],
            check=True, capture_output=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def host(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(host)
        host._create()
        return host

    def cut(self, a: Host, b: Host) -> None:
        """Every frame between the two hosts dropped at the switch, both ways."""
        for src, dst in ((a, b), (b, a)):
            self._nft(f"add rule bridge cut forward ip saddr {src.address} ip daddr {dst.address} drop")

    def restore(self, a: Host, b: Host) -> None:
        self._nft("flush chain bridge cut forward")

    def _nft(self, command: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.switch, "nft", command], check=True, capture_output=True)

    def control_plane(self, host: Host, home: Path, *extra: str) -> HostPlane:
        return HostPlane(host, home, *extra).start()

    def workload(self, plane: HostPlane, host: Host, service: str, version: str = "v1", **kw) -> HostWorkload:
        return HostWorkload(plane, host, service, version, **kw)

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        ip("netns", "delete", self.switch, check=False)


class HostPlane(ControlPlane):
    """`lattice server --listen <host address>` on a host; the test talks to it from inside that host."""

    def __init__(self, host: Host, home: Path, *extra: str) -> None:
        super().__init__(home, "--listen", host.address, *extra)
        self.host = host

    def start(self, api_port: int = 0, xds_port: int = 0, agent_port: int = 0) -> HostPlane:
        self.home.mkdir(parents=True, exist_ok=True)
        args = [LATTICE, "server", "--home", str(self.home), "--api-port", "0", "--xds-port", "0"]
        args += ["--agent-port", "0", "--debounce", "0.05", *self.extra]
        self.process = self.host.popen(args, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        info = wait_for(self._discovery, 20, what=f"control plane to start (log {self.log})")
        self.api, self.xds, self.agent_api = info["api"], info["xds"], info["agent"]
        return self

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = self.admin | ({"Content-Type": "application/json"} if data else {})
        status, _, raw = self.host.call(http, method, f"{self.api}{path}", data, headers)
        return status, json.loads(raw or b"{}")

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = self.host.exec([LATTICE, *args], env=self.env, input=input, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(
                f"lattice {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result


class HostWorkload(Workload):
    """`lattice run --server https://<plane's host>:<port> ...` on another host."""

    def __init__(self, plane: HostPlane, host: Host, service: str, version: str = "v1", **kw) -> None:
        super().__init__(plane, service, version, **kw)
        self.host = host

    def start(self, wait: bool = True) -> HostWorkload:
        args = [LATTICE, "run", "--service", self.service, "--version", self.version, "--log-level", "info"]
        args += ["--server", self.plane.agent_api, *self.extra, "--", *self.command]
        token = self.token or self.plane.token(self._service_account(), self._namespace(), services=[self.service])
        env = ENV_BASE | {"SERVICE_VERSION": self.version, "LATTICE_TOKEN": token} | self.app_env
        env.pop("LATTICE_HOME", None)  # another host: nothing of the control plane's on its disk
        self.process = self.host.popen(args, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self.wait_ready() if wait else self

    def wait_ready(self, timeout: float = 90) -> HostWorkload:
        """As Workload.wait_ready; longer, since hosts start several sidecars at once on a shared machine."""
        self.info = wait_for(
            self._ready, timeout, what=f"{self.service}-{self.version} to be healthy and synced (log {self.log})"
        )
        return self
