"""Several `lattice server` replicas on one real 3-member etcd cluster (Debian's etcd, on loopback).

Each replica is its own process with its own home, started as the README tells a user: the same
`--store etcd://...` and the same plug-in CA files on each; agents join whichever replica their
LATTICE_HOME names. What is checked is what users see: a VirtualService applied to one replica
routes traffic of sidecars connected to the others; two writers of one resource get one 200 and
one 409; a single-use token presented to two replicas at once buys exactly one certificate;
with one etcd member down nothing changes; with quorum lost traffic flows, apply is refused
naming the store, and everything resumes once quorum is back.
"""

from __future__ import annotations

import json
import secrets
import threading
from datetime import datetime, timezone

import pytest
from harness import BACKEND, ControlPlane, Workload, http, served_by, wait_for

from lattice.identity import CertificateAuthority, SpiffeId, make_csr, new_key

pytestmark = pytest.mark.slow

VS_TO = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default{version}}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: {subset}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def vs_to(subset: str, resource_version: str | None = None) -> str:
    return VS_TO.format(subset=subset, version=f", resourceVersion: '{resource_version}'" if resource_version else "")


@pytest.fixture(scope="module")
def replicas(etcd_cluster, tmp_path_factory):
    """Three replicas on one etcd key prefix, with one CA and one admin credential between them."""
    shared = tmp_path_factory.mktemp("replica-files")
    cert_pem, key_pem = CertificateAuthority.generate("cluster.local", lambda: datetime.now(timezone.utc)).to_pem()
    (shared / "ca.pem").write_bytes(cert_pem)
    (shared / "ca-key.pem").write_bytes(key_pem)
    (shared / "ca-key.pem").chmod(0o600)
    admin = secrets.token_urlsafe(32)
    url = etcd_cluster.url(f"replicas-{secrets.token_hex(4)}")
    planes = []
    try:
        for i in range(3):
            home = tmp_path_factory.mktemp(f"replica{i}") / "home"
            home.mkdir()
            (home / "admin-token").write_text(admin + "\n")
            (home / "admin-token").chmod(0o600)
            extra = ("--store", url, "--ca-cert", str(shared / "ca.pem"), "--ca-key", str(shared / "ca-key.pem"))
            planes.append(ControlPlane(home, *extra, "--heartbeat-timeout", "6").start())
        yield planes
    finally:
        for plane in planes:
            plane.stop()


def _apply(plane: ControlPlane, text: str) -> tuple[int, dict]:
    status, _, raw = http(
        "POST", f"{plane.api}/api/v1/apply", text.encode(), plane.admin | {"Content-Type": "application/yaml"}
    )
    return status, json.loads(raw or b"{}")


def test_every_replica_lists_the_others_and_the_store(replicas) -> None:
    def all_listed():
        return all(len(p.status()["replicas"]) == 3 for p in replicas)

    wait_for(all_listed, 15, what="each replica to see all three")
    store = replicas[1].status()["store"]
    assert store["backend"] == "etcd" and store["healthy"]
    assert [m["reachable"] for m in store["members"]] == [True, True, True]
    table = replicas[0].cli("status").stdout
    assert "store etcd://" in table and "REPLICA" in table and table.count("(this)") == 1


def test_conflicting_writes_on_two_replicas_one_wins_the_other_gets_409(replicas) -> None:
    status, body = _apply(replicas[0], vs_to("v1"))
    assert status == 200, body
    version = replicas[1].get("/api/v1/resources/virtualservices/default/web")["metadata"]["resourceVersion"]
    outcomes: dict[int, tuple[int, dict]] = {}
    barrier = threading.Barrier(2)

    def write(i: int, subset: str) -> None:
        barrier.wait()
        outcomes[i] = _apply(replicas[i], vs_to(subset, version))

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in ((1, "v2"), (2, "v2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(code for code, _ in outcomes.values())
    assert codes == [200, 409], outcomes
    loser = next(body for code, body in outcomes.values() if code == 409)
    assert "resourceVersion" in loser["error"] and "stale" in loser["error"]


def _bundle_context(plane: ControlPlane):
    import ssl

    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    status, _, raw = http("GET", f"{plane.agent_api}/agent/v1/bundle", context=unverified)
    assert status == 200, raw
    context = ssl.create_default_context(cadata=json.loads(raw)["bundle"])
    context.check_hostname = False
    return context


def _ca_counts(plane: ControlPlane) -> tuple[int, int]:
    shown = json.loads(plane.cli("ca", "show", "-o", "json").stdout)
    return shown["issued"], shown["refused"].get("token", 0)


def test_a_single_use_token_presented_to_two_replicas_at_once_buys_one_certificate(replicas) -> None:
    """...and `lattice ca show` on the replica that saw neither request counts both: the CA's
    counts are the mesh's, kept in the store."""
    counted_before = _ca_counts(replicas[0])
    token = replicas[0].token("ratings", uses=1)
    contexts = [_bundle_context(p) for p in replicas[1:]]
    answers: list[int] = []
    barrier = threading.Barrier(2)

    def ask(plane: ControlPlane, context, n: int) -> None:
        body = json.dumps(
            {
                "csr": make_csr(new_key(), SpiffeId("cluster.local", "default", "ratings")).decode(),
                "proxy_id": f"ratings-{n}.default",
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        barrier.wait()
        status, _, _ = http("POST", f"{plane.agent_api}/agent/v1/certificate", body, headers, context=context)
        answers.append(status)

    threads = [
        threading.Thread(target=ask, args=(p, c, i))
        for i, (p, c) in enumerate(zip(replicas[1:], contexts, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == [200, 401]
    issued, refused = counted_before

    def counted() -> bool:
        now = _ca_counts(replicas[0])
        return now[0] >= issued + 1 and now[1] >= refused + 1

    wait_for(counted, 15, what="the other replicas' certificate and refusal in replica 1's `ca show`")


def test_a_replica_that_stops_cleanly_leaves_the_list_at_once(replicas, etcd_cluster, tmp_path) -> None:
    """Its record is on a lease it revokes when it stops, not one left to expire (10 s)."""
    first = replicas[0]
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin-token").write_text(first.admin["Authorization"].removeprefix("Bearer ") + "\n")
    (home / "admin-token").chmod(0o600)
    fourth = ControlPlane(home, *first.extra).start()
    try:
        wait_for(lambda: len(first.status()["replicas"]) == 4, 15, what="the fourth replica to be listed")
    finally:
        fourth.stop()
    wait_for(lambda: len(first.status()["replicas"]) == 3, 3, interval=0.1, what="it to leave the list")


def test_a_virtual_service_applied_on_one_replica_routes_sidecars_on_the_others(replicas, etcd_cluster) -> None:
    one, two, three = replicas
    workloads = [
        Workload(two, "web", "v1", command=BACKEND),
        Workload(three, "web", "v2", command=BACKEND),
        Workload(two, "client", "v1", command=BACKEND),
        Workload(three, "client", "v2", command=BACKEND),
    ]
    for w in workloads:
        w.start(wait=False)
    try:
        web_v1, web_v2, client_two, client_three = [w.wait_ready() for w in workloads]
        wait_for(lambda: all(_synced_here(p, 4) for p in (two, three)), 20, what="both replicas' proxies synced")
        status, body = _apply(one, vs_to("v2"))
        assert status == 200, body
        for client in (client_two, client_three):
            wait_for(
                lambda c=client: served_by(c, "http://web/", 4) == {"web-v2": 4},
                15,
                what=f"{client.service}-{client.version} to follow the VirtualService applied on replica 1",
            )

        # One etcd member down: nothing changes, writes included.
        etcd_cluster.kill_member(0)
        try:
            status, body = _apply(one, vs_to("v1"))
            assert status == 200, body
            for client in (client_two, client_three):  # each replica's watch may have to find another member
                wait_for(
                    lambda c=client: served_by(c, "http://web/", 4) == {"web-v1": 4},
                    15,
                    what=f"a change made with one etcd member down to reach {client.service}-{client.version}",
                )

            # Quorum lost: traffic flows on the last config; apply is refused, naming the store.
            etcd_cluster.kill_member(1)
            status, body = _apply(two, vs_to("v2"))
            assert status == 503, body
            assert "etcd://" in body["error"] and "nothing was written" in body["error"]
            assert served_by(client_two, "http://web/", 10) == {"web-v1": 10}
            assert not two.status()["store"]["healthy"]
        finally:
            etcd_cluster.start_member(0)
            etcd_cluster.start_member(1)
            etcd_cluster.wait_healthy()

        # Quorum back: the refused write was not half-applied, and writes resume on every replica.
        assert (
            one.get("/api/v1/resources/virtualservices/default/web")["spec"]["http"][0]["route"][0]["destination"][
                "subset"
            ]
            == "v1"
        )
        wait_for(lambda: _apply(three, vs_to("v2"))[0] == 200, 20, what="apply to work again once quorum is back")
        for client in (client_two, client_three):
            wait_for(
                lambda c=client: served_by(c, "http://web/", 4) == {"web-v2": 4},
                15,
                what="the change after quorum returned to reach every proxy",
            )
    finally:
        for w in reversed(workloads):
            w.stop()


def _synced_here(plane: ControlPlane, registered: int) -> bool:
    """Every workload of the mesh registered (wherever it connects), and those connected to this
    replica holding what it sent them."""
    status = plane.status()
    mine = [p for p in status["proxies"] if p["connected"]]
    return (
        len(status["proxies"]) == registered
        and not status["server"]["push_pending"]
        and all(all(t["state"] == "SYNCED" for t in p["types"].values()) for p in mine)
    )


def test_sigkill_of_the_replica_agents_use_loses_no_request_and_they_move_to_another(replicas) -> None:
    """Last in this module: it kills replica 1 for good."""
    one, two, three = replicas
    servers = ",".join(p.agent_api for p in replicas)  # replica 1 first: everyone starts on it
    status, body = _apply(one, vs_to("v1"))
    assert status == 200, body
    workloads = [
        Workload(one, "web", "v1", command=BACKEND, extra=("--server", servers)),
        Workload(one, "web", "v2", command=BACKEND, extra=("--server", servers)),
        Workload(one, "client", "v1", command=BACKEND, extra=("--server", servers)),
    ]
    for w in workloads:
        w.start(wait=False)
    traffic = Traffic(workloads[2])
    try:
        ready = [w.wait_ready() for w in workloads]
        ids = {w.id for w in ready}
        wait_for(lambda: served_by(ready[2], "http://web/", 4) == {"web-v1": 4}, 15, what="routing to v1 first")
        traffic.start()
        wait_for(lambda: traffic.ok >= 20, 10, what="steady traffic through the client's sidecar")

        one.process.kill()
        one.process.wait()

        def connected_elsewhere() -> bool:
            held = {p["id"] for plane in (two, three) for p in plane.status()["proxies"] if p["connected"]}
            return ids <= held

        wait_for(connected_elsewhere, 5, interval=0.1, what="every agent connected to a surviving replica")
        status, body = _apply(three, vs_to("v2"))
        assert status == 200, body
        wait_for(
            lambda: served_by(ready[2], "http://web/", 4) == {"web-v2": 4},
            15,
            what="a VirtualService applied on a survivor to reach every proxy",
        )
        sent_before = traffic.ok
        wait_for(lambda: traffic.ok >= sent_before + 20, 10, what="traffic to go on")
    finally:
        traffic.stop()
        for w in reversed(workloads):
            w.stop()
    assert traffic.failed == [], traffic.failed[:5]


class Traffic:
    """Requests one after another through a workload's sidecar, counting answers and failures."""

    def __init__(self, client: Workload) -> None:
        self.client, self.ok, self.failed = client, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, _ = self.client.call("http://web/", timeout=5)
            except OSError as e:
                status = repr(e)
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(status)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
