"""Re-translation limited to what a snapshot changed, shared by proxies alike (server/incremental.py):
whatever the change, every proxy gets byte for byte what a full translation gives; and a change
re-translates only the types whose reads it changed, once per kind of proxy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lattice.demo
import pytest

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.model import SNAPSHOT_FIELDS
from lattice.server import incremental
from lattice.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_ORDER, translate

DATA = Path(lattice.demo.__file__).parent / "networking"
GATEWAY = Path("/work/shared/conformance/istio-bookinfo/bookinfo-gateway.yaml")


def workload(
    service: str,
    version: str,
    n: int,
    protocol: str = "http",
    port: int = 9080,
    namespace: str = "default",
    healthy: bool = True,
    **extra,
) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{version}-{n:06d}.{namespace}",
            "name": f"{service}-{version}",
            "namespace": namespace,
            "service": service,
            "service_account": service,
            "labels": {"app": service, "version": version},
            "address": f"127.0.10.{n}",
            "port": port,
            "app_port": 30000 + n,
            "protocol": protocol,
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": healthy,
        }
        | extra
    )


BOOKINFO = [
    workload("productpage", "v1", 1),
    workload("details", "v1", 2),
    workload("reviews", "v1", 3),
    workload("reviews", "v2", 4),
    workload("reviews", "v3", 5),
    workload("ratings", "v1", 6),
    workload("ratings", "v2", 7),
]
MORE = [
    workload("db", "v1", 8, protocol="tcp", port=9000),
    workload(
        "client",
        "v1",
        9,
        upstreams=[
            {"service": "db", "namespace": "default", "port": 9000, "local_port": 19000},
            {"service": "reviews", "namespace": "default", "port": 9080, "local_port": 19080},
        ],
    ),
    workload("productpage", "v1", 10, namespace="other"),
    Workload.from_record(
        {
            "id": "ingressgateway-1.istio-system",
            "name": "ingressgateway",
            "namespace": "istio-system",
            "service": "istio-ingressgateway",
            "service_account": "istio-ingressgateway",
            "labels": {"istio": "ingressgateway", "app": "istio-ingressgateway"},
            "address": "127.0.10.11",
            "port": 9080,
            "app_port": 30011,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
            "kind": "gateway",
        }
    ),
]


def doc(api: str, kind: str, name: str, spec: dict, namespace: str = "default") -> str:
    return json.dumps(
        {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


RATINGS_BY_CALLER = doc(
    "networking.istio.io/v1",
    "VirtualService",
    "ratings",
    {
        "hosts": ["ratings"],
        "http": [
            {
                "match": [{"sourceLabels": {"app": "reviews", "version": "v2"}}],
                "route": [{"destination": {"host": "ratings", "subset": "v2"}}],
            },
            {"route": [{"destination": {"host": "ratings", "subset": "v1"}}]},
        ],
    },
)
RATINGS_DR = doc(
    "networking.istio.io/v1",
    "DestinationRule",
    "ratings-extra",
    {
        "host": "ratings",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
    },
)
DB_ROUTES = doc(
    "networking.istio.io/v1",
    "VirtualService",
    "db",
    {"hosts": ["db"], "tcp": [{"route": [{"destination": {"host": "db", "port": {"number": 9000}}}]}]},
)
REVIEWS_ONLY_FROM_PRODUCTPAGE = doc(
    "security.istio.io/v1",
    "AuthorizationPolicy",
    "reviews",
    {
        "selector": {"matchLabels": {"app": "reviews"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}]}],
    },
)
STRICT = doc("security.istio.io/v1", "PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}})
RATINGS_PLAINTEXT = doc(
    "security.istio.io/v1",
    "PeerAuthentication",
    "ratings",
    {"selector": {"matchLabels": {"app": "ratings"}}, "mtls": {"mode": "DISABLE"}},
)
EXTERNAL = doc(
    "networking.istio.io/v1",
    "ServiceEntry",
    "httpbin",
    {
        "hosts": ["httpbin.org"],
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS",
        "location": "MESH_EXTERNAL",
    },
)
RATE_LIMIT = doc(
    "lattice.dev/v1",
    "RateLimitPolicy",
    "ratings",
    {"selector": {"matchLabels": {"app": "ratings"}}, "limits": [{"requests": 10, "per": "1s"}]},
)
ACCESS_LOG = doc("telemetry.istio.io/v1", "Telemetry", "logs", {"accessLogging": [{"providers": [{"name": "envoy"}]}]})


def files(*names: str) -> list[str]:
    return [(DATA / n).read_text() for n in names]


# Each step: the config documents and the registry, as a push would see them.
STEPS = [
    ("nothing", [], BOOKINFO),
    ("subsets", files("destination-rule-all.yaml"), BOOKINFO),
    ("reviews to jason", files("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml"), BOOKINFO),
    ("reviews 80/20", files("destination-rule-all.yaml", "virtual-service-reviews-80-20.yaml"), BOOKINFO),
    ("more proxies", files("destination-rule-all.yaml", "virtual-service-reviews-80-20.yaml"), BOOKINFO + MORE),
    (
        "gateway and tcp routes",
        files("destination-rule-all.yaml", "virtual-service-reviews-80-20.yaml") + [GATEWAY.read_text(), DB_ROUTES],
        BOOKINFO + MORE,
    ),
    (
        "routes by caller",
        files("destination-rule-all.yaml") + [GATEWAY.read_text(), DB_ROUTES, RATINGS_BY_CALLER],
        BOOKINFO + MORE,
    ),
    (
        "authorization",
        files("destination-rule-all.yaml")
        + [GATEWAY.read_text(), DB_ROUTES, RATINGS_BY_CALLER, REVIEWS_ONLY_FROM_PRODUCTPAGE],
        BOOKINFO + MORE,
    ),
    (
        "strict mTLS",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER, REVIEWS_ONLY_FROM_PRODUCTPAGE, STRICT],
        BOOKINFO + MORE,
    ),
    (
        "ratings plaintext",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER, STRICT, RATINGS_PLAINTEXT],
        BOOKINFO + MORE,
    ),
    (
        "endpoint added",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER, STRICT, RATINGS_PLAINTEXT],
        BOOKINFO + MORE + [workload("reviews", "v3", 12)],
    ),
    (
        "endpoint unhealthy",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER, STRICT],
        BOOKINFO + MORE + [workload("reviews", "v3", 12, healthy=False)],
    ),
    (
        "labels changed",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER],
        BOOKINFO + MORE + [workload("reviews", "v3", 12, labels={"app": "reviews", "version": "v2"})],
    ),
    (
        "new service account",
        files("destination-rule-all.yaml") + [DB_ROUTES, RATINGS_BY_CALLER],
        BOOKINFO + MORE + [workload("reviews", "v2", 13, service_account="reviews-canary")],
    ),
    ("external service", files("destination-rule-all.yaml") + [RATINGS_BY_CALLER, EXTERNAL], BOOKINFO + MORE),
    (
        "limits and logs",
        files("destination-rule-all.yaml") + [RATINGS_BY_CALLER, EXTERNAL, RATE_LIMIT, ACCESS_LOG, RATINGS_DR],
        BOOKINFO + MORE,
    ),
    ("proxies gone", files("destination-rule-all.yaml") + [RATINGS_BY_CALLER, RATE_LIMIT], BOOKINFO[:5]),
    (
        "everything back",
        files("destination-rule-all.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
        + [GATEWAY.read_text(), DB_ROUTES, STRICT, ACCESS_LOG],
        BOOKINFO + MORE,
    ),
]


def snapshot(version: str, documents: list[str], workloads: list[Workload]) -> MeshSnapshot:
    resources = [r for text in documents for r in parse_documents(text)]
    by_field = {field: tuple(r for r in resources if r.kind == kind) for kind, field in SNAPSHOT_FIELDS.items()}
    created = {(r.kind, r.namespace, r.name): float(i) for i, r in enumerate(resources)}
    return MeshSnapshot(version, workloads=tuple(sorted(workloads, key=lambda w: w.id)), created=created, **by_field)


def serialized(items) -> tuple:
    return tuple((name, message.SerializeToString(deterministic=True)) for name, message in items)


def full(snap: MeshSnapshot, proxy: Workload) -> dict:
    return {t: serialized(items) for t, items in translate(snap, proxy).by_type.items()}


def incrementally(translations: incremental.ProxyTranslations, proxy: Workload) -> dict:
    return {t: translations.resources(proxy, t, serialized) for t in TYPE_ORDER}


def test_every_step_gives_every_proxy_what_a_full_translation_gives():
    translations = incremental.ProxyTranslations()
    for i, (name, documents, workloads) in enumerate(STEPS):
        snap = snapshot(str(i), documents, workloads)
        translations.advance(snap)
        for proxy in snap.workloads:
            assert incrementally(translations, proxy) == full(snapshot(str(i), documents, workloads), proxy), (
                f"step {name!r}, proxy {proxy.id}"
            )


def test_the_steps_in_reverse_too():
    """Changes undone: what was kept from before must not outlive the change."""
    translations = incremental.ProxyTranslations()
    for i, (name, documents, workloads) in enumerate(reversed(STEPS)):
        snap = snapshot(str(i), documents, workloads)
        translations.advance(snap)
        for proxy in snap.workloads:
            assert incrementally(translations, proxy) == full(snapshot(str(i), documents, workloads), proxy), (
                f"step {name!r}, proxy {proxy.id}"
            )


@pytest.fixture
def counted(monkeypatch):
    """How many times each type was translated since the counter was last cleared."""
    counts: Counter = Counter()
    real = incremental.translate_type

    def counting(snap, proxy, type_url):
        counts[type_url] += 1
        return real(snap, proxy, type_url)

    monkeypatch.setattr(incremental, "translate_type", counting)
    return counts


def fleet(count: int) -> list[Workload]:
    """`count` proxies over four services of three versions, each app on port 8080 of its own
    address: twelve kinds of proxy."""
    return [workload(f"svc-{i % 4}", f"v{i // 4 % 3 + 1}", 20 + i, app_port=8080) for i in range(count)]


SUBSETS = [
    doc(
        "networking.istio.io/v1",
        "DestinationRule",
        f"svc-{s}",
        {"host": f"svc-{s}", "subsets": [{"name": f"v{v}", "labels": {"version": f"v{v}"}} for v in (1, 2, 3)]},
    )
    for s in range(4)
]


def route(subset: str) -> str:
    return doc(
        "networking.istio.io/v1",
        "VirtualService",
        "svc-0",
        {"hosts": ["svc-0"], "http": [{"route": [{"destination": {"host": "svc-0", "subset": subset}}]}]},
    )


def push(translations, version: str, documents: list[str], workloads: list[Workload]) -> MeshSnapshot:
    snap = snapshot(version, documents, workloads)
    translations.advance(snap)
    for proxy in snap.workloads:
        assert incrementally(translations, proxy) == full(snap, proxy)
    return snap


def test_proxies_alike_share_one_translation_and_a_route_change_retranslates_only_routes(counted):
    translations, proxies = incremental.ProxyTranslations(), fleet(48)
    push(translations, "1", SUBSETS + [route("v1")], proxies)
    # Listeners carry each proxy's address; the other types depend on what the proxies share.
    assert counted[LISTENER] == 48 and max(counted[CLUSTER], counted[ENDPOINT], counted[ROUTE]) <= 12
    counted.clear()
    push(translations, "2", SUBSETS + [route("v2")], proxies)
    assert set(counted) == {ROUTE} and counted[ROUTE] <= 12


def test_callers_that_differ_only_in_labels_share_one_route_table_unless_a_route_matches_source_labels(counted):
    translations, proxies = incremental.ProxyTranslations(), fleet(48)
    push(translations, "1", SUBSETS + [route("v1")], proxies)
    counted.clear()
    push(translations, "2", SUBSETS + [route("v2")], proxies)
    assert counted[ROUTE] == 1  # one table for all twelve kinds of caller
    by_source = doc(
        "networking.istio.io/v1",
        "VirtualService",
        "svc-0",
        {
            "hosts": ["svc-0"],
            "http": [
                {
                    "match": [{"sourceLabels": {"version": "v2"}}],
                    "route": [{"destination": {"host": "svc-0", "subset": "v2"}}],
                },
                {"route": [{"destination": {"host": "svc-0", "subset": "v1"}}]},
            ],
        },
    )
    counted.clear()
    push(translations, "3", SUBSETS + [by_source], proxies)  # (each proxy checked against a full translation)
    assert counted[ROUTE] > 1  # the callers' versions now route apart


def test_an_endpoint_change_retranslates_endpoints_not_listeners_or_routes(counted):
    translations, proxies = incremental.ProxyTranslations(), fleet(48)
    push(translations, "1", SUBSETS + [route("v1")], proxies)
    counted.clear()
    newcomer = workload("svc-1", "v2", 99, app_port=8080)
    push(translations, "2", SUBSETS + [route("v1")], proxies + [newcomer])
    # The newcomer is translated whole; the others only have endpoints (and clusters, which name
    # the endpoints' identities) looked at again, once per kind of proxy.
    assert counted[LISTENER] == 1 and counted[ROUTE] <= 1 and 1 <= counted[ENDPOINT] <= 13
    counted.clear()
    push(translations, "3", SUBSETS + [route("v1")], proxies)  # and gone again
    assert counted[LISTENER] == 0 and counted[ROUTE] == 0


def test_nothing_changed_nothing_translated(counted):
    translations, proxies = incremental.ProxyTranslations(), fleet(24)
    push(translations, "1", SUBSETS, proxies)
    counted.clear()
    push(translations, "2", SUBSETS, proxies)
    assert not counted


def only_version(service: str, version: str) -> str:
    """An AuthorizationPolicy for one version of a service: proxies otherwise alike now differ in
    what a read that takes the proxy (the policies it enforces) gives."""
    return doc(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        f"{service}-{version}",
        {
            "selector": {"matchLabels": {"app": service, "version": version}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/svc-3"]}}]}],
        },
    )


def test_reads_that_take_the_proxy_are_read_again_only_when_their_fields_changed(monkeypatch):
    """Every proxy, not only the one a translation was made from, keeps the snapshot fields its
    own reads read: a route change reads none of them again, a policy change reads them again
    and proxies that now differ get their own translation (equal to a full one, as ever)."""
    translations, proxies = incremental.ProxyTranslations(), fleet(48)
    documents = SUBSETS + [route("v1")]
    push(translations, "1", documents, proxies)
    reads = _counted_push(monkeypatch, translations, "authorization_policies_for")

    def policies_read(version: str, documents: list[str]) -> int:
        """A push; how many times it read a proxy's policies (a full translation's reads aside)."""
        return reads(version, documents, proxies)

    assert policies_read("2", SUBSETS + [route("v2")]) == 0
    # each proxy's policies read again, since their field changed
    assert policies_read("3", SUBSETS + [route("v2"), only_version("svc-1", "v2")]) >= len(proxies)
    assert policies_read("4", SUBSETS + [route("v1"), only_version("svc-1", "v2")]) == 0
    assert policies_read("5", SUBSETS + [route("v1")]) >= len(proxies)  # the policy gone: alike again


def test_a_proxy_moving_to_a_new_translation_reads_again_only_what_changed_for_it(monkeypatch):
    """A route change gives every proxy a new route table, made once per kind of proxy; the
    others of its kind take it without reading the services visible to them again, since that
    read is the same read with the same value as in the table they had, and its fields did not
    change. A change to what is visible (a new service) makes them read it again."""
    translations, proxies = incremental.ProxyTranslations(), fleet(96)
    push(translations, "1", SUBSETS + [route("v1")], proxies)
    services_read = _counted_push(monkeypatch, translations, "services_for")

    # Only in the translations made (a dozen kinds, a few reads each), not once per proxy.
    assert services_read("2", SUBSETS + [route("v2")], proxies) < len(proxies) / 2
    newcomer = workload("svc-9", "v1", 500, app_port=8080)  # a new service: visible to everyone
    assert services_read("3", SUBSETS + [route("v2")], proxies + [newcomer]) >= len(proxies)


def _counted_push(monkeypatch, translations, method: str):
    """`counted(version, documents, workloads)`: a push of that snapshot, every proxy's output held to
    a full translation's; it answers how many times the push called MeshSnapshot.<method>."""
    calls = Counter()
    real = getattr(MeshSnapshot, method)

    def counting(self, proxy, *args, **kwargs):
        calls[proxy.id] += 1
        return real(self, proxy, *args, **kwargs)

    monkeypatch.setattr(MeshSnapshot, method, counting)

    def counted(version: str, documents: list[str], workloads: list[Workload]) -> int:
        snap = snapshot(version, documents, workloads)
        translations.advance(snap)
        calls.clear()
        got = {proxy.id: incrementally(translations, proxy) for proxy in snap.workloads}
        read = sum(calls.values())
        for proxy in snap.workloads:
            assert got[proxy.id] == full(snap, proxy), f"snapshot {version}, proxy {proxy.id}"
        return read

    return counted
