"""The machine-wide lease directory cannot be turned against a workload (finding 9)."""

from __future__ import annotations

import os

import pytest

from lattice.agent import address


@pytest.fixture
def lease_dir(tmp_path, monkeypatch):
    path = tmp_path / "leases"
    monkeypatch.setattr(address, "LEASE_DIR", path)
    return path


def test_a_planted_symlink_for_the_directory_is_refused(lease_dir, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    lease_dir.symlink_to(target)
    with pytest.raises(RuntimeError, match="not a directory"):
        address.lease_loopback([])
    assert list(target.iterdir()) == []


def test_a_planted_symlink_for_a_lease_is_never_followed(lease_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    lease_dir.mkdir()
    (lease_dir / "127.0.10.2").symlink_to(victim)
    lease = address.lease_loopback([])
    try:
        assert lease.address != "127.0.10.2"
        assert victim.read_text() == "precious"
    finally:
        lease.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_directory_another_user_made_is_refused(lease_dir):
    lease_dir.mkdir()
    os.chown(lease_dir, 65534, 65534)
    with pytest.raises(RuntimeError, match="belongs to uid 65534"):
        address.lease_loopback([])


def test_a_new_directory_is_sticky_and_shared(lease_dir):
    address.lease_loopback([]).release()
    assert oct(lease_dir.stat().st_mode & 0o7777) == oct(0o1777)
