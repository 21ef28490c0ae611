"""The outbound listener's credential as the agent keeps it (agent/proxy_credential.py): random per
sidecar, in a file only its user reads, read back by an agent that takes over, never printed."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from lattice.agent.proxy_credential import FILE, ProxyCredential
from lattice.translate.agent_names import PROXY_USERS_ENV


def _secret(url: str) -> str:
    return url.split("@", 1)[0].rsplit(":", 1)[1]


def test_each_sidecar_gets_its_own_secret_and_envoy_only_its_digest(tmp_path):
    one, two = ProxyCredential.for_run_dir(tmp_path / "a"), ProxyCredential.for_run_dir(tmp_path / "b")
    url = one.url("127.0.10.3", 15001)
    assert url.startswith("http://lattice:") and url.endswith("@127.0.10.3:15001")
    assert _secret(url) != _secret(two.url("127.0.10.3", 15001)) and len(_secret(url)) >= 43  # 256 bits
    users = one.envoy_env()[PROXY_USERS_ENV]
    digest = base64.b64encode(hashlib.sha1(_secret(url).encode()).digest()).decode()
    assert users == f"lattice:{{SHA}}{digest}" and _secret(url) not in users
    assert _secret(url) not in repr(one)


def test_the_file_is_private_and_an_agent_taking_over_reads_the_same_secret(tmp_path):
    tmp_path.chmod(0o700)
    credential = ProxyCredential.for_run_dir(tmp_path)
    path = credential.write(tmp_path, "127.0.10.3", 15001)
    assert path.name == FILE and stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    url = credential.url("127.0.10.3", 15001)
    assert lines == [f"HTTP_PROXY={url}", f"http_proxy={url}"]
    assert ProxyCredential.for_run_dir(tmp_path).url("127.0.10.3", 15001) == url


def test_a_link_planted_in_its_place_is_never_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / f".{FILE}.{os.getpid()}").symlink_to(target)
    with pytest.raises(OSError):
        ProxyCredential.for_run_dir(tmp_path).write(tmp_path, "127.0.10.3", 15001)
    assert not target.exists()
