"""Reads of snapshots and proxies (mesh/reads.py): what a computation read decides when its result
still holds, and for which other proxies."""

from __future__ import annotations

import json

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.reads import SnapshotReads, TracedSnapshot, proxy_key


def workload(service: str, version: str, n: int, namespace: str = "default") -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{version}-{n}.{namespace}",
            "name": f"{service}-{version}",
            "namespace": namespace,
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": version},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 8080,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
    )


A, B, C = workload("web", "v1", 1), workload("web", "v2", 2), workload("api", "v1", 3)


def vs(host: str, subset: str) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": host},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host, "subset": subset}}]}]},
        }
    )


def peer_auth(mode: str, app: str | None = None) -> str:
    spec = {"mtls": {"mode": mode}} | ({"selector": {"matchLabels": {"app": app}}} if app else {})
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": app or "default"},
            "spec": spec,
        }
    )


def snapshot(*docs: str, workloads=(A, B, C)) -> MeshSnapshot:
    resources = [r for d in docs for r in parse_documents(d)]
    return MeshSnapshot(
        "t",
        tuple(workloads),
        virtual_services=tuple(r for r in resources if r.kind == "VirtualService"),
        peer_authentications=tuple(r for r in resources if r.kind == "PeerAuthentication"),
    )


def route_of(host: str):
    """A computation as the translator writes one: a read, then a memo piece that closes over it."""

    def compute(snap, proxy):
        rule = snap.virtual_service_for(f"{host}.default.svc.cluster.local", proxy.namespace)
        return snap.memo(("route", host), lambda: rule.spec.http[0].route[0].destination.subset if rule else None)

    return compute


def test_a_result_holds_while_its_reads_read_alike_and_not_after():
    reads = SnapshotReads()
    traced = TracedSnapshot(snapshot(vs("web", "v1")), reads)
    value, trace = traced.trace(A, route_of("web"))
    assert value == "v1" and trace.attributes == ("namespace",)
    reads.advance(snapshot(vs("web", "v1"), vs("api", "v2")))  # another host's route changed
    assert reads.unchanged(trace.dependencies, checked=0)  # noted at generation 0, checked now at 1
    reads.advance(snapshot(vs("web", "v2"), vs("api", "v2")))
    assert not reads.unchanged(trace.dependencies, checked=1)


def test_a_result_not_checked_against_every_snapshot_since_counts_as_changed():
    reads = SnapshotReads()
    _, trace = TracedSnapshot(snapshot(), reads).trace(A, route_of("web"))
    reads.advance(snapshot())
    reads.advance(snapshot())
    assert reads.unchanged(trace.dependencies, checked=1) and not reads.unchanged(trace.dependencies, checked=0)


def test_a_memo_piece_is_taken_over_only_if_what_its_build_closes_over_is_equal():
    """The piece's own reads are the same in both snapshots; the route its caller read is not."""
    reads = SnapshotReads()
    first = TracedSnapshot(snapshot(vs("web", "v1")), reads)
    assert first.trace(A, route_of("web"))[0] == "v1"
    second_snapshot = snapshot(vs("web", "v2"))
    reads.advance(second_snapshot)
    second = TracedSnapshot(second_snapshot, reads, previous=first)
    assert second.trace(A, route_of("web"))[0] == "v2"


def services(snap, proxy):
    return snap.memo(("services", proxy.namespace), lambda: snap.visible_services(proxy.namespace))


def test_a_memo_piece_whose_reads_and_captures_are_unchanged_is_the_same_object():
    reads = SnapshotReads()
    first = TracedSnapshot(snapshot(), reads)
    piece = first.trace(A, services)[0]
    reads.advance(snapshot(vs("web", "v1")))
    second = TracedSnapshot(snapshot(vs("web", "v1")), reads, previous=first)
    assert second.trace(B, services)[0] is piece
    assert second.shared(piece) and second.shared(piece[0])


def test_proxies_with_the_read_attributes_alike_share_a_result():
    reads = SnapshotReads()
    traced = TracedSnapshot(snapshot(), reads)
    _, trace = traced.trace(A, lambda snap, proxy: (proxy.namespace, proxy.labels["app"]))
    assert trace.attributes == ("namespace", "labels")
    assert proxy_key(B, trace.attributes) != trace.values  # labels differ (version)
    assert (
        proxy_key(workload("web", "v1", 9), trace.attributes) == trace.values
    )  # only the address differs, and it was not read


def test_reads_that_take_the_proxy_are_checked_for_each_proxy():
    snap = snapshot(peer_auth("STRICT"), peer_auth("DISABLE", app="api"))
    traced = TracedSnapshot(snap, SnapshotReads())
    mode, trace = traced.trace(A, lambda s, proxy: s.inbound_mtls(proxy))
    assert mode == "STRICT" and len(trace.own) == 1
    assert trace.refit(snap, B) is not None and trace.refit(snap, C) is None


def test_a_read_that_fails_in_the_new_snapshot_has_changed():
    reads = SnapshotReads()
    traced = TracedSnapshot(snapshot(), reads)
    _, trace = traced.trace(A, lambda s, proxy: s.memo(("mode", "web-v2"), lambda: s.inbound_mtls(B)))
    reads.advance(snapshot(workloads=(A, C)))  # B is gone: its mode cannot be read
    assert not reads.unchanged(trace.dependencies, checked=0)


def test_an_argument_known_only_by_identity_ties_the_result_to_proxies_equal_in_everything():
    traced = TracedSnapshot(snapshot(), SnapshotReads())
    _, trace = traced.trace(A, lambda s, proxy: s.inbound_mtls(B))  # another workload: no plain value
    assert "address" in trace.attributes and "id" in trace.attributes


def test_own_reads_are_read_again_only_when_the_fields_behind_them_changed():
    from lattice.mesh.reads import changed_fields

    before = snapshot(peer_auth("STRICT"))
    _, trace = TracedSnapshot(before, SnapshotReads()).trace(A, lambda s, proxy: s.inbound_mtls(proxy))
    (read,) = trace.own
    assert read.fields == {"_inbound_mtls"}
    assert trace.own_fields() == ({"_inbound_mtls"},)
    routes_changed = snapshot(peer_auth("STRICT"), vs("web", "v1"))
    assert changed_fields(before, routes_changed).isdisjoint({"_inbound_mtls"})
    plaintext_for_web = snapshot(peer_auth("STRICT"), peer_auth("DISABLE", app="web"))
    changed = changed_fields(before, plaintext_for_web)
    assert "_inbound_mtls" in changed and trace.refit(plaintext_for_web, A) is None
    assert trace.refit(plaintext_for_web, A, trace.own_fields(), changed) is None


def test_another_proxy_that_fits_gets_the_fields_read_for_it():
    """A proxy alike in its attributes but not the one traced: whether the reads that took the
    proxy fit it, and the fields they read for it, so that later snapshots changing none of them
    need not read them again."""
    from lattice.mesh.reads import changed_fields

    before = snapshot(peer_auth("STRICT"), peer_auth("DISABLE", app="api"))
    _, trace = TracedSnapshot(before, SnapshotReads()).trace(A, lambda s, proxy: s.inbound_mtls(proxy))
    assert trace.refit(before, B) == ({"_inbound_mtls"},)
    assert trace.refit(before, C) is None  # api's proxy: plaintext
    plaintext_for_web = snapshot(peer_auth("STRICT"), peer_auth("DISABLE", app="web"))
    changed = changed_fields(before, plaintext_for_web)
    assert trace.refit(plaintext_for_web, B, ({"_inbound_mtls"},), changed) is None
    # known and unchanged: not read again (were it read, B would not fit this snapshot)
    assert trace.refit(plaintext_for_web, B, ({"_inbound_mtls"},), frozenset({"virtual_services"})) is not None


class _WithGatewaysFor(MeshSnapshot):
    def gateways_for(self, proxy: Workload) -> tuple:
        """(A method that reads a property: `edge_gateways`.)"""
        return tuple(g for g in self.edge_gateways if g.namespace == proxy.namespace)


def test_fields_read_through_a_property_are_not_known():
    """A property is read on the real snapshot, whatever fields it reads in turn: no field list
    can stand for it, so such a read is read again at every snapshot."""
    snap = _WithGatewaysFor("1", workloads=(A, B, C))
    _, trace = TracedSnapshot(snap, SnapshotReads()).trace(A, lambda s, proxy: s.gateways_for(proxy))
    assert trace.own_fields() == (None,)
    assert trace.refit(snap, B) == (None,)


def test_the_same_read_twice_is_noted_once():
    snap = snapshot(peer_auth("STRICT"))
    _, trace = TracedSnapshot(snap, SnapshotReads()).trace(
        A, lambda s, proxy: (s.inbound_mtls(proxy), s.inbound_mtls(proxy), s.identity(proxy))
    )
    assert [read.name for read in trace.own] == ["inbound_mtls", "identity"]
