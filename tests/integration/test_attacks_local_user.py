"""An unprivileged local user (`nobody`, via setpriv) against a control plane and a workload run
by another user, without capture (findings 3 and 9): no token, no admin credential, no database."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import BACKEND, ControlPlane, Workload

pytestmark = pytest.mark.slow


def _as_nobody(*command: str) -> subprocess.CompletedProcess:
    setpriv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    return subprocess.run([*setpriv, *command], capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture(scope="module")
def plane():
    # Under a directory every user may traverse, as ~/.lattice under a 0755 home is.
    base = Path(tempfile.mkdtemp(prefix="lattice-local-user-"))
    base.chmod(0o755)
    cp = ControlPlane(base / "home").start()
    try:
        yield cp
    finally:
        cp.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_another_local_user_can_read_no_credential_and_no_state(plane):
    home = plane.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("lattice.db", "lattice.db-wal", "lattice.db-shm", "admin-token"):
        path = home / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    for name in ("admin-token", "lattice.db"):
        result = _as_nobody("cat", str(home / name))
        assert result.returncode != 0 and "Permission denied" in result.stderr, (name, result.stdout[:100])


def test_a_workloads_token_shows_in_no_process_listing(plane):
    token = plane.token("ledger")
    workload = Workload(plane, "ledger", command=BACKEND, token=token).start()
    try:
        listing = _as_nobody("ps", "-eo", "args", "ww")
        # The sidecar is listed (`lattice run` re-executes itself as `python -m lattice.agent ...
        # run --service ledger`, its options read from a memory file, not argv): the token is not.
        assert listing.returncode == 0 and "run --service ledger" in listing.stdout
        assert token not in listing.stdout and token.split(".")[2] not in listing.stdout
        environ = _as_nobody("cat", f"/proc/{workload.process.pid}/environ")
        assert environ.returncode != 0 and token not in environ.stdout
    finally:
        workload.stop()
