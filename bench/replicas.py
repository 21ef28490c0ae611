"""Control-plane replicas: a change applied on one replica, ACKed by proxies connected to the others.

    .venv/bin/python bench/replicas.py [--quick] [--proxies 1000] [--changes 20] [--json PATH]

A real 3-member etcd cluster on loopback (Debian's etcd, as the tests start it) and three
`lattice server --store etcd://...` replicas sharing one plug-in CA. N simulated proxies (the
scale bench's: real certificates from the CA, registered through the agents' API, one gRPC mTLS
ADS stream each, bench/xds_fleet.py) are spread round-robin over the three replicas.

Measured, from the moment replica 1 answers the apply:
- a VirtualService change applied on replica 1, until every affected proxy connected to replicas
  2 and 3 ACKed the new RouteConfiguration (the etcd watch, each replica's push, the ACK);
- an endpoint added (registered on replica 2) and removed, until every affected proxy on all three
  replicas ACKed the new ClusterLoadAssignment;
and each replica's CPU seconds over the changes and its memory with its share of the fleet.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # before gRPC loads (see scale.py)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import procstat  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from harness import ControlPlane, _unverified, http  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scale import VERSIONS, address_marker, apply, cluster_of, destination_rules, memory_mb, summarize  # noqa: E402
from scale import virtual_service  # noqa: E402
from xds_fleet import ENDPOINT, ROUTE, Enroller, Fleet, Probe, contains, lacks, plan  # noqa: E402

from lattice.identity import CertificateAuthority  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REPLICAS = 3
CHANGE_TIMEOUT = 300.0


class ReplicaRun:
    def __init__(self, proxies: int, services: int, changes: int, endpoint_rounds: int) -> None:
        self.n, self.services, self.changes, self.endpoint_rounds = proxies, services, changes, endpoint_rounds
        self.root = Path(tempfile.mkdtemp(prefix="lattice-replicas-"))
        self.result: dict = {"proxies": proxies, "replicas": REPLICAS, "services": services}

    def run(self) -> dict:
        self.etcd = EtcdCluster(self.root / "etcd")
        (self.root / "etcd").mkdir()
        self.planes: list[ControlPlane] = []
        try:
            self.etcd.start()
            self._start_replicas()
            self.planes[0].apply(destination_rules(self.services))
            asyncio.run(self._measure())
        finally:
            for plane in self.planes:
                plane.stop()
            self.etcd.stop()
            shutil.rmtree(self.root, ignore_errors=True)  # etcd's data, keys, logs: nothing to keep
        return self.result

    def _start_replicas(self) -> None:
        cert, key = CertificateAuthority.generate("cluster.local", lambda: datetime.now(timezone.utc)).to_pem()
        (self.root / "ca.pem").write_bytes(cert)
        (self.root / "ca-key.pem").write_bytes(key)
        (self.root / "ca-key.pem").chmod(0o600)
        admin = secrets.token_urlsafe(32)
        for i in range(REPLICAS):
            home = self.root / f"replica{i}"
            home.mkdir()
            (home / "admin-token").write_text(admin + "\n")
            (home / "admin-token").chmod(0o600)
            args = ("--store", self.etcd.url("bench"), "--ca-cert", str(self.root / "ca.pem"))
            args += ("--ca-key", str(self.root / "ca-key.pem"), "--debounce", "100ms", "--heartbeat-timeout", "1h")
            self.planes.append(ControlPlane(home, *args, "--log-level", "warning").start())

    async def _measure(self) -> None:
        first = self.planes[0]
        bundle = json.loads(http("GET", f"{first.agent_api}/agent/v1/bundle", context=_unverified())[2])["bundle"]
        bundle = bundle.encode()
        (self.root / "identities").mkdir()
        enrollers = [Enroller(p.agent_api, bundle, self.root / "identities") for p in self.planes]
        self.fleets = [Fleet(p.xds, bundle) for p in self.planes]
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHANGE_TIMEOUT))
        try:
            identities = plan(self.n + self.endpoint_rounds, self.services, VERSIONS)
            fleet, spares = identities[: self.n], identities[self.n :]
            per_service: dict[str, int] = {}
            for i in identities:
                per_service[i.service] = per_service.get(i.service, 0) + 1
            tokens = {s: first.token(s, ttl=3600, uses=c) for s, c in per_service.items()}
            await asyncio.gather(*(enrollers[0].certify(i, tokens[i.service]) for i in identities))
            share = [fleet[k::REPLICAS] for k in range(REPLICAS)]
            await asyncio.gather(*(enrollers[k].register(i, many=True) for k in range(REPLICAS) for i in share[k]))
            for k in range(REPLICAS):
                self.fleets[k].connect(share[k])
            for f in self.fleets:
                await f.settled(quiet=1.0, timeout=120 + self.n * 0.3)
            self.result["memory_mb"] = [memory_mb(p.process.pid)["rss_mb"] for p in self.planes]
            cpu = [procstat.cpu_seconds(p.process.pid) for p in self.planes]
            route = [await self._route_change(i) for i in range(self.changes)]
            self.result["route_change"] = summarize(route)
            added, removed = [], []
            for spare in spares:
                added.append(await self._endpoint_change(spare, enrollers[1].register(spare), present=True))
                removed.append(await self._endpoint_change(spare, enrollers[1].deregister(spare), present=False))
            self.result["endpoint_added"], self.result["endpoint_removed"] = summarize(added), summarize(removed)
            used = [procstat.cpu_seconds(p.process.pid) - c for p, c in zip(self.planes, cpu, strict=True)]
            self.result["cpu_s_over_changes"] = [round(u, 2) for u in used]
            self.result["nacks"] = sum(p.nacks for f in self.fleets for p in f.proxies.values())
        finally:
            for f in self.fleets:
                await f.close()
            for e in enrollers:
                await e.close()
            await self.session.close()

    async def _route_change(self, i: int) -> dict:
        """A VirtualService applied on replica 1; affected: proxies on replicas 2 and 3 holding its host."""
        service = f"svc-{i % self.services:02d}"
        host = f"{service}.default.svc.cluster.local".encode()
        route_name = f"bench-{i}-{secrets.token_hex(3)}"
        others = self.fleets[1:]
        affected = set().union(*(f.holding(lambda p: contains(host)(p.types[ROUTE].resources)) for f in others))
        probe = Probe(ROUTE, contains(route_name.encode()), affected)
        text = virtual_service(service, route_name, f"v{i % 2 + 1}")
        return await self._change(probe, others, apply(self.session, self.planes[0], text))

    async def _endpoint_change(self, spare, call, present: bool) -> dict:
        cluster, marker = cluster_of(spare.service), address_marker(spare.address)
        affected = set().union(*(f.holding(lambda p: cluster in (p.types[ENDPOINT].names or ())) for f in self.fleets))
        probe = Probe(ENDPOINT, contains(marker) if present else lacks(marker), affected)

        async def timed():
            await call
            return time.perf_counter(), time.time()

        return await self._change(probe, self.fleets, timed())

    async def _change(self, probe: Probe, fleets: list[Fleet], change) -> dict:
        for f in fleets:
            f.probes.append(probe)
        size, responses = sum(f.bytes_received for f in self.fleets), sum(f.responses for f in self.fleets)
        try:
            returned, _ = await change
            try:
                await asyncio.wait_for(probe.done.wait(), CHANGE_TIMEOUT)
            except TimeoutError:
                pass
        finally:
            for f in fleets:
                f.probes.remove(probe)
        for f in self.fleets:
            await f.settled(quiet=0.3, timeout=CHANGE_TIMEOUT)
        acks = sorted(t - returned for t in probe.acked_at.values())
        return {
            "affected": probe.expected,
            "missing": len(probe.waiting),
            "acks_s": acks,
            "real_s": [],
            "bytes": sum(f.bytes_received for f in self.fleets) - size,  # over all three replicas' fleets
            "responses": sum(f.responses for f in self.fleets) - responses,
        }


def table(result: dict) -> Table:
    t = Table(title=f"{result['replicas']} replicas on etcd, {result['proxies']} simulated proxies spread over them")
    for column in ("measure", "changes", "affected", "p50", "p99", "max"):
        t.add_column(column)
    for key, label in (
        ("route_change", "VS applied on replica 1 -> ACKed on replicas 2, 3"),
        ("endpoint_added", "endpoint registered on replica 2 -> ACKed everywhere"),
        ("endpoint_removed", "endpoint deregistered on replica 2 -> ACKed everywhere"),
    ):
        r = result[key]
        t.add_row(
            label,
            str(r["changes"]),
            str(r["affected"]),
            *(f"{r[q] * 1000:.0f} ms" for q in ("p50_s", "p99_s", "max_s")),
        )
    t.add_row("replica CPU over the changes (s)", "", "", " / ".join(map(str, result["cpu_s_over_changes"])), "", "")
    t.add_row("replica RSS with its share (MiB)", "", "", " / ".join(map(str, result["memory_mb"])), "", "")
    return t


def measure(quick: bool, proxies: int | None = None, changes: int = 20) -> dict:
    n = proxies or (60 if quick else 1000)
    return ReplicaRun(n, services=20, changes=changes, endpoint_rounds=2 if quick else 5).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 proxies (about a minute).")
    parser.add_argument("--proxies", type=int, help="Simulated proxies in all (default 1000; quick: 60).")
    parser.add_argument("--changes", type=int, default=20, help="VirtualService changes applied on replica 1.")
    parser.add_argument("--json", type=Path, default=RESULTS / "replicas.json")
    args = parser.parse_args()
    result = measure(args.quick, args.proxies, args.changes)
    Console().print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
