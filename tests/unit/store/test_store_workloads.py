"""Store: the workload registry persists across restarts and never moves the config revision."""

from __future__ import annotations

import pathlib

import pytest

from lattice.store import MAX_DOCUMENT_BYTES, Store, StoreError


def record(address: str) -> dict:
    return {"service": "reviews", "address": address, "port": 9080, "labels": {"version": "v1"}}


def test_put_list_delete_workloads_without_revision_bump(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        store.put_workload("reviews-v1-b.default", record("10.0.0.2"))
        store.put_workload("reviews-v1-a.default", record("10.0.0.1"))
        store.put_workload("reviews-v1-a.default", record("10.0.0.9"))  # re-registration
        workloads = store.list_workloads()
        assert [w.id for w in workloads] == ["reviews-v1-a.default", "reviews-v1-b.default"]
        assert workloads[0].record == record("10.0.0.9")
        assert workloads[0].updated_at > 0

        assert store.delete_workload("reviews-v1-a.default") is True
        assert store.delete_workload("reviews-v1-a.default") is False
        assert [w.id for w in store.list_workloads()] == ["reviews-v1-b.default"]
        assert store.revision == 0


def test_workloads_survive_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lattice.db"
    with Store(path) as store:
        store.put_workload("ratings-v1-x.default", record("10.0.0.3"))
    with Store(path) as store:
        [workload] = store.list_workloads()
        assert (workload.id, workload.record) == ("ratings-v1-x.default", record("10.0.0.3"))


def test_bad_workload_record_is_refused(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "lattice.db") as store:
        with pytest.raises(StoreError, match="workload 'w1' record is not JSON"):
            store.put_workload("w1", {"when": object()})
        with pytest.raises(StoreError, match=r"workload 'w2' record is \d+ bytes"):
            store.put_workload("w2", {"blob": "x" * MAX_DOCUMENT_BYTES})
        assert store.list_workloads() == []
