"""Grants: what a redeemed token gave a proxy, revoked with its token or identity, and the
serials that revocation puts on the CRL. Also: the database file is its owner's alone."""

from __future__ import annotations

import os
import secrets
import stat

import pytest

from lattice.store import Store, open_store

NOW = 1_750_000_000.0


def grant(proxy_id: str, token_id: str, account: str = "reviews") -> dict:
    return {
        "proxy_id": proxy_id,
        "token_id": token_id,
        "namespace": "default",
        "service_account": account,
        "services": [account],
        "granted_at": NOW,
        "serials": [],
        "revoked_at": None,
    }


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """Both backends keep the same grant and revocation contract."""
    if request.param == "etcd":
        url = request.getfixturevalue("etcd_cluster").url(f"grants-{secrets.token_hex(4)}")
        opened = open_store(url, tmp_path / "unused.db")
    else:
        opened = Store(tmp_path / "home" / "lattice.db")
    yield opened
    opened.close()


def test_revoking_a_token_revokes_its_grants_and_lists_their_live_serials(store):
    store.add_token("aaaaaaaaaaaa", {"expires_at": NOW + 60, "namespace": "default", "service_account": "reviews"})
    store.put_grant("reviews-1.default", grant("reviews-1.default", "aaaaaaaaaaaa"))
    store.put_grant("reviews-2.default", grant("reviews-2.default", "bbbbbbbbbbbb"))
    store.record_serial("reviews-1.default", "1f", NOW + 100)
    store.record_serial("reviews-1.default", "2f", NOW - 1)  # already expired: no need to list it
    store.record_serial("reviews-2.default", "3f", NOW + 100)
    assert store.revoked_serials(NOW) == []

    assert store.revoke_token("aaaaaaaaaaaa", NOW) == (True, ["reviews-1.default"])
    assert store.list_tokens() == []
    assert store.get_grant("reviews-1.default")["revoked_at"] == NOW
    assert store.get_grant("reviews-2.default")["revoked_at"] is None
    assert [s["serial"] for s in store.revoked_serials(NOW)] == ["1f"]
    assert store.revoke_token("aaaaaaaaaaaa", NOW + 1) == (False, [])  # nothing more to revoke


def test_revoking_an_identity_takes_its_tokens_and_every_grant_it_holds(store):
    for tid, account in (("aaaaaaaaaaaa", "mallory"), ("bbbbbbbbbbbb", "mallory"), ("cccccccccccc", "reviews")):
        store.add_token(tid, {"expires_at": NOW + 60, "namespace": "default", "service_account": account})
    store.put_grant("m-1.default", grant("m-1.default", "dddddddddddd", "mallory"))
    store.put_grant("r-1.default", grant("r-1.default", "cccccccccccc"))
    assert store.revoke_identity("default", "mallory", NOW) == (2, ["m-1.default"])
    assert [t["service_account"] for t in store.list_tokens()] == ["reviews"]
    assert store.get_grant("r-1.default")["revoked_at"] is None


def test_grants_are_forgotten_once_every_certificate_of_theirs_expired(store):
    store.put_grant("p.default", grant("p.default", "aaaaaaaaaaaa"))
    store.record_serial("p.default", "1", NOW + 10)
    assert store.purge_grants(NOW) == 0
    assert store.purge_grants(NOW + 11) == 1 and store.get_grant("p.default") is None


def test_the_database_and_its_wal_are_readable_by_their_owner_only(tmp_path):
    home = tmp_path / "fresh"
    with Store(home / "lattice.db") as s:
        s.add_token("aaaaaaaaaaaa", {"expires_at": NOW})  # a write, so the -wal and -shm exist
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir()}
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {"lattice.db", "lattice.db-wal", "lattice.db-shm"} <= set(modes), modes
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_a_database_an_older_version_left_readable_is_tightened(tmp_path):
    path = tmp_path / "lattice.db"
    with Store(path):
        pass
    os.chmod(path, 0o644)
    with Store(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
