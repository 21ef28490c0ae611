"""Store: resources, revisions, all-or-nothing writes, durability and refusing foreign files."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from lattice.store import MAX_DOCUMENT_BYTES, Store, StoreError

API = "networking.istio.io/v1"


def vs(name: str, hosts: list[str], namespace: str = "default", labels: dict | None = None):
    metadata = {"name": name, "namespace": namespace, "labels": labels or {}}
    return ("VirtualService", namespace, name, API, metadata, {"hosts": hosts})


@pytest.fixture
def store(tmp_path: pathlib.Path):
    with Store(tmp_path / "lattice.db") as opened:
        yield opened


def test_new_store_starts_at_revision_zero_and_creates_parent_dir(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nested" / "dir" / "lattice.db"
    with Store(path) as store:
        assert store.revision == 0
        assert store.list() == []
    assert path.exists()


def test_apply_reports_created_configured_unchanged(store: Store) -> None:
    [created] = store.apply([vs("reviews", ["reviews"])])
    assert (created.action, created.resource.revision, store.revision) == ("created", 1, 1)

    [unchanged] = store.apply([vs("reviews", ["reviews"])])
    assert unchanged.action == "unchanged"
    assert unchanged.resource == created.resource
    assert store.revision == 1

    [configured] = store.apply([vs("reviews", ["reviews", "reviews.default"])])
    assert (configured.action, configured.resource.revision, store.revision) == ("configured", 2, 2)
    assert configured.resource.created_at == created.resource.created_at
    assert configured.resource.spec == {"hosts": ["reviews", "reviews.default"]}


def test_metadata_or_api_version_change_is_configured(store: Store) -> None:
    store.apply([vs("reviews", ["reviews"])])
    [by_label] = store.apply([vs("reviews", ["reviews"], labels={"team": "books"})])
    kind, ns, name, _, metadata, spec = vs("reviews", ["reviews"], labels={"team": "books"})
    [by_version] = store.apply([(kind, ns, name, "networking.istio.io/v1beta1", metadata, spec)])
    assert [by_label.action, by_version.action] == ["configured", "configured"]
    assert store.revision == 3


def test_unchanged_compares_canonical_json_not_key_order(store: Store) -> None:
    kind, ns, name, api, _, _ = vs("reviews", [])
    store.apply([(kind, ns, name, api, {"a": 1, "b": 2}, {"x": {"p": 1, "q": 2}})])
    [again] = store.apply([(kind, ns, name, api, {"b": 2, "a": 1}, {"x": {"q": 2, "p": 1}})])
    assert again.action == "unchanged"


def test_batch_gives_each_changed_item_its_own_revision(store: Store) -> None:
    store.apply([vs("a", ["a"])])
    results = store.apply([vs("a", ["a"]), vs("b", ["b"]), vs("c", ["c"])])
    assert [(r.action, r.resource.revision) for r in results] == [
        ("unchanged", 1),
        ("created", 2),
        ("created", 3),
    ]
    assert store.revision == 3


def test_get_returns_stored_resource_or_none(store: Store) -> None:
    store.apply([vs("reviews", ["reviews"], labels={"app": "reviews"})])
    got = store.get("VirtualService", "default", "reviews")
    assert got is not None
    assert (got.kind, got.namespace, got.name, got.api_version) == (
        "VirtualService",
        "default",
        "reviews",
        API,
    )
    assert got.metadata["labels"] == {"app": "reviews"}
    assert got.spec == {"hosts": ["reviews"]}
    assert store.get("VirtualService", "default", "nope") is None
    assert store.get("DestinationRule", "default", "reviews") is None


def test_list_filters_and_sorts_by_kind_namespace_name(store: Store) -> None:
    rule = ("DestinationRule", "default", "reviews", API, {}, {"host": "reviews"})
    store.apply([vs("z", ["z"]), vs("a", ["a"], namespace="prod"), rule, vs("a", ["a"])])
    keys = [(r.kind, r.namespace, r.name) for r in store.list()]
    assert keys == [
        ("DestinationRule", "default", "reviews"),
        ("VirtualService", "default", "a"),
        ("VirtualService", "default", "z"),
        ("VirtualService", "prod", "a"),
    ]
    assert [r.name for r in store.list(kind="VirtualService")] == ["a", "z", "a"]
    assert [r.kind for r in store.list(namespace="prod")] == ["VirtualService"]
    assert [r.name for r in store.list("VirtualService", "default")] == ["a", "z"]
    assert store.list(kind="Gateway") == []


def test_delete_returns_deleted_and_bumps_once_per_resource(store: Store) -> None:
    store.apply([vs("a", ["a"]), vs("b", ["b"])])
    deleted = store.delete(
        [
            ("VirtualService", "default", "a"),
            ("VirtualService", "default", "missing"),
            ("VirtualService", "default", "b"),
        ]
    )
    assert [r.name for r in deleted] == ["a", "b"]
    assert store.revision == 4
    assert store.list() == []
    assert store.delete([("VirtualService", "default", "a")]) == []
    assert store.revision == 4


def test_revision_continues_after_delete_and_recreate(store: Store) -> None:
    store.apply([vs("a", ["a"])])
    store.delete([("VirtualService", "default", "a")])
    [again] = store.apply([vs("a", ["a"])])
    assert (again.action, again.resource.revision) == ("created", 3)


def test_failed_apply_writes_nothing(store: Store) -> None:
    store.apply([vs("kept", ["kept"])])
    bad = ("VirtualService", "default", "bad", API, {}, {"hosts": {object()}})
    with pytest.raises(StoreError, match="VirtualService default/bad spec"):
        store.apply([vs("kept", ["changed"]), vs("new", ["new"]), bad])
    assert store.revision == 1
    assert [r.name for r in store.list()] == ["kept"]
    assert store.get("VirtualService", "default", "kept").spec == {"hosts": ["kept"]}


def test_failure_inside_the_transaction_rolls_back(store: Store) -> None:
    # A key that is not a string fails in SQLite itself, after earlier rows were written.
    store.apply([vs("kept", ["kept"])])
    broken = ("VirtualService", "default", ["not", "a", "name"], API, {}, {})
    with pytest.raises(StoreError, match="apply failed"):
        store.apply([vs("kept", ["changed"]), vs("new", ["new"]), broken])
    assert store.revision == 1
    assert [(r.name, r.spec) for r in store.list()] == [("kept", {"hosts": ["kept"]})]


def test_oversized_spec_is_refused_with_key_and_size(store: Store) -> None:
    huge = ("VirtualService", "default", "huge", API, {}, {"blob": "x" * MAX_DOCUMENT_BYTES})
    with pytest.raises(StoreError, match=r"VirtualService default/huge spec is \d+ bytes"):
        store.apply([vs("a", ["a"]), huge])
    assert store.revision == 0
    assert store.list() == []


def test_malformed_item_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="apply item must be"):
        store.apply([("VirtualService", "default", "a")])  # type: ignore[list-item]


def test_revision_and_resources_survive_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    with Store(path) as store:
        store.apply([vs("a", ["a"]), vs("b", ["b"])])
        store.delete([("VirtualService", "default", "b")])
        before = store.get("VirtualService", "default", "a")
    with Store(path) as store:
        assert store.revision == 3
        assert store.get("VirtualService", "default", "a") == before
        [created] = store.apply([vs("c", ["c"])])
        assert created.resource.revision == 4


def test_store_uses_wal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1


def test_corrupt_file_raises_naming_path_and_is_left_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    garbage = bytes(range(256)) * 16
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a Lattice database") as caught:
        Store(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lattice.db"]


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    original = path.read_bytes()
    with pytest.raises(StoreError, match="not a Lattice database") as caught:
        Store(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == original


def test_newer_schema_version_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path)


def test_closed_store_raises_store_error(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path / "lattice.db")
    store.close()
    with pytest.raises(StoreError, match="lattice.db"):
        store.list()
