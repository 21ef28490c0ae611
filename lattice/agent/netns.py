"""Network namespaces from the agent's side: run code inside one, keep its sockets.

A socket belongs to the network namespace it was created in, whichever thread uses it later. So
the agent (in the host's namespace) makes a thread that enters the workload's namespace once and
creates sockets there: the DNS proxy's, the app's health probes. setns(2) changes only the
calling thread; Python 3.11 has no os.setns, hence libc.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps named namespaces
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter(name: str) -> None:
    """Move the calling thread into network namespace `name`."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot enter network namespace {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Inside:
    """One thread inside a namespace; `run(fn, ...)` calls fn there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"netns-{name}", initializer=enter, initargs=(name,)
        )

    @property
    def executor(self) -> concurrent.futures.Executor:
        return self._pool

    def run(self, fn, *args):
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
