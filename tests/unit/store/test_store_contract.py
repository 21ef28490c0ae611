"""The store contract, run on both backends: SQLite (one file) and etcd (a real 3-member cluster).

"Two replicas" are two store objects on the same state: two Store on one SQLite file, or two
EtcdStore on one etcd key prefix, each with its own connections, as two control planes have.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest
from harness import wait_for

from lattice.store import StoreConflict, StoreError, open_store

API = "networking.istio.io/v1"


def vs(name: str, hosts: list[str], namespace: str = "default"):
    return ("VirtualService", namespace, name, API, {"name": name, "namespace": namespace}, {"hosts": hosts})


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.slow)])
def replicas(request, tmp_path):
    """A function opening one more replica's store on the shared state; all closed at the end."""
    opened = []
    if request.param == "etcd":
        cluster = request.getfixturevalue("etcd_cluster")
        url = cluster.url(f"contract-{secrets.token_hex(4)}")

        def one(**kw):
            opened.append(open_store(url, tmp_path / "unused.db", **kw))
            return opened[-1]
    else:

        def one(**kw):
            opened.append(open_store(None, tmp_path / "lattice.db"))
            return opened[-1]

    yield one
    for store in opened:
        store.close()


def test_apply_reports_created_configured_unchanged_and_revisions_grow(replicas) -> None:
    store = replicas()
    assert store.revision == 0
    [created] = store.apply([vs("reviews", ["reviews"])])
    assert created.action == "created"
    assert created.resource.revision == store.revision > 0
    [unchanged] = store.apply([vs("reviews", ["reviews"])])
    assert (unchanged.action, unchanged.resource) == ("unchanged", created.resource)
    [configured] = store.apply([vs("reviews", ["reviews", "reviews.default"])])
    assert configured.action == "configured"
    assert configured.resource.revision == store.revision > created.resource.revision
    assert store.get("VirtualService", "default", "reviews").spec == {"hosts": ["reviews", "reviews.default"]}
    assert [r.name for r in store.list("VirtualService")] == ["reviews"]


def test_a_write_is_seen_by_the_other_replica(replicas) -> None:
    one, two = replicas(), replicas()
    [result] = one.apply([vs("ratings", ["ratings"])])

    async def seen() -> int:
        return await two.wait_for_change(0, timeout=10)

    assert asyncio.run(seen()) >= result.resource.revision
    assert two.get("VirtualService", "default", "ratings").revision == result.resource.revision
    assert [r.name for r in two.delete([("VirtualService", "default", "ratings")])] == ["ratings"]
    assert asyncio.run(one.wait_for_change(result.resource.revision, timeout=10)) > result.resource.revision
    assert one.get("VirtualService", "default", "ratings") is None


def test_a_bad_item_writes_nothing(replicas) -> None:
    store = replicas()
    store.apply([vs("a", ["a"])])
    before = store.revision
    with pytest.raises(StoreError):
        store.apply([vs("a", ["changed"]), ("VirtualService", "default", "b", API, {}, {"x": object()})])
    assert store.get("VirtualService", "default", "a").spec == {"hosts": ["a"]}
    assert store.get("VirtualService", "default", "b") is None
    assert store.revision == before


def test_a_stale_resource_version_is_refused_and_nothing_is_written(replicas) -> None:
    store = replicas()
    [first] = store.apply([vs("reviews", ["v1"])])
    key = ("VirtualService", "default", "reviews")
    store.apply([vs("reviews", ["v2"])], expected={key: first.resource.revision})
    with pytest.raises(StoreConflict, match="resourceVersion .* is stale"):
        store.apply([vs("reviews", ["v3"]), vs("other", ["x"])], expected={key: first.resource.revision})
    assert store.get(*key).spec == {"hosts": ["v2"]}
    assert store.get("VirtualService", "default", "other") is None


def test_conflicting_writes_on_two_replicas_one_wins_the_other_conflicts(replicas) -> None:
    one, two = replicas(), replicas()
    [base] = one.apply([vs("reviews", ["base"])])
    key = ("VirtualService", "default", "reviews")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def write(store, host):
        barrier.wait()
        try:
            store.apply([vs("reviews", [host])], expected={key: base.resource.revision})
            outcomes.append(f"won:{host}")
        except StoreConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(s, h)) for s, h in ((one, "one"), (two, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["conflict", "won"]
    winner = next(o for o in outcomes if o.startswith("won")).split(":")[1]
    assert one.get(*key).spec == {"hosts": [winner]}


def token(token_id: str, uses_left: int | None = 1) -> dict:
    return {
        "id": token_id,
        "namespace": "default",
        "service_account": "reviews",
        "expires_at": time.time() + 600,
        "uses_left": uses_left,
    }


def refuse_used(record: dict | None) -> None:
    if record is None or (record["uses_left"] is not None and record["uses_left"] <= 0):
        raise PermissionError("used up or unknown")


def test_a_single_use_token_is_taken_once_across_replicas(replicas) -> None:
    stores = [replicas() for _ in range(2)]
    stores[0].add_token("t1", token("t1"))
    with pytest.raises(StoreError, match="already exists"):
        stores[1].add_token("t1", token("t1"))
    taken: list[str] = []
    barrier = threading.Barrier(len(stores) * 2)

    def take(store, n):
        barrier.wait()
        try:
            store.consume_token("t1", refuse_used)
            taken.append(n)
        except PermissionError:
            pass

    threads = [threading.Thread(target=take, args=(s, i)) for i, s in enumerate(stores * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(taken) == 1
    assert stores[1].list_tokens()[0]["uses_left"] == 0
    assert stores[1].delete_token("t1") and stores[0].list_tokens() == []


def test_expired_tokens_are_purged(replicas) -> None:
    store = replicas()
    store.add_token("old", token("old") | {"expires_at": 10.0})
    store.add_token("new", token("new"))
    assert store.purge_tokens(time.time()) == 1
    assert [t["id"] for t in store.list_tokens()] == ["new"]


def test_workloads_are_registry_not_config(replicas) -> None:
    one, two = replicas(), replicas()
    before = one.revision
    one.put_workload("reviews-1", {"service": "reviews", "address": "127.0.0.1"})
    assert one.revision == before
    assert [w.id for w in one.list_workloads()] == ["reviews-1"]
    assert one.touch_workload("reviews-1")

    async def seen():
        if two.shared:
            await two.wait_for_workload_change(0, timeout=10)
        return [w.record for w in two.list_workloads()]

    assert asyncio.run(seen()) == [{"service": "reviews", "address": "127.0.0.1"}]
    assert two.delete_workload("reviews-1")
    assert one.list_workloads() == [] or one.shared


def test_fetched_jwks_are_shared_and_dropped_when_unused(replicas) -> None:
    one, two = replicas(), replicas()
    keys = {"keys": '{"keys":[]}', "error": None, "fetched_at": 1.0}
    one.put_jwks("https://issuer.example/jwks", keys)
    one.put_jwks("https://other.example/jwks", {"keys": None, "error": "HTTP 500", "fetched_at": 2.0})
    wait_for(lambda: len(two.jwks()) == 2, 10, what="the other replica to see both fetches")
    assert two.jwks()["https://issuer.example/jwks"] == keys
    assert two.drop_jwks(["https://issuer.example/jwks"]) == 1
    wait_for(lambda: list(one.jwks()) == ["https://issuer.example/jwks"], 10, what="the drop to reach the first")


def test_counts_added_by_replicas_at_once_all_land(replicas) -> None:
    stores = [replicas() for _ in range(3)]
    barrier = threading.Barrier(len(stores))

    def add(store) -> None:
        barrier.wait()
        for _ in range(5):
            store.add_counts("ca", {"issued": 1, "refused:token": 2})

    threads = [threading.Thread(target=add, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert stores[0].add_counts("ca", {}) == {"issued": 15, "refused:token": 30}
    assert stores[1].add_counts("other", {"x": 0}) == {}


# -- etcd only: leases and elections, which one SQLite file has no use for -------------------------


@pytest.fixture
def etcd_replicas(etcd_cluster, tmp_path):
    url, opened = etcd_cluster.url(f"leases-{secrets.token_hex(4)}"), []

    def one(**kw):
        opened.append(open_store(url, tmp_path / "unused.db", **kw))
        return opened[-1]

    yield one
    for store in opened:
        store.close()


@pytest.mark.slow
def test_a_workload_nobody_hears_from_expires_on_every_replica(etcd_replicas) -> None:
    one, two = etcd_replicas(workload_ttl=2), etcd_replicas(workload_ttl=2)
    one.put_workload("kept", {"service": "a"})
    one.put_workload("silent", {"service": "b"})
    wait_for(lambda: len(two.list_workloads()) == 2, 5, what="the other replica to see both")
    deadline = time.monotonic() + 15
    # "kept" heartbeats to the other replica, which takes its lease over; "silent" never does.
    while time.monotonic() < deadline and any(w.id == "silent" for w in two.list_workloads()):
        assert two.touch_workload("kept")
        time.sleep(0.3)
    assert [w.id for w in two.list_workloads()] == ["kept"]
    wait_for(lambda: [w.id for w in one.list_workloads()] == ["kept"], 5, what="the other replica to drop it")
    assert not one.touch_workload("silent")  # its agent is told to register again


@pytest.mark.slow
def test_one_replica_holds_a_duty_and_another_takes_it_when_its_lease_ends(etcd_replicas) -> None:
    one, two = etcd_replicas(), etcd_replicas()
    lease_one, lease_two = one.grant(2), two.grant(2)
    assert one.campaign("sweep", "one", lease_one) == "one"
    assert two.campaign("sweep", "two", lease_two) == "one"
    one.revoke(lease_one)  # as if replica one died: its lease ends, and the key with it
    assert two.campaign("sweep", "two", lease_two) == "two"
    two.resign("sweep", "two")
    assert one.campaign("sweep", "one", one.grant(2)) == "one"


@pytest.mark.slow
def test_the_mesh_trusts_the_first_root_and_roots_added_and_never_none(etcd_replicas) -> None:
    one, two = etcd_replicas(), etcd_replicas()
    assert one.claim_ca_root("aa", "A") == [{"fingerprint": "aa", "pem": "A"}]
    assert two.claim_ca_root("bb", "B") == [{"fingerprint": "aa", "pem": "A"}]  # compare: not ours
    assert [r["fingerprint"] for r in two.add_ca_root("bb", "B")] == ["aa", "bb"]
    assert [r["fingerprint"] for r in two.add_ca_root("bb", "B")] == ["aa", "bb"]  # once
    wait_for(lambda: len(one.ca_roots()) == 2, 10, what="the first replica to see root bb")
    assert [r["fingerprint"] for r in one.remove_ca_root("aa")] == ["bb"]
    with pytest.raises(StoreError, match="only trusted root"):
        one.remove_ca_root("bb")
    wait_for(lambda: two.ca_roots() == [{"fingerprint": "bb", "pem": "B"}], 10, what="the removal to reach the other")
