"""A database lock held by another process (issue 14, finding 9: health took 4 s while the event
loop, which also serves xDS, waited on SQLite). A statement now waits at most 250 ms for a lock;
past that a write is refused with 503, nothing written, and everything else keeps answering.

Observed: another process (this test, with Python's sqlite3, as an `sqlite3` shell or a backup
tool would) holds a write transaction on the control plane's database; meanwhile the REST API
answers reads, a write gets 503 naming the lock, and once the lock is gone the same write succeeds."""

from __future__ import annotations

import json
import sqlite3

import pytest
from harness import ControlPlane, http

pytestmark = pytest.mark.slow

VS = b"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: locked}
spec:
  hosts: [locked]
  http: [{route: [{destination: {host: locked}}]}]
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    cp = ControlPlane(tmp_path_factory.mktemp("store-lock") / "home").start()
    try:
        yield cp
    finally:
        cp.stop()


def _apply(plane) -> tuple[int, dict]:
    status, _, body = http("POST", f"{plane.api}/api/v1/apply", VS, plane.admin | {"Content-Type": "application/yaml"})
    return status, json.loads(body or b"{}")


def test_a_held_database_lock_refuses_writes_and_stalls_nothing(plane):
    holder = sqlite3.connect(plane.home / "lattice.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held until we say
        for _ in range(3):  # each within the client's 5 s (it waited 5 s per statement before)
            assert plane.status() is not None
            status, body = _apply(plane)
            assert status == 503 and "locked by another process" in body["error"], (status, body)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, body = _apply(plane)
    assert status == 200, body
    listed = http("GET", f"{plane.api}/api/v1/resources/VirtualService", None, plane.admin)
    assert b"locked" in listed[2]
