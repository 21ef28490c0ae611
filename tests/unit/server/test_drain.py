"""When may a draining workload close (server/drain.py)? Once every connected proxy's stream has
answered from a snapshot in which it drains, and the proxy ACKed what it was sent."""

from __future__ import annotations

from lattice.registry import Registry
from lattice.server.drain import callers_hold_drain, label_order
from lattice.server.pusher import Pusher
from lattice.store import Store
from lattice.translate import ENDPOINT
from lattice.translate.resources import translate_type
from lattice.xds import SnapshotCache, StatusBoard

from test_pusher import registration


def _mesh(tmp_path):
    store = Store(tmp_path / "db")
    registry = Registry(store)
    for i in range(3):
        registry.register(registration(i, "svc"))
    pusher = Pusher(store, registry, SnapshotCache())
    return registry, pusher


def _endpoint_health(snapshot, proxy_id: str, drained: str) -> list[int]:
    resources = translate_type(snapshot, snapshot.workload(proxy_id), ENDPOINT)
    return [
        e.health_status
        for _, cla in resources
        for locality in cla.endpoints
        for e in locality.lb_endpoints
        if e.endpoint.address.socket_address.address == snapshot.workload(drained).address
    ]


def test_a_draining_workload_is_draining_in_every_callers_endpoints_and_stays_so(tmp_path):
    registry, pusher = _mesh(tmp_path)
    draining = "svc-0001.default"
    assert registry.heartbeat(draining, healthy=True, draining=True)
    assert registry.heartbeat(draining, healthy=True)  # a later heartbeat does not undo it
    snapshot = pusher.push()
    assert snapshot.workload(draining).draining
    assert _endpoint_health(snapshot, "svc-0000.default", draining) == [3]  # core.v3 HealthStatus DRAINING


def test_callers_hold_the_drain_only_once_each_has_seen_and_acked_it(tmp_path):
    registry, pusher = _mesh(tmp_path)
    board = StatusBoard()
    before = pusher.push().version
    for node in ("svc-0000.default", "svc-0002.default"):
        board.connected(node, "sotw")
        board.sent(node, ENDPOINT, "v1", before)
        board.acked(node, ENDPOINT, "v1")
        board.seen(node, before)
    draining = "svc-0001.default"
    registry.heartbeat(draining, healthy=True, draining=True)
    assert not callers_hold_drain(pusher.snapshot, True, board, draining)  # the push is still pending
    after = pusher.push()
    assert not callers_hold_drain(after, False, board, draining)  # nobody's stream has looked at it
    board.sent("svc-0000.default", ENDPOINT, "v2", after.version)
    board.seen("svc-0000.default", after.version)
    board.seen("svc-0002.default", after.version)  # nothing changed for it
    assert not callers_hold_drain(after, False, board, draining)  # svc-0000 has not ACKed v2 yet
    board.acked("svc-0000.default", ENDPOINT, "v2")
    assert callers_hold_drain(after, False, board, draining)
    board.disconnected("svc-0002.default")  # a gone proxy does not hold anyone up
    assert callers_hold_drain(after, False, board, draining)


def test_snapshot_labels_order_by_revision_then_generation():
    assert label_order("3.10") > label_order("3.9") > label_order("2.99")
    assert label_order("") == ()
