"""The processes the demo starts: `lattice server` and one `lattice run` per workload."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from lattice.agent.envoy import die_with_parent, log_tail


def lattice_command() -> list[str]:
    """The `lattice` next to this Python (the installed script), else the CLI as a module."""
    script = shutil.which("lattice", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "lattice.cli.main"]


class Child:
    """One child process with its output in a log file of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Child:
        with open(self.log, "wb") as sink:  # noqa: ASYNC230 (a local log file, opened once per start)
            # A session of its own: a Ctrl-C in the terminal reaches the demo only, which then
            # stops children in order; PDEATHSIG covers the demo dying without a chance to.
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole group (Envoy and the app too) if it does not exit."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            _kill_group(self.process.pid)
            await self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def stop_all(children: list[Child], timeout: float = 10.0) -> None:
    """Stop children in parallel; each one's own stop bounds the wait."""
    async with asyncio.TaskGroup() as tasks:
        for child in children:
            tasks.create_task(child.stop(timeout), name=f"stop-{child.name}")
