"""ServiceEntries and WorkloadEntries in the mesh snapshot, and what the translator makes of them."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import CLUSTER, ENDPOINT, ROUTE, translate

CLIENT = Workload.from_record(
    {
        "id": "client-v1-1.default",
        "name": "client-v1",
        "namespace": "default",
        "service": "client",
        "service_account": "client",
        "labels": {"app": "client"},
        "address": "127.0.10.2",
        "port": 9080,
        "app_port": 30002,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
    }
)


def _entry(name: str, body: str, namespace: str = "default", kind: str = "ServiceEntry") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: "
        f"{{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"
    )


def _snapshot(text: str, policy: str = "ALLOW_ANY", workloads: tuple[Workload, ...] = (CLIENT,)) -> MeshSnapshot:
    rs = parse_documents(text)
    of = lambda kind: tuple(r for r in rs if r.kind == kind)  # noqa: E731
    return MeshSnapshot(
        "t",
        workloads,
        of("VirtualService"),
        of("DestinationRule"),
        service_entries=of("ServiceEntry"),
        workload_entries=of("WorkloadEntry"),
        outbound_traffic_policy=policy,
    )


STATIC = _entry(
    "db",
    """  hosts: [db.example.com]
  addresses: [10.9.9.9]
  ports: [{number: 5000, name: http, targetPort: 5001}, {number: 6000, name: admin}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {address: 10.0.0.1, ports: {admin: 7000}, labels: {v: a}, weight: 3, locality: us/east/1}
  - {address: 10.0.0.2, serviceAccount: db, network: n2}
  - {address: 10.0.0.3, labels: {security.istio.io/tlsMode: disabled}, serviceAccount: db}""",
)


def test_each_host_and_port_is_a_service_with_the_entrys_properties():
    snap = _snapshot(STATIC)
    services = [s for s in snap.services if s.source == "ServiceEntry"]
    assert [(s.hostname, s.port, s.resolution, s.location, s.addresses) for s in services] == [
        ("db.example.com", 5000, "STATIC", "MESH_INTERNAL", ("10.9.9.9",)),
        ("db.example.com", 6000, "STATIC", "MESH_INTERNAL", ("10.9.9.9",)),
    ]
    assert any(s.source == "registry" and s.name == "client" for s in snap.services)  # registered workloads stay


def test_endpoint_ports_follow_istios_order_entry_port_then_target_port_then_port():
    snap = _snapshot(STATIC)
    by_port = {(e.address, e.port): e.target_port for e in snap.endpoints("db.example.com")}
    assert (
        by_port[("10.0.0.1", 5000)] == 5001
        and by_port[("10.0.0.1", 6000)] == 7000
        and by_port[("10.0.0.2", 6000)] == 6000
    )


def test_auto_mtls_needs_mesh_internal_and_an_identity_or_the_tls_mode_label():
    snap = _snapshot(STATIC)
    marked = {e.address: snap.accepts_mesh_tls(e) for e in snap.endpoints("db.example.com")}
    assert marked == {"10.0.0.1": False, "10.0.0.2": True, "10.0.0.3": False}
    external = _snapshot(STATIC.replace("MESH_INTERNAL", "MESH_EXTERNAL"))
    assert not any(external.accepts_mesh_tls(e) for e in external.endpoints("db.example.com"))


def test_network_becomes_a_label_for_subsets():
    (e,) = [e for e in _snapshot(STATIC).endpoints("db.example.com") if e.address == "10.0.0.2" and e.port == 5000]
    assert e.labels["topology.istio.io/network"] == "n2"


def test_dns_without_endpoints_resolves_each_host_and_none_has_no_endpoints():
    snap = _snapshot(
        _entry("web", "  hosts: [a.example.com, b.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS")
        + _entry("any", "  hosts: ['*.wild.example.com']\n  ports: [{number: 80, name: http}]")
    )
    assert [(e.address, e.target_port) for e in snap.endpoints("a.example.com")] == [("a.example.com", 80)]
    assert [e.address for e in snap.endpoints("b.example.com")] == ["b.example.com"]
    assert snap.endpoints("*.wild.example.com") == ()


def test_workload_selector_picks_entries_of_its_namespace_by_label():
    text = _entry(
        "vms",
        "  hosts: [vm.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  workloadSelector: "
        "{labels: {app: vm}}",
    )
    text += _entry("vm-1", "  address: 10.0.0.1\n  labels: {app: vm, extra: x}\n  weight: 2", kind="WorkloadEntry")
    text += _entry("vm-2", "  address: 10.0.0.2\n  labels: {app: other}", kind="WorkloadEntry")
    text += _entry("vm-3", "  address: 10.0.0.3\n  labels: {app: vm}", namespace="elsewhere", kind="WorkloadEntry")
    text += _entry("vm-4", "  address: vm4.internal\n  labels: {app: vm}", kind="WorkloadEntry")
    snap = _snapshot(text)
    assert [(e.id, e.address, e.weight) for e in snap.endpoints("vm.example.com")] == [
        ("WorkloadEntry default/vm-1", "10.0.0.1", 2)
    ]
    # A host name cannot be a STATIC endpoint: left out, and said so in `lattice status`.
    assert any("vm-4 has host name vm4.internal" in c for c in snap.conflicts())


def test_dns_round_robin_keeps_one_selected_entry_and_says_so():
    text = _entry(
        "vms",
        "  hosts: [vm.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS_ROUND_ROBIN\n  "
        "workloadSelector: {labels: {app: vm}}",
    )
    text += "".join(
        _entry(f"vm-{i}", f"  address: vm{i}.internal\n  labels: {{app: vm}}", kind="WorkloadEntry") for i in (1, 2)
    )
    snap = _snapshot(text)
    assert [e.address for e in snap.endpoints("vm.example.com")] == ["vm1.internal"]
    assert any("DNS_ROUND_ROBIN" in c for c in snap.conflicts())


def test_a_host_of_registered_workloads_or_an_older_entry_is_not_taken_over():
    text = _entry("first", "  hosts: [shared.example.com]\n  ports: [{number: 80, name: http}]")
    text += _entry("second", "  hosts: [shared.example.com, own.example.com]\n  ports: [{number: 81, name: http}]")
    text += _entry("clash", "  hosts: [client.default.svc.cluster.local]\n  ports: [{number: 80, name: http}]")
    snap = _snapshot(text)
    assert snap.service_ports("shared.example.com") == [80] and snap.service_ports("own.example.com") == [81]
    assert snap.service_ports("client.default.svc.cluster.local") == [9080]
    conflicts = snap.conflicts()
    assert any("second: host shared.example.com already belongs to ServiceEntry default/first" in c for c in conflicts)
    assert any(
        "clash: host client.default.svc.cluster.local already belongs to registered workloads" in c for c in conflicts
    )


def test_rules_for_an_entry_host_are_found_as_written():
    text = _entry("api", "  hosts: [api.example]\n  ports: [{number: 80, name: http}]")
    text += _entry("api", "  host: api.example\n  subsets: [{name: v1, labels: {v: '1'}}]", kind="DestinationRule")
    snap = _snapshot(text)
    # Two labels would be "name.namespace" for a Kubernetes service; an entry's host is taken literally.
    assert snap.resolve_host("api.example", "default") == "api.example"
    assert snap.resolve_host("reviews.prod", "default") == "reviews.prod.svc.cluster.local"
    assert snap.destination_rule_for("api.example") is not None


def test_export_to_hides_an_entry_from_other_namespaces():
    text = _entry(
        "mine", "  hosts: [mine.example.com]\n  ports: [{number: 80, name: http}]\n  exportTo: ['.']", namespace="team"
    )
    text += _entry("none", "  hosts: [none.example.com]\n  ports: [{number: 80, name: http}]\n  exportTo: ['~']")
    snap = _snapshot(text)
    assert {s.hostname for s in snap.visible_services("team")} >= {"mine.example.com"}
    assert not {"mine.example.com", "none.example.com"} & {s.hostname for s in snap.visible_services("default")}
    assert "outbound|80||mine.example.com" not in dict(translate(snap, CLIENT).by_type[CLUSTER])


# What the translator makes of them.


def _clusters(snap: MeshSnapshot) -> dict:
    return dict(translate(snap, CLIENT).by_type[CLUSTER])


def test_resolution_picks_the_cluster_type():
    text = STATIC + _entry("web", "  hosts: [web.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS")
    text += _entry(
        "one", "  hosts: [one.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS_ROUND_ROBIN"
    )
    text += _entry("any", "  hosts: ['*.wild.example.com']\n  ports: [{number: 80, name: http}]")
    clusters = _clusters(_snapshot(text))
    assert clusters["outbound|5000||db.example.com"].type == cluster_pb2.Cluster.EDS
    web = clusters["outbound|80||web.example.com"]
    assert (
        web.type == cluster_pb2.Cluster.STRICT_DNS
        and web.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
        == "web.example.com"
    )
    assert clusters["outbound|80||one.example.com"].type == cluster_pb2.Cluster.LOGICAL_DNS
    wild = clusters["outbound|80||*.wild.example.com"]
    assert (
        wild.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
        and wild.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    )


def test_static_endpoints_carry_weight_locality_target_port_and_mesh_tls():
    assignments = dict(translate(_snapshot(STATIC), CLIENT).by_type[ENDPOINT])
    groups = assignments["outbound|5000||db.example.com"].endpoints
    located = [g for g in groups if g.locality.region]
    assert [(g.locality.region, g.locality.zone, g.locality.sub_zone) for g in located] == [("us", "east", "1")]
    (weighted,) = located[0].lb_endpoints
    assert weighted.load_balancing_weight.value == 3 and weighted.endpoint.address.socket_address.port_value == 5001
    marked = [
        e.endpoint.address.socket_address.address for g in groups for e in g.lb_endpoints if e.metadata.filter_metadata
    ]
    assert marked == ["10.0.0.2"]


def test_subject_alt_names_join_endpoint_identities_for_mesh_tls():
    text = STATIC.replace(
        "  location: MESH_INTERNAL", "  location: MESH_INTERNAL\n  subjectAltNames: [spiffe://other.domain/ns/x/sa/y]"
    )
    cluster = _clusters(_snapshot(text))["outbound|5000||db.example.com"]
    context = cluster.transport_socket_matches[0].transport_socket.typed_config
    assert (
        b"spiffe://other.domain/ns/x/sa/y" in context.value
        and b"spiffe://cluster.local/ns/default/sa/db" in context.value
    )


def _vhosts(snap: MeshSnapshot) -> dict:
    (table,) = [m for _, m in translate(snap, CLIENT).by_type[ROUTE]]
    return {v.name: v for v in table.virtual_hosts}


def test_entry_hosts_and_addresses_are_route_domains():
    vhosts = _vhosts(_snapshot(STATIC))
    assert set(vhosts["db.example.com:5000"].domains) == {"db.example.com:5000", "10.9.9.9:5000"}
    assert vhosts["db.example.com:5000"].routes[0].route.cluster == "outbound|5000||db.example.com"


def test_an_entry_does_not_take_a_domain_a_service_already_has():
    vhosts = _vhosts(_snapshot(_entry("short", "  hosts: [client]\n  ports: [{number: 9080, name: http}]")))
    assert "client:9080" in vhosts["client.default.svc.cluster.local:9080"].domains
    assert "client" not in vhosts and all(
        "client:9080" not in v.domains for n, v in vhosts.items() if n != "client.default.svc.cluster.local:9080"
    )


def test_outbound_traffic_policy_decides_the_catch_all():
    allow = _vhosts(_snapshot(STATIC))["allow_any"]
    assert allow.domains == ["*"] and allow.routes[-1].route.cluster == "PassthroughCluster"  # after rds.refusals()
    block = _vhosts(_snapshot(STATIC, "REGISTRY_ONLY"))
    assert "allow_any" not in block and block["block_all"].routes[-1].direct_response.status == 502


def test_a_dotless_host_in_a_rule_still_means_the_kubernetes_service():
    snap = _snapshot(_entry("short", "  hosts: [client]\n  ports: [{number: 9080, name: http}]"))
    assert snap.resolve_host("client", "default") == "client.default.svc.cluster.local"  # Istio expands dotless names
