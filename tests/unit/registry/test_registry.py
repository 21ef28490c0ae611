"""The registry with an injected clock: expiry without sleeping, persistence across restarts."""

from __future__ import annotations

from lattice.api.registration import Registration
from lattice.registry import Registry
from lattice.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reg(name: str = "reviews-v1", healthy: bool = False) -> Registration:
    return Registration(
        id=f"{name}-abc.default",
        name=name,
        service="reviews",
        service_account="reviews",
        labels={"version": "v1"},
        address="127.0.10.2",
        port=9080,
        app_port=3000,
        outbound_port=15001,
        agent_port=15020,
        healthy=healthy,
    )


def test_heartbeats_keep_a_workload_and_silence_drops_it(tmp_path):
    clock, changes = Clock(), []
    registry = Registry(Store(tmp_path / "db"), heartbeat_timeout=10, clock=clock, on_change=lambda: changes.append(1))
    registry.register(_reg())
    clock.now += 8
    assert registry.heartbeat("reviews-v1-abc.default", healthy=True)
    clock.now += 8
    assert registry.expire() == []
    clock.now += 11
    assert registry.expire() == ["reviews-v1-abc.default"]
    assert registry.workloads() == ()
    assert not registry.heartbeat("reviews-v1-abc.default", healthy=True)  # the agent must re-register
    assert len(changes) == 3  # register, health change, expiry


def test_health_change_is_a_change_and_same_health_is_not(tmp_path):
    changes = []
    registry = Registry(Store(tmp_path / "db"), on_change=lambda: changes.append(1))
    registry.register(_reg())
    registry.heartbeat("reviews-v1-abc.default", healthy=False)
    assert len(changes) == 1
    registry.heartbeat("reviews-v1-abc.default", healthy=True)
    assert len(changes) == 2 and registry.get("reviews-v1-abc.default").healthy


def test_workloads_survive_a_restart_with_a_fresh_grace_period(tmp_path):
    clock = Clock()
    first = Registry(Store(tmp_path / "db"), heartbeat_timeout=10, clock=clock)
    first.register(_reg(healthy=True))
    clock.now += 9
    second = Registry(Store(tmp_path / "db"), heartbeat_timeout=10, clock=clock)
    assert [w.id for w in second.workloads()] == ["reviews-v1-abc.default"] and second.workloads()[0].healthy
    clock.now += 9
    assert second.expire() == []  # the restart gave it a full timeout again


def test_a_service_whose_last_workload_left_is_remembered_for_the_grace(tmp_path):
    clock, changes = Clock(), []
    registry = Registry(
        Store(tmp_path / "db"), heartbeat_timeout=10, grace=60, clock=clock, on_change=lambda: changes.append(1)
    )
    registry.register(_reg("reviews-v1"))
    registry.register(_reg("reviews-v2").model_copy(update={"id": "reviews-v2-abc.default", "address": "127.0.10.3"}))
    registry.deregister("reviews-v1-abc.default")
    assert registry.departed() == ()  # v2 still serves reviews
    registry.deregister("reviews-v2-abc.default")
    assert registry.departed() == (("reviews", "default", 9080, "http"),)
    clock.now += 30
    registry.expire()
    assert registry.departed() == (("reviews", "default", 9080, "http"),)
    registry.register(_reg("reviews-v1"))  # back: a service again, not a departed one
    assert registry.departed() == ()
    registry.deregister("reviews-v1-abc.default")
    clock.now += 61
    before = len(changes)
    registry.expire()
    assert registry.departed() == () and len(changes) == before + 1  # forgotten, and pushed as such
