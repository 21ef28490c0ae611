"""Shared fixtures for the identity tests: an injected clock, a generated CA, an identity."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lattice.identity import CertificateAuthority, SpiffeId

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    """The injected clock: a fixed instant that tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(clock: Clock) -> CertificateAuthority:
    return CertificateAuthority.generate("cluster.local", clock)


@pytest.fixture
def reviews() -> SpiffeId:
    return SpiffeId("cluster.local", "default", "reviews")
