"""DestinationRule traffic policies with real sidecars, observed from the client: which instance
answers, which status comes back, how many requests reach the backend.

One control plane and one set of workloads for the module (each test applies its own rule):
- `client` in region r1 / zone a, the caller;
- `spread`: three healthy instances (load balancing, consistent hashing);
- `zoned`: z-local (r1/a, answers every request with 500), z-near (r1/b), z-far (r2/c);
- `single`: one instance, delayed or failed per request (`?delay=`, `?status=`), for the
  connection pool and the retry budget.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import BACKEND, Workload, http, reset_config, running, wait_for

pytestmark = pytest.mark.slow
REGION, ZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"
SPREAD, ZONED, SINGLE = "http://spread:9080/", "http://zoned:9080/", "http://single:9080/"


def _at(region: str, zone: str) -> tuple[str, ...]:
    return ("--label", f"{REGION}={region}", "--label", f"{ZONE}={zone}")


@pytest.fixture(scope="module")
def mesh(shared_plane):
    specs = [
        ("client", "v1", (*_at("r1", "a"), "--stats-inclusion-prefixes", "cluster.outbound"), {}),  # read below
        *[("spread", f"v{i}", (), {}) for i in (1, 2, 3)],
        ("zoned", "local", _at("r1", "a"), {"BACKEND_STATUS": "500"}),
        ("zoned", "near", _at("r1", "b"), {}),
        ("zoned", "far", _at("r2", "c"), {}),
        ("single", "v1", (), {}),
    ]
    with running(
        shared_plane,
        [Workload(shared_plane, s, v, command=BACKEND, extra=extra, env=env) for s, v, extra, env in specs],
    ) as ready:
        yield {f"{w.service}-{w.version}": w for w in ready}


@pytest.fixture
def client(shared_plane, mesh):
    reset_config(shared_plane)
    return mesh["client-v1"]


def _rule(plane, host: str, traffic_policy: dict) -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host},
        "spec": {"host": host, "trafficPolicy": traffic_policy},
    }
    plane.apply(json.dumps(doc))
    wait_for(plane.all_synced, 10, what=f"the {host} rule to reach every proxy")


def _call(client: Workload, url: str, headers: dict | None = None) -> tuple[int, str, str]:
    status, h, _ = client.call(url, headers, timeout=10)
    return status, h.get("x-served-by", ""), h.get("x-instance", "")


def _concurrently(client: Workload, url: str, n: int) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(n) as pool:
        return [(s, h) for s, h, _ in pool.map(lambda _: client.call(url, timeout=15), range(n))]


def _stat(workload: Workload, name: str) -> int:
    _, _, body = http("GET", f"http://{workload.address}:{workload.info['agent_port']}/stats?filter={name}")
    return sum(int(line.rsplit(":", 1)[1]) for line in body.decode().splitlines() if line.split(":")[0].endswith(name))


# --- outlier detection -----------------------------------------------------------------------------


def test_outlier_detection_ejects_the_failing_endpoint_and_lets_it_back(shared_plane, client):
    # Locality is switched off so that all three instances share the load.
    _rule(
        shared_plane,
        "zoned",
        {
            "loadBalancer": {"simple": "RANDOM", "localityLbSetting": {"enabled": False}},
            "outlierDetection": {
                "consecutive5xxErrors": 3,
                "interval": "1s",
                "baseEjectionTime": "6s",
                "maxEjectionPercent": 50,
            },
        },
    )
    failures, answered = 0, set()
    while failures < 3:
        status, served_by, _ = _call(client, ZONED)
        failures += status == 500
        answered.add(served_by)
        assert len(answered) + failures < 60, "the failing instance was never picked"
    ejected = time.monotonic()
    after = [_call(client, ZONED) for _ in range(30)]
    assert time.monotonic() - ejected < 5, "too slow to observe the ejection window"
    assert {(s, b) for s, b, _ in after} <= {(200, "zoned-near"), (200, "zoned-far")}, after
    # Ejected for baseEjectionTime, released at the next interval tick: z-local answers (500) again.
    back = wait_for(
        lambda: _call(client, ZONED)[0] == 500 and time.monotonic(), 15, interval=0.1, what="z-local to return"
    )
    assert back - ejected >= 5.5, (
        f"z-local returned {back - ejected:.1f}s after ejection, before its 6s baseEjectionTime"
    )


# --- locality --------------------------------------------------------------------------------------


def test_locality_failover_prefers_the_callers_zone_then_its_region(shared_plane, client):
    # Istio's default locality failover applies once outlierDetection is set; z-local fails every request.
    _rule(
        shared_plane,
        "zoned",
        {
            "outlierDetection": {
                "consecutive5xxErrors": 3,
                "interval": "1s",
                "baseEjectionTime": "30s",
                "maxEjectionPercent": 100,
            }
        },
    )
    answers = [_call(client, ZONED)[:2] for _ in range(25)]
    assert answers[:3] == [(500, "zoned-local")] * 3, answers  # same zone first, every time
    assert answers[3:] == [(200, "zoned-near")] * 22, answers  # then the same region, never r2


def test_without_outlier_detection_there_is_no_locality_preference(shared_plane, client):
    answers = {_call(client, ZONED)[1] for _ in range(40)}
    assert answers == {"zoned-local", "zoned-near", "zoned-far"}, answers


def test_locality_distribute_weights_by_zone(shared_plane, client):
    _rule(
        shared_plane,
        "zoned",
        {"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "r1/a/*", "to": {"r1/b/*": 100}}]}}},
    )
    assert {_call(client, ZONED)[1] for _ in range(20)} == {"zoned-near"}


# --- load balancing --------------------------------------------------------------------------------


def test_consistent_hash_on_a_header_pins_each_value_to_one_instance(shared_plane, client):
    _rule(shared_plane, "spread", {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})
    chosen = {}
    for user in [f"user-{i}" for i in range(12)]:
        instances = {_call(client, SPREAD, {"x-user": user})[2] for _ in range(5)}
        assert len(instances) == 1, (user, instances)
        chosen[user] = instances.pop()
    assert len(set(chosen.values())) >= 2, chosen  # different values spread over the instances


@pytest.mark.parametrize("simple", ["LEAST_REQUEST", "RANDOM", "ROUND_ROBIN"])
def test_simple_load_balancers_reach_every_endpoint(shared_plane, client, simple):
    _rule(shared_plane, "spread", {"loadBalancer": {"simple": simple}})
    dump = shared_plane.get(f"/api/v1/proxies/{client.id}/config_dump?resource=dynamic_active_clusters")
    policies = {c["cluster"]["name"]: c["cluster"].get("lb_policy", "ROUND_ROBIN") for c in dump["configs"]}
    assert policies["outbound|9080||spread.default.svc.cluster.local"] == simple
    assert {_call(client, SPREAD)[1] for _ in range(40)} == {"spread-v1", "spread-v2", "spread-v3"}


# --- connection pool -------------------------------------------------------------------------------


def _overloaded(results: list[tuple[int, dict]]) -> int:
    """How many answers are Envoy's circuit-breaker overflow: 503 with `x-envoy-overloaded`, none otherwise."""
    assert {s for s, _ in results} <= {200, 503}, results
    assert all((s == 503) == (h.get("x-envoy-overloaded") == "true") for s, h in results), results
    return sum(s == 503 for s, _ in results)


def test_max_requests_overflow_with_503_once_exceeded_and_not_before(shared_plane, client):
    _rule(shared_plane, "single", {"connectionPool": {"http": {"http2MaxRequests": 2}}})
    assert _overloaded(_concurrently(client, SINGLE + "?delay=1", 2)) == 0
    assert _overloaded(_concurrently(client, SINGLE + "?delay=1", 5)) == 3


def test_connections_and_pending_requests_overflow_with_503(shared_plane, client):
    _rule(
        shared_plane,
        "single",
        {"connectionPool": {"tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}},
    )
    assert _overloaded([client.call(SINGLE + "?delay=0.2")[:2] for _ in range(3)]) == 0  # one at a time fits
    # Not exact, by Envoy's design (circuit-breaking docs): each worker thread's pool still gets one
    # connection to a chosen host past the limit, and a request waiting for a connection to open
    # counts as pending. So a burst is served by about the configured 1 + 1, at most one more per worker.
    served = 8 - _overloaded(_concurrently(client, SINGLE + "?delay=1", 8))
    assert 1 <= served <= 2 + os.cpu_count(), served


# --- retry budget ----------------------------------------------------------------------------------


def _backend_count(client: Workload) -> int:
    return json.loads(client.call(SINGLE + "__count")[2])["count"]


def _failing_burst(client: Workload, n: int) -> int:
    """Backend requests caused by n concurrent client requests that all fail with 503."""
    client.call(SINGLE + "__reset")
    results = _concurrently(client, SINGLE + "?status=503&delay=0.5", n)
    assert {s for s, _ in results} == {503}, results
    return _backend_count(client)


def test_retry_budget_caps_retries_when_every_request_fails(shared_plane, client):
    # The default route retries 503 twice; without a cap 20 failing requests would cost 60.
    overflow_before = _stat(client, "single.default.svc.cluster.local.upstream_rq_retry_overflow")
    capped = _failing_burst(client, 20)
    assert 20 <= capped <= 30, f"{capped} backend requests for 20 client requests"
    assert _stat(client, "single.default.svc.cluster.local.upstream_rq_retry_overflow") > overflow_before
    # An explicit maxRetries replaces the budget with a fixed limit, as in Istio: here, no cap at all.
    _rule(shared_plane, "single", {"connectionPool": {"http": {"maxRetries": 1000}}})
    assert _failing_burst(client, 20) == 60
