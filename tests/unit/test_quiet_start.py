"""`lattice server` and `lattice run` start quietly: loading the CLI and everything the server and
the agent import prints no warning (it did: a CryptographyDeprecationWarning, from naming DSA in
the CA's key-kind table, on every start)."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_server_and_the_agent_prints_no_warning():
    code = "import lattice.cli.main, lattice.server.main, lattice.agent.sidecar, lattice.agent.gateway"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
