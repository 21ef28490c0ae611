"""The CA's own duties (server/ca_duty.py) on an injected clock: a root rotates itself at its
configured fraction of life, warnings come before that, and a workload certificate its agent
failed to renew is warned of."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from lattice.server.ca import CaManager, Held
from lattice.server.ca_duty import RotationPolicy, expiry_warnings, rotate_root_if_due

START = datetime(2030, 1, 1, tzinfo=timezone.utc)
POLICY = RotationPolicy.for_rotation_at(0.8)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _ca(tmp_path, clock) -> CaManager:
    return CaManager(
        tmp_path / "home", "cluster.local", timedelta(hours=1), clock=clock, root_validity=timedelta(days=100)
    )


def test_a_root_rotates_itself_at_its_fraction_of_life_after_a_warning(tmp_path):
    clock = Clock()
    ca = _ca(tmp_path, clock)
    first = ca.root_fingerprint
    clock.now = START + timedelta(days=60)
    assert not rotate_root_if_due(ca, POLICY) and expiry_warnings(ca, POLICY, clock.now) == []
    clock.now = START + timedelta(days=71)  # past 70%: warned of, not yet rotated
    [warning] = expiry_warnings(ca, POLICY, clock.now)
    assert warning.kind == "root" and "expires in 29.0d" in warning.message and "80%" in warning.message
    assert not rotate_root_if_due(ca, POLICY)
    clock.now = START + timedelta(days=81)
    assert rotate_root_if_due(ca, POLICY)
    assert ca.phase == "distributing" and len(ca.roots) == 2
    [warning] = expiry_warnings(ca, POLICY, clock.now)  # until the new root signs
    assert "being rotated (distributing)" in warning.message
    assert not rotate_root_if_due(ca, POLICY)  # one rotation at a time
    ca.advance([])  # no proxies to wait for: the new root signs, then the old one is retired
    ca.advance([])
    assert ca.phase == "" and ca.root_fingerprint != first and len(ca.roots) == 1
    assert expiry_warnings(ca, POLICY, clock.now) == []
    new_root = ca.ca.root
    assert new_root.not_valid_after_utc - new_root.not_valid_before_utc >= timedelta(days=100)


def test_a_plug_in_root_is_never_rotated_here(tmp_path):
    clock = Clock()
    ca = _ca(tmp_path, clock)
    ca.plugged = True
    clock.now = START + timedelta(days=90)
    assert not rotate_root_if_due(ca, POLICY)
    [warning] = expiry_warnings(ca, POLICY, clock.now)
    assert warning.kind == "root" and "at its source" in warning.message


def test_a_workload_certificate_not_renewed_at_half_life_is_warned_of(tmp_path):
    clock = Clock()
    ca = _ca(tmp_path, clock)
    issued = START.isoformat()
    ca.held["late-v1-abc.default"] = Held(
        "spiffe://cluster.local/ns/default/sa/late",
        "1",
        (START + timedelta(hours=1)).isoformat(),
        ca.root_fingerprint,
        1,
        issued,
    )
    ca.held["fine-v1-abc.default"] = Held(
        "spiffe://cluster.local/ns/default/sa/fine",
        "2",
        (START + timedelta(hours=2)).isoformat(),
        ca.root_fingerprint,
        1,
        issued,
    )
    clock.now = START + timedelta(minutes=50)
    [warning] = expiry_warnings(ca, POLICY, clock.now)
    assert warning.kind == "workload" and warning.subject == "late-v1-abc.default"
    assert "expires in 10.0m" in warning.message and "sa/late" in warning.message
