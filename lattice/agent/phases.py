"""How a sidecar's start went: when each step ended, counted from the start of the `lattice run`
process itself (the same pid across the agent's re-exec, agent/launch.py), so the interpreter's
start and the imports are in the figures too.

`lattice run --log-level info` logs them in one line once the sidecar is ready, e.g.
`started in 0.62s: imports 0.21, envoy-started 0.24, identity 0.35, ...`: the steps that run side by
side (Envoy's start, the certificate, registration) each with the time it ended, so what waits on
what shows. bench/startup.py reads that line for its phase table.
"""

from __future__ import annotations

import os
import time

PHASES_PREFIX = "started in "


def since_process_start() -> float:
    """Seconds since this process was created (Linux: /proc; elsewhere since the first call)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _FIRST


_FIRST = time.monotonic()


class Phases:
    def __init__(self) -> None:
        self._origin = time.monotonic() - since_process_start()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        """`name` ended now (the first time only: a retried step keeps its first end)."""
        self.marks.setdefault(name, time.monotonic() - self._origin)

    def line(self) -> str:
        marks = sorted(self.marks.items(), key=lambda item: item[1])
        total = marks[-1][1] if marks else 0.0
        return PHASES_PREFIX + f"{total:.2f}s: " + ", ".join(f"{name} {at:.3f}" for name, at in marks)


STARTUP = Phases()  # this process's start (one sidecar per agent process)


def parse(line: str) -> dict[str, float]:
    """The marks of a `Phases.line()` found in `line` (empty if there is none)."""
    _, found, rest = line.partition(PHASES_PREFIX)
    if not found or ": " not in rest:
        return {}
    marks = {}
    for part in rest.split(": ", 1)[1].split(", "):
        name, _, at = part.strip().rpartition(" ")
        try:
            marks[name] = float(at)
        except ValueError:
            continue
    return marks
