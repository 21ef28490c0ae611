"""The CA looks after itself: a root rotates before it expires, and expiry is warned of ahead.

`rotate_root_if_due` is a duty the server runs periodically (one control plane at a time: with
several replicas it runs under an election). A root generated here lives `root_lifetime`; once
`rotate_at` of its life has passed it starts the rotation `lattice ca rotate-root` starts (the new
root is trusted first, then signs, then the old one is retired: no failed requests), which
heartbeats move on as before. A plug-in CA is rotated at its source, so only warned of.

`expiry_warnings` says what will expire without anyone acting — read by `lattice status` and by
the `citadel_server_cert_expiry_warnings` metric:
- a self-rotating root from `warn_at` of its life (ahead of `rotate_at`) until a new root signs;
- a plug-in root or intermediate in its last `PLUG_IN_WARNING` of life (or last fifth);
- a workload certificate past three quarters of its life (renewal is due at half-life, so its
  agent has failed to renew it since).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from lattice.identity import fingerprint
from lattice.identity.ca import SKEW
from lattice.server.ca import CaManager, RotationError

log = logging.getLogger("lattice.ca")
PLUG_IN_WARNING = timedelta(days=30)
WORKLOAD_WARNING = 0.75  # of a certificate's life: renewal was due at 0.5


@dataclass(frozen=True)
class RotationPolicy:
    rotate_at: float = 0.8  # of a root's life
    warn_at: float = 0.7

    @staticmethod
    def for_rotation_at(rotate_at: float) -> RotationPolicy:
        return RotationPolicy(rotate_at, max(0.0, rotate_at - 0.1))


@dataclass(frozen=True)
class ExpiryWarning:
    kind: str  # "root", "intermediate" or "workload"
    subject: str  # the certificate's subject, or the workload's proxy id
    not_after: datetime
    message: str

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
            "message": self.message,
        }


def _life_passed(cert: x509.Certificate, now: datetime) -> float:
    """How much of a generated root's life has passed: from its making, not from the minute it is
    backdated by (SKEW, for peers whose clocks are behind)."""
    born = cert.not_valid_before_utc + SKEW
    life = (cert.not_valid_after_utc - born).total_seconds()
    return (now - born).total_seconds() / life if life > 0 else 1.0


def rotation_due(ca: CaManager, policy: RotationPolicy, now: datetime) -> bool:
    return not ca.plugged and not ca.phase and _life_passed(ca.ca.root, now) >= policy.rotate_at


def rotate_root_if_due(ca: CaManager, policy: RotationPolicy) -> bool:
    """Start a root rotation if the signing root has lived `policy.rotate_at` of its life."""
    now = ca.clock()
    if not rotation_due(ca, policy, now):
        return False
    left = ca.ca.root.not_valid_after_utc - now
    log.info("the root expires in %s: rotating it (at %.0f%% of its life)", _human(left), policy.rotate_at * 100)
    ca.start_rotation()
    return True


def expiry_warnings(ca: CaManager, policy: RotationPolicy, now: datetime) -> list[ExpiryWarning]:
    out = []
    signing = ca.ca.root_fingerprint
    for root in ca.roots:
        if ca.plugged:
            out += _plug_in(root, "root", now)
        elif fingerprint(root) == signing and _life_passed(root, now) >= policy.warn_at:
            left = root.not_valid_after_utc - now
            plan = (
                f"being rotated ({ca.phase})"
                if ca.phase
                else f"it rotates itself at {policy.rotate_at:.0%} of its life"
            )
            out.append(
                ExpiryWarning(
                    "root",
                    root.subject.rfc4514_string(),
                    root.not_valid_after_utc,
                    f"the root expires in {_human(left)}; {plan}",
                )
            )
    if ca.plugged:
        for cert in ca.ca._chain()[:-1]:  # the signing certificate and its intermediates
            out += _plug_in(cert, "intermediate", now)
    for proxy_id, held in sorted(ca.held.items()):
        out += _workload(proxy_id, held, now)
    return out


def _plug_in(cert: x509.Certificate, kind: str, now: datetime) -> list[ExpiryWarning]:
    left = cert.not_valid_after_utc - now
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if left > min(PLUG_IN_WARNING, life / 5):
        return []
    message = f"the plug-in {kind} expires in {_human(left)}: replace it at its source (--ca-cert/--ca-key)"
    return [ExpiryWarning(kind, cert.subject.rfc4514_string(), cert.not_valid_after_utc, message)]


def _workload(proxy_id: str, held, now: datetime) -> list[ExpiryWarning]:
    try:
        not_after = datetime.fromisoformat(held.not_after)
        not_before = datetime.fromisoformat(held.not_before) if held.not_before else None
    except ValueError:
        return []
    if not_before is None or not_after <= not_before:
        return []
    passed = (now - not_before) / (not_after - not_before)
    if passed < WORKLOAD_WARNING:
        return []
    left = not_after - now
    state = f"expires in {_human(left)}" if left.total_seconds() > 0 else "has expired"
    message = f"the certificate of {proxy_id} ({held.identity}) {state} and was not renewed at half-life"
    return [ExpiryWarning("workload", proxy_id, not_after, message)]


def _human(left: timedelta) -> str:
    seconds = max(0.0, left.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


class CaDuty:
    """The server's side of these duties: the rotation run periodically, warnings for status and
    metrics (a `stats()` source)."""

    def __init__(self, ca: CaManager, policy: RotationPolicy) -> None:
        self.ca, self.policy = ca, policy

    def warnings(self) -> list[ExpiryWarning]:
        return expiry_warnings(self.ca, self.policy, self.ca.clock())

    def stats(self) -> dict:
        counts = {"root": 0, "intermediate": 0, "workload": 0}
        for warning in self.warnings():
            counts[warning.kind] += 1
        return {"expiry_warnings": counts}

    def check_every(self) -> float:
        """Often enough to act within a fiftieth of the root's life, at most once a minute."""
        root = self.ca.ca.root
        life = (root.not_valid_after_utc - root.not_valid_before_utc).total_seconds()
        return min(60.0, max(0.5, life / 50))

    async def run(self) -> None:
        while True:
            try:
                rotate_root_if_due(self.ca, self.policy)
            except RotationError as e:  # a rotation started by hand meanwhile: the next check sees it
                log.warning("root rotation not started: %s", e)
            await asyncio.sleep(self.check_every())
