"""A real etcd cluster on loopback for tests: Debian's `etcd` binary (`make tools` installs it),
free ports, a temporary data directory per member, members stopped and started by the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from harness import stop, wait_for

from lattice.agent.envoy import die_with_parent
from lattice.store.etcd_client import EtcdClient

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.names = [f"m{i}-{os.getpid()}" for i in range(size)]
        self.client_ports = [_free_port() for _ in range(size)]
        self.peer_ports = [_free_port() for _ in range(size)]
        self.token = f"lattice-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.processes: list[subprocess.Popen | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str = "") -> str:
        """The --store URL for every member, with a key prefix of the test's own."""
        return "etcd://" + ",".join(self.endpoints) + (f"/{prefix}" if prefix else "")

    def start(self) -> EtcdCluster:
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy()
        return self

    def start_member(self, i: int) -> None:
        peers = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        args = [
            ETCD,
            f"--name={self.names[i]}",
            f"--data-dir={self.root / self.names[i]}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={peers}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.token}",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--log-level=warn",
        ]
        log = open(self.root / f"{self.names[i]}.log", "ab")
        self.processes[i] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def kill_member(self, i: int) -> None:
        process = self.processes[i]
        if process is not None:
            stop(process, sig=signal.SIGKILL)
            self.processes[i] = None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running member answers and knows a leader."""
        client = EtcdClient([e for e, p in zip(self.endpoints, self.processes, strict=True) if p is not None])
        try:

            def healthy() -> bool:
                members = client.member_status()
                return all(m["reachable"] and m["leader"] for m in members)

            wait_for(healthy, timeout, interval=0.1, what=f"etcd members to elect a leader (logs in {self.root})")
        finally:
            client.close()

    def stop(self) -> None:
        for i in range(len(self.processes)):
            self.kill_member(i)
