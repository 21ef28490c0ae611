"""What a process costs, read from /proc, and where the benchmark's processes may run.

CPU is utime + stime (clock ticks, all threads) so a proxy's cost is what the kernel charged it,
not what a sampler happened to see; memory is RssAnon, the private pages no other process shares
(a proxy's binary and shared libraries are paid once per machine, its heap once per proxy).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far, over all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / _TICKS


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, every process, ours or not):
    compared with what our own processes used, it shows whether something else ran meanwhile."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def rss_anon_mb(pid: int) -> float:
    """Private resident memory (RssAnon) of `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the kernel keeps this list per thread; the main one suffices
    for processes that spawn from their main thread, as `lattice run` does)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@contextlib.contextmanager
def pinned(cpus: set[int] | None):
    """Run the block on `cpus` only (None: leave it alone). Children started inside inherit it,
    which is how the servers get one core and the load generator the other."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(load generator's CPUs, servers' CPUs): apart when there are two or more, else unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def machine(envoy: str) -> dict:
    """The facts a reader needs to compare figures across machines."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    version = (
        subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=10)
        .stdout.strip()
        .split("version:")[-1]
        .strip()
    )
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": version,
    }
