"""An in-place sidecar upgrade: `lattice run` re-executes itself (SIGHUP) while the app runs on.

The agent writes what the next agent needs into a 0600 file in its 0700 run directory, names it
in LATTICE_HANDOVER and execs the same command line again — with the code installed now, so
`pip install -U` then SIGHUP upgrades it. The PID stays (exec), so the app and Envoy stay its
children. The new agent keeps the workload's proxy id, address (the lease's locked descriptor is
inherited), ports and health, re-attests with the certificate kept on the host
(agent/kept_identity.py), and answers Envoy from the config Envoy last ACKed. It serves Envoy on
sockets of a new generation (`xds-1.sock`, ...), so the old Envoy, which keeps serving on its last
config meanwhile, never talks to it; it starts the next Envoy epoch, which takes the listening
sockets over by hot restart (agent/envoy.py) — no connection refused, no request lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2

from lattice.agent.registration import Registration, Upstream

log = logging.getLogger("lattice.agent")
ENV = "LATTICE_HANDOVER"
OPTIONS_FD = "--options-fd"  # agent/launch.py's option (not imported: launch starts the sidecar, which imports this)
FILE = "handover.json"


@dataclass(frozen=True)
class Handover:
    run_dir: str
    generation: int  # how many agents ran this workload before: names the agent's sockets
    registration: dict
    placed: tuple[str, str]  # (advertised address, local address), as Sidecar._place chose them
    lease_address: str | None
    lease_fd: int | None
    app_pid: int | None
    app_healthy: bool
    envoy_pid: int
    envoy_epoch: int
    envoy_base_id: int | None
    config: dict[str, str] = field(default_factory=dict)  # type URL -> DiscoveryResponse Envoy ACKed, base64

    @staticmethod
    def encode(responses: dict) -> dict[str, str]:
        return {t: base64.b64encode(r.SerializeToString()).decode() for t, r in responses.items()}

    def decoded_config(self) -> dict[str, discovery_pb2.DiscoveryResponse]:
        return {t: discovery_pb2.DiscoveryResponse.FromString(base64.b64decode(v)) for t, v in self.config.items()}


def incoming() -> Handover | None:
    """The state the previous agent left, when this process is its re-execution."""
    path = os.environ.pop(ENV, None)
    if not path:
        return None
    try:
        raw = json.loads(Path(path).read_text())
        Path(path).unlink(missing_ok=True)
        raw["placed"] = tuple(raw["placed"])
        known = {f.name for f in fields(Handover)}  # a later version may hand over more than this one reads
        return Handover(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError) as e:
        raise RuntimeError(f"cannot read the previous agent's handover {path}: {e}") from None


def registration_from(record: dict) -> Registration:
    """The registration `Registration.dump()` wrote, once more as the agent holds it (JSON made
    the upstreams dicts and the listen ports strings)."""
    record = dict(record)
    record["upstreams"] = [Upstream(**u) if isinstance(u, dict) else Upstream(*u) for u in record.get("upstreams", ())]
    record["listen"] = {int(k): int(v) for k, v in record.get("listen", {}).items()}
    return Registration(**record)


def reexec(state: Handover, handed: dict | None = None) -> None:
    """Replace this process by a new run of the same command line; returns only if exec failed.
    `handed`: for an agent started by `lattice run` (agent/launch.py), its options, given to the
    new agent in a new in-memory file as `lattice run` gave them to this one."""
    path = Path(state.run_dir) / FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f)
    if state.lease_fd is not None:
        os.set_inheritable(state.lease_fd, True)  # the lock goes with the descriptor: the address stays ours
    os.environ[ENV] = str(path)
    command = [sys.executable, *sys.orig_argv[1:]]
    if OPTIONS_FD in command and handed is not None:
        options = os.memfd_create("lattice-agent-options", 0)
        os.write(options, json.dumps(handed).encode())
        os.lseek(options, 0, os.SEEK_SET)
        os.set_inheritable(options, True)
        command[command.index(OPTIONS_FD) + 1] = str(options)
    log.info("re-executing %s (the app and Envoy run on)", " ".join(command[:3]))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execv(command[0], command)
    except OSError as e:
        os.environ.pop(ENV, None)
        path.unlink(missing_ok=True)
        log.error("cannot re-execute %s: %s; this agent runs on", command[0], e.strerror)


class AdoptedProcess:
    """A child the previous agent started: signalled by pid (still ours, never reaped, so never
    reused) and waited on through a pidfd. The subset of asyncio's Process the sidecar uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone, and reaped by the previous agent: its status is lost
            self._fd = None
            self._set(1)
            return
        asyncio.get_running_loop().add_reader(self._fd, self._reap)
        self._reap()

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 1 << 8
        if pid == self.pid:
            self._set(os.waitstatus_to_exitcode(status))

    def _set(self, code: int) -> None:
        self.returncode = code
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None, "_set records the status before it sets _exited"
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
