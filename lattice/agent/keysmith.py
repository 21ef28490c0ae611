"""The workload's key and CSR, made in a short-lived process of their own.

Making a key and signing a CSR needs the cryptography library, which costs a process some 3 MB
of private memory once loaded; the agent needs it for a moment at start and at each renewal, and
runs for the app's whole life. So `Keysmith` starts `python -m lattice.agent.keysmith`, which
makes the key at once, then reads the SPIFFE ID the CSR asks for from its standard input (the
agent knows it once it has the trust bundle, which names the trust domain) and writes the key and
CSR, as JSON, to its standard output, and exits; unasked for `WAIT` seconds, it exits too. The
agent's process starts the first one before it loads its own modules (`prestart`), so the first
certificate does not wait for it. The key crosses a pipe only: never a command line, a file or
the environment.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

SECRET_ENV = ("LATTICE_TOKEN", "LATTICE_ADMIN_TOKEN")  # the child needs no credential
TIMEOUT = 30.0  # seconds for the child's whole work (an interpreter start and a P-256 key)
WAIT = 300.0  # seconds a child waits to be asked before it exits
_prestarted: list[subprocess.Popen] = []  # started by the agent's process first thing (agent/launch.py)


class KeysmithError(RuntimeError):
    pass


def _spawn() -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "lattice.agent.keysmith"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def prestart() -> None:
    """Start the first key's child now, so that it has loaded its library and made the key while
    the agent loads its own modules (the first certificate is on the path to the first request)."""
    if not _prestarted:
        _prestarted.append(_spawn())


class Keysmith:
    """One key and CSR: `start()` early, `await forge(spiffe_id)` when the trust domain is known."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None

    async def start(self) -> None:
        if self._child is None:
            self._child = _prestarted.pop() if _prestarted else _spawn()

    async def forge(self, spiffe_id: str) -> tuple[bytes, bytes]:
        """(key PEM, CSR PEM) for `spiffe_id`, from the started child (started now if not)."""
        import asyncio  # here: the child process itself has no use for it

        await self.start()
        child, self._child = self._child, None
        assert child is not None
        try:
            out, err = await asyncio.to_thread(child.communicate, spiffe_id.encode() + b"\n", TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise KeysmithError(f"making the key and CSR took over {TIMEOUT:.0f}s") from None
        if child.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
            raise KeysmithError(f"making the key and CSR failed: {tail[0]}")
        made = json.loads(out)
        return made["key"].encode(), made["csr"].encode()

    async def close(self) -> None:
        """Ends a child started for nothing (the agent stopping before it asked)."""
        child, self._child = self._child, None
        for process in [*([child] if child is not None else []), *_prestarted]:
            if process.poll() is None:
                process.kill()
            process.wait()
        _prestarted.clear()


def main() -> int:
    from lattice.identity import SpiffeId, key_pem, make_csr, new_key

    key = new_key()
    if not select.select([sys.stdin], [], [], WAIT)[0]:
        return 1  # nobody asked
    line = sys.stdin.readline().strip()
    if not line:
        return 1  # the agent went away without asking
    try:
        identity = SpiffeId.parse(line)
    except ValueError as e:
        print(f"not a SPIFFE ID: {e}", file=sys.stderr)
        return 2
    json.dump({"key": key_pem(key).decode(), "csr": make_csr(key, identity).decode()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
