"""Fixtures shared by the integration and end-to-end tests (see harness.py)."""

from __future__ import annotations

import os

# Tests use gRPC in-process (xDS clients) and also start processes. With gRPC's fork support on,
# its fork handler restarts gRPC's poller in the forked child, whose descriptors subprocess then
# closes before exec: the child aborts ("epoll_wait error: Bad file descriptor"). The CLI turns
# fork support off for the same reason; it must be off before gRPC is first imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import pytest  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from harness import ControlPlane, Workload, reset_config, start_all  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite translator golden files from current output."
    )


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory):
    """A real 3-member etcd cluster on loopback for the whole session (tests isolate themselves by
    key prefix); a test that stops members starts them again before it ends."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def plane(tmp_path):
    cp = ControlPlane(tmp_path / "home").start()
    yield cp
    cp.stop()


@pytest.fixture
def workloads(plane):
    started: list[Workload] = []

    def start(service: str, version: str = "v1", **kw) -> Workload:
        w = Workload(plane, service, version, **kw)
        started.append(w)
        return w.start()

    yield start
    for w in reversed(started):
        w.stop()


@pytest.fixture(scope="module")
def shared_plane(tmp_path_factory):
    """One control plane for a whole module; tests reset its config (see `bookinfo`)."""
    cp = ControlPlane(tmp_path_factory.mktemp("mesh") / "home").start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def bookinfo_mesh(shared_plane):
    """productpage, details, ratings and reviews v1/v2/v3, each under its own sidecar."""
    specs = [
        ("productpage", "v1"),
        ("details", "v1"),
        ("ratings", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
    ]
    started = start_all(shared_plane, specs)
    yield {f"{w.service}-{w.version}": w for w in started}
    for w in reversed(started):
        w.stop()


@pytest.fixture
def bookinfo(shared_plane, bookinfo_mesh):
    """The shared Bookinfo mesh with no routing config; returns productpage, used as the client."""
    reset_config(shared_plane)
    return bookinfo_mesh["productpage-v1"]
