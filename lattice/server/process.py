"""The process's own metrics, under the names every Prometheus client library gives them
(`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ...), so the
control-plane dashboards' CPU, memory and file-descriptor panels read Lattice as they read istiod.

Read from /proc/self at scrape time (Linux); elsewhere, what `resource` and `os` can say, and the
rest left out of the scrape rather than made up.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_PROC = Path("/proc/self")
_STARTED = time.time()


def register(registry) -> None:
    registry.read_counter("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", cpu_seconds)
    registry.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", collect=resident_memory_bytes)
    registry.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", collect=virtual_memory_bytes)
    registry.gauge("process_open_fds", "Open file descriptors.", collect=open_fds)
    registry.gauge("process_max_fds", "The most file descriptors the process may open.", collect=max_fds)
    registry.gauge("process_start_time_seconds", "When the process started, in Unix seconds.", collect=lambda: _STARTED)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status(field: str) -> float | None:
    """A `/proc/self/status` size (kB) in bytes."""
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_memory_bytes() -> float | None:
    found = _status("VmRSS")
    if found is None:  # not Linux: the peak is what getrusage has (bytes on macOS)
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return found


def virtual_memory_bytes() -> float | None:
    return _status("VmSize")


def open_fds() -> float | None:
    try:
        return float(len(os.listdir(_PROC / "fd")))
    except OSError:
        return None


def max_fds() -> float:
    return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
