"""The pusher (server/pusher.py): a push gives every proxy what a full translation gives, lets the
loop run while it goes, hands each proxy its config as soon as it is ready, and reports the
change's time before any proxy can converge on it."""

from __future__ import annotations

import asyncio
import json

import pytest

from lattice.api import parse_documents
from lattice.api.registration import Registration
from lattice.registry import Registry
from lattice.server import pusher as pusher_module
from lattice.server.metrics import ControlPlaneMetrics
from lattice.server.pusher import Pusher
from lattice.store import Store
from lattice.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, translate
from lattice.xds import SnapshotCache, StatusBoard


def registration(i: int, service: str | None = None) -> Registration:
    service = service or f"svc-{i % 3}"
    return Registration(
        id=f"{service}-{i:04d}.default",
        name=f"{service}-v1",
        service=service,
        service_account=service,
        labels={"app": service, "version": f"v{i % 2 + 1}"},
        address=f"127.100.{i // 250}.{i % 250 + 1}",
        port=9080,
        app_port=8080,
        outbound_port=15001,
        agent_port=15020,
        healthy=True,
    )


def apply(store: Store, text: str) -> None:
    store.apply(
        [(r.kind, r.namespace, r.name, r.api_version, r.metadata_dict(), r.spec_dict()) for r in parse_documents(text)]
    )


def route(subset: str) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "svc-0"},
            "spec": {"hosts": ["svc-0"], "http": [{"route": [{"destination": {"host": "svc-0", "subset": subset}}]}]},
        }
    )


SUBSETS = "\n---\n".join(
    json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": f"svc-{s}"},
            "spec": {
                "host": f"svc-{s}",
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
            },
        }
    )
    for s in range(3)
)


@pytest.fixture
def mesh(tmp_path):
    with Store(tmp_path / "lattice.db") as store:
        registry, cache, metrics = Registry(store, 3600), SnapshotCache(), ControlPlaneMetrics()
        apply(store, SUBSETS)
        for i in range(40):
            registry.register(registration(i))
        yield store, registry, cache, metrics, Pusher(store, registry, cache, metrics=metrics)


def same_as_full_translation(pusher: Pusher, cache: SnapshotCache) -> None:
    snapshot, fresh = pusher.snapshot, SnapshotCache()
    for w in snapshot.workloads:
        want, got = fresh.set(w.id, snapshot.version, translate(snapshot, w).by_type), cache.get(w.id)
        assert {t: {n: r.version for n, r in rs.items()} for t, rs in want.resources.items()} == {
            t: {n: r.version for n, r in rs.items()} for t, rs in got.resources.items()
        }, w.id


def test_each_push_gives_every_proxy_what_a_full_translation_gives(mesh):
    store, registry, cache, _, pusher = mesh
    pusher.push()
    same_as_full_translation(pusher, cache)
    apply(store, route("v2"))
    pusher.push()
    same_as_full_translation(pusher, cache)
    registry.register(registration(99, "svc-1"))
    pusher.push()
    same_as_full_translation(pusher, cache)
    registry.deregister(registration(3).id)
    pusher.push()
    same_as_full_translation(pusher, cache)
    assert cache.get(registration(3).id) is None


def test_an_endpoint_added_changes_only_endpoints_and_they_are_what_a_full_push_makes(mesh):
    store, registry, cache, _, pusher = mesh
    apply(store, route("v1"))
    pusher.push()
    before = {w.id: cache.get(w.id) for w in pusher.snapshot.workloads}
    registry.register(registration(99, "svc-1"))
    pusher.push()
    same_as_full_translation(pusher, cache)
    for node, old in before.items():
        new = cache.get(node)
        assert all(new.resources[t] is old.resources[t] for t in (CLUSTER, LISTENER, ROUTE)), node  # kept as they were
    assert any(cache.get(node).resources[ENDPOINT] is not old.resources[ENDPOINT] for node, old in before.items())


async def test_a_push_lets_the_loop_run_and_proxies_get_config_before_it_ends(mesh, monkeypatch):
    store, _, cache, _, pusher = mesh
    monkeypatch.setattr(pusher_module, "SLICE_SECONDS", 0.0)  # let the loop in after every proxy
    pusher.push()
    apply(store, route("v2"))
    seen: list[int] = []  # proxies holding the new snapshot, each time the loop ran during the push
    done = False

    async def watch():
        while not done:
            seen.append(sum(1 for n in cache.nodes() if cache.get(n).label == pusher.snapshot.version))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch(), name="watch-the-push")
    await asyncio.sleep(0)
    await pusher.push_sliced()
    done = True
    await watcher
    assert len(seen) > 10 and any(
        0 < n < 40 for n in seen
    )  # the loop ran midway, with some proxies served and some not
    same_as_full_translation(pusher, cache)


async def test_proxies_converging_before_the_push_ends_count_as_converged(mesh):
    store, registry, cache, metrics, pusher = mesh
    board = StatusBoard(events=metrics)
    pusher.push()
    for w in registry.workloads():
        board.connected(w.id, "sotw")
    apply(store, route("v2"))
    pusher.request()
    acked = []

    def ack_at_once(node: str) -> None:  # a proxy that answers while the push is still going
        board.sent(node, ROUTE, "r", pusher.snapshot.version)
        board.acked(node, ROUTE, "r")
        acked.append(node)

    for w in registry.workloads():
        cache.watch(w.id, lambda node=w.id: ack_at_once(node))
    await pusher.push_sliced()
    assert len(acked) == 40
    assert metrics.convergence.labels().count == 40


async def wait_for(condition, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.slow
async def test_a_change_after_a_quiet_spell_goes_out_at_once_and_one_right_after_a_push_waits_the_window(tmp_path):
    with Store(tmp_path / "lattice.db") as store:
        registry, cache = Registry(store, 3600), SnapshotCache()
        apply(store, SUBSETS)
        registry.register(registration(1))
        pusher = Pusher(store, registry, cache, debounce=3.0)
        running = asyncio.create_task(pusher.run(), name="pusher")
        try:
            loop = asyncio.get_running_loop()
            apply(store, route("v1"))
            asked = loop.time()
            pusher.request()
            assert await wait_for(lambda: not pusher.pending and pusher.snapshot.version != "0", 10)
            assert loop.time() - asked < 3.0  # not held for the window: nothing was pushed before it
            first = pusher.snapshot.version
            apply(store, route("v2"))  # right after a push: gathered for the window
            pusher.request()
            assert not await wait_for(lambda: pusher.snapshot.version != first, 1.0)
            assert await wait_for(lambda: pusher.snapshot.version != first, 10)
        finally:
            running.cancel()
