"""The workloads `lattice demo` runs: Bookinfo with Istio's names, ports and versions, plus its client."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

PORT = 9080  # Bookinfo's service port, so Istio's routing files apply unchanged


@dataclass(frozen=True)
class DemoWorkload:
    service: str
    version: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


def _app(service: str, version: str = "v1") -> DemoWorkload:
    command = (sys.executable, "-m", f"lattice.demo.apps.{service}")
    return DemoWorkload(service, version, command, {"SERVICE_VERSION": version})


def bookinfo() -> tuple[DemoWorkload, ...]:
    return (
        _app("productpage"),
        _app("details"),
        _app("reviews", "v1"),
        _app("reviews", "v2"),
        _app("reviews", "v3"),
        _app("ratings"),
    )


JASON_SHARE = 0.25  # of the client's requests sent as `end-user: jason` (Istio's header-routing user)


def loadgen(rate: float) -> DemoWorkload:
    command = (sys.executable, "-m", "lattice.demo.loadgen", "--rate", str(rate), "--jason-share", str(JASON_SHARE))
    return DemoWorkload("loadgen", "v1", command)


# What `--check` requires to have answered: every service, and each reviews version on its own,
# since round-robin over reviews is the first thing a user sees the mesh do.
REQUIRED = (
    ("productpage", None),
    ("details", None),
    ("ratings", None),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
)
