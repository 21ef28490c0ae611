"""An unprivileged local user (`nobody`, via setpriv) against a control plane and a workload run
by another user, without capture (findings 3 and 9): no token, no admin credential, no database."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import BACKEND, ControlPlane, Workload, http

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


# --- the outbound listener's credential (proxy mode) -----------------------------------------


@pytest.fixture(scope="module")
def pair(plane):
    """backend and client, both the echoing BACKEND app under `lattice run` as this user."""
    backend = Workload(plane, "backend", command=BACKEND).start()
    client = Workload(plane, "client", command=BACKEND).start()
    try:
        yield backend, client
    finally:
        client.stop()
        backend.stop()


def _proxy_env(client: Workload) -> Path:
    return Path(re.findall(r"(/\S+/proxy\.env)", client.log.read_text())[-1])


def _app(workload: Workload, path: str) -> dict:
    """Ask a workload's app directly (as this user, on its own port) and read its JSON answer."""
    return json.loads(http("GET", f"http://127.0.0.1:{workload.info['app_port']}{path}")[2])


def _count(backend: Workload) -> int:
    return _app(backend, "/__count")["count"]


def test_a_local_user_without_the_credential_gets_407_and_nothing_reaches_the_app(pair):
    backend, client = pair
    proxy = f"http://{client.address}:15001"
    before = _count(backend)
    for attempt in (
        ["-x", proxy],  # no credential
        ["-x", f"http://lattice:not-the-secret@{client.address}:15001"],  # a wrong one
        ["-x", proxy, "-H", "Proxy-Authorization: Bearer x"],  # another scheme
        ["-x", proxy, "-H", "Proxy-Authorization: Basic !!!"],  # not base64
    ):
        result = _as_nobody("curl", "-s", "-i", "--max-time", "10", *attempt, "http://backend:9080/from-nobody")
        head = result.stdout.split("\r\n\r\n", 1)[0].lower()
        assert head.startswith("http/1.1 407"), (attempt, result.stdout[:300], result.stderr)
        assert 'proxy-authenticate: basic realm="lattice"' in head, head
    # CONNECT is not served on the outbound listener at all (refused before any filter, for anyone).
    tunnel = _as_nobody(
        "curl", "-s", "-p", "-o", "/dev/null", "-w", "%{http_connect}", "-x", proxy, "http://backend:9080/"
    )
    assert tunnel.stdout.strip() in ("403", "407"), tunnel
    assert _count(backend) == before, "a request without the credential reached the app"


def test_the_app_gets_through_with_its_identity_and_the_credential_stops_at_its_sidecar(pair):
    backend, client = pair
    # The client app calls backend by name through the HTTP_PROXY `lattice run` gave it (urllib,
    # which turns the credential in the proxy URL into Proxy-Authorization by itself).
    called = _app(client, "/?call=http://backend:9080/from-the-app")["called"]
    assert called["status"] == 200, called
    seen = called["body"]["headers"]
    assert seen["x-forwarded-client-cert"].endswith("URI=spiffe://cluster.local/ns/default/sa/client"), seen
    assert "proxy-authorization" not in seen, "the sidecar's credential left the workload"
    env = _app(client, "/__env")["env"]
    assert env["HTTP_PROXY"] == env["http_proxy"] == client.outbound
    assert client.outbound.startswith("http://lattice:") and client.outbound.endswith(f"@{client.address}:15001")


def test_an_app_run_apart_reads_the_credential_from_proxy_env(pair):
    """`set -a; . proxy.env` (or systemd's EnvironmentFile=) and curl finds the proxy and its
    credential in http_proxy by itself."""
    backend, client = pair
    lines = dict(line.split("=", 1) for line in _proxy_env(client).read_text().splitlines() if "=" in line)
    assert set(lines) == {"HTTP_PROXY", "http_proxy"}
    result = subprocess.run(
        ["curl", "-s", "--max-time", "10", "http://backend:9080/from-curl"],
        env={"PATH": os.environ["PATH"], **lines},
        capture_output=True,
        text=True,
        timeout=20,
    )
    echo = json.loads(result.stdout)
    assert echo["path"] == "/from-curl" and "proxy-authorization" not in echo["headers"], result


def test_the_credential_file_is_the_users_alone(pair):
    _, client = pair
    path = _proxy_env(client)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    result = _as_nobody("cat", str(path))
    assert result.returncode != 0 and "lattice:" not in result.stdout, result


def test_the_secret_shows_in_no_log_listing_or_cli_output(plane, pair):
    _, client = pair
    secret = client.outbound.split("@", 1)[0].rsplit(":", 1)[1]
    assert len(secret) >= 40
    run_dir = _proxy_env(client).parent
    shown = {
        "lattice run's output": client.log.read_text(),
        "Envoy's log": (run_dir / "envoy.log").read_text() if (run_dir / "envoy.log").exists() else "",
        "the control plane's log": plane.log.read_text(),
        "ps, as nobody": _as_nobody("ps", "-eo", "args", "ww").stdout,
        "ps": subprocess.run(["ps", "-eo", "args", "ww"], capture_output=True, text=True).stdout,
        "lattice status": plane.cli("status", "-o", "json").stdout,
        "lattice proxy-config": plane.cli("proxy-config", "listeners", client.id, "-o", "json").stdout,
        "the config dump": json.dumps(plane.get(f"/api/v1/proxies/{client.id}/config_dump")),
        "the sidecar's environment, as nobody": _as_nobody("cat", f"/proc/{client.process.pid}/environ").stdout,
    }
    for where, text in shown.items():
        assert secret not in text, f"the proxy credential appears in {where}"
    assert "lattice:" in client.outbound and "proxy.env" in shown["lattice run's output"]
