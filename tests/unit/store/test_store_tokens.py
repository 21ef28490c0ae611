"""Store: join tokens persist, are consumed atomically, and never move the config revision."""

from __future__ import annotations

import pathlib
import sqlite3
import threading

import pytest

from lattice.store import Store, StoreError


def token(token_id: str, uses_left: int | None = 1, expires_at: float = 2000.0) -> dict:
    return {
        "id": token_id,
        "namespace": "default",
        "service_account": "reviews",
        "secret_hash": "ab" * 32,
        "created_at": 1000.0,
        "expires_at": expires_at,
        "uses_left": uses_left,
        "description": "",
    }


class Refused(Exception):
    pass


def refuse_missing_or_used(record: dict | None) -> None:
    if record is None:
        raise Refused("unknown")
    if record["uses_left"] is not None and record["uses_left"] <= 0:
        raise Refused("used up")


def test_add_list_delete_without_revision_bump(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.add_token("bbbbbbbbbbbb", token("bbbbbbbbbbbb"))
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=None))
        assert [t["id"] for t in store.list_tokens()] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
        assert store.list_tokens()[1] == token("bbbbbbbbbbbb")
        assert store.delete_token("aaaaaaaaaaaa") is True
        assert store.delete_token("aaaaaaaaaaaa") is False
        assert [t["id"] for t in store.list_tokens()] == ["bbbbbbbbbbbb"]
        assert store.revision == 0


def test_add_refuses_a_duplicate_id_or_a_record_without_expiry(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa"))
        with pytest.raises(StoreError, match="token 'aaaaaaaaaaaa' already exists"):
            store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=5))
        with pytest.raises(StoreError, match="needs a numeric expires_at"):
            store.add_token("cccccccccccc", {"id": "cccccccccccc"})
        assert store.list_tokens() == [token("aaaaaaaaaaaa")]


def test_consume_decrements_and_keeps_a_used_up_token(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=2))
        before = store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)
        assert before["uses_left"] == 2
        assert store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)["uses_left"] == 1
        with pytest.raises(Refused, match="used up"):
            store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)
        assert store.list_tokens() == [token("aaaaaaaaaaaa", uses_left=0)]
        assert store.revision == 0


def test_unlimited_token_is_not_decremented(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=None))
        for _ in range(3):
            store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)
        assert store.list_tokens() == [token("aaaaaaaaaaaa", uses_left=None)]


def test_a_refusing_check_writes_nothing(tmp_path: pathlib.Path) -> None:
    seen = []

    def refuse(record: dict | None) -> None:
        seen.append(record)
        raise Refused("no")

    with Store(tmp_path / "lattice.db") as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=1))
        with pytest.raises(Refused):
            store.consume_token("aaaaaaaaaaaa", refuse)
        with pytest.raises(Refused):
            store.consume_token("ffffffffffff", refuse)
        assert seen == [token("aaaaaaaaaaaa"), None]
        assert store.list_tokens() == [token("aaaaaaaaaaaa", uses_left=1)]
        with pytest.raises(StoreError, match="'ffffffffffff' does not exist"):
            store.consume_token("ffffffffffff", lambda record: None)


def test_purge_deletes_only_tokens_expired_before(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", expires_at=100.0))
        store.add_token("bbbbbbbbbbbb", token("bbbbbbbbbbbb", expires_at=200.0))
        store.add_token("cccccccccccc", token("cccccccccccc", expires_at=300.0))
        assert store.purge_tokens(before=200.0) == 1
        assert [t["id"] for t in store.list_tokens()] == ["bbbbbbbbbbbb", "cccccccccccc"]
        assert store.purge_tokens(before=200.0) == 0


def test_tokens_survive_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    with Store(path) as store:
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=3))
        store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)
    with Store(path) as store:
        assert store.list_tokens() == [token("aaaaaaaaaaaa", uses_left=2)]


def test_a_database_from_before_tokens_gets_the_table(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    with Store(path) as store:
        store.apply([("VirtualService", "default", "reviews", "networking.istio.io/v1", {}, {})])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE tokens")
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.revision == 1
        store.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa"))
        assert [t["id"] for t in store.list_tokens()] == ["aaaaaaaaaaaa"]


def test_two_stores_on_one_file_cannot_both_consume_a_single_use_token(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    first, second = Store(path), Store(path)
    try:
        first.add_token("aaaaaaaaaaaa", token("aaaaaaaaaaaa", uses_left=1))
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def join(store: Store) -> None:
            barrier.wait()
            try:
                store.consume_token("aaaaaaaaaaaa", refuse_missing_or_used)
                outcomes.append("joined")
            except Refused as refused:
                outcomes.append(str(refused))

        threads = [threading.Thread(target=join, args=(store,)) for store in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(outcomes) == ["joined", "used up"]
        assert second.list_tokens() == [token("aaaaaaaaaaaa", uses_left=0)]
    finally:
        first.close()
        second.close()
