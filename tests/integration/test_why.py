"""`lattice why <request-id>` against real sidecars: each way a request fails in a mesh, caused for
real, and explained from the records of the sidecars it crossed.

One control plane (REGISTRY_ONLY, so an unknown host is blocked) and four workloads serve the
whole module; each test applies only the config its failure needs. Requests carry an
`x-request-id` of the test's choosing (sidecars keep the one an app sends, as Envoy does for
requests it does not treat as external), which is the handle `lattice why` takes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import BACKEND, ControlPlane, Workload, child_pid, drained, reset_config, running, wait_for
from jwt_tokens import SigningKey, claims, jwks

from lattice.agent.records import request_key

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("why")]
RESTARTING = [sys.executable, str(Path(__file__).parent.parent / "apps" / "restarting.py")]
URL = "http://backend:9080/"
ISSUER = "https://issuer.example"
KEY = SigningKey.ec("why")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("why") / "home", "--outbound-traffic-policy", "REGISTRY_ONLY").start()
    try:
        workloads = [
            Workload(plane, "client", command=BACKEND),
            Workload(plane, "backend", "v1", command=BACKEND),
            Workload(plane, "restarting", command=RESTARTING),
        ]
        with running(plane, workloads) as ready:
            yield plane, *ready
    finally:
        plane.stop()


@pytest.fixture
def ctx(mesh):
    plane, _, backend, _ = mesh
    reset_config(plane)
    drained(backend)
    return mesh


def _apply(plane, server: Workload, *docs: dict) -> None:
    plane.apply("\n---\n".join(json.dumps(d) for d in docs))
    wait_for(plane.all_synced, 10, what="every proxy to hold the config")
    drained(server)


def _doc(kind: str, name: str, spec: dict, group: str = "networking.istio.io/v1") -> dict:
    return {"apiVersion": group, "kind": kind, "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def _call(client: Workload, url: str = URL, headers: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    """A request with an id of our own: (status the app got, its id)."""
    request_id = str(uuid.uuid4())
    status, _, _ = client.call(url, {"x-request-id": request_id} | (headers or {}), timeout=timeout)
    return status, request_id


def _why(plane, request_id: str, what: str) -> dict:
    """`lattice why <id> -o json`, once the sidecars' records of the request have arrived (Envoy
    streams its access log every half second) and show `what` was decided."""

    def answer():
        out = json.loads(plane.cli("why", request_id, "-o", "json").stdout)
        return out if out["found"] and out["cause"] and _complete(out["hops"]) else None

    return wait_for(answer, 10, what=f"the sidecars' records of request {request_id} ({what})")


def _complete(hops: list[dict]) -> bool:
    """Both sidecars' records are in, as far as the request got: each streams its own, so the
    callee's may arrive before the caller's or after it. The caller always has one; the callee has
    one when the caller's proxy handed the request on (an upstream, and no failure of its own)."""
    callers = [h for h in hops if h["reporter"] == "source"]
    if not callers:
        return False
    handed_on = any(h["flags"] in ("", "-") and h.get("upstream_host") not in (None, "", "-") for h in callers)
    return not handed_on or any(h["reporter"] == "destination" for h in hops)


def _text(plane, request_id: str) -> str:
    return plane.cli("why", request_id).stdout


def _decided(answer: dict) -> set[tuple[str, str]]:
    return {(d["kind"], d["name"]) for d in answer["cause"]["decided_by"]}


def test_no_healthy_upstream_names_the_empty_subset(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "DestinationRule", "backend", {"host": "backend", "subsets": [{"name": "v9", "labels": {"version": "v9"}}]}
        ),
        _doc(
            "VirtualService",
            "backend",
            {"hosts": ["backend"], "http": [{"route": [{"destination": {"host": "backend", "subset": "v9"}}]}]},
        ),
    )
    status, rid = _call(client)
    assert status == 503
    answer = _why(plane, rid, "no healthy upstream")
    assert answer["cause"]["flag"] == "UH"
    assert {("DestinationRule", "backend"), ("VirtualService", "backend")} <= _decided(answer), json.dumps(answer)
    assert "subset v9" in " ".join(answer["cause"]["reasons"]) and "0 of" in " ".join(answer["cause"]["reasons"])
    text = _text(plane, rid)
    assert "no healthy upstream" in text and "what to change" in text


def test_connection_refused_by_the_app_is_told_from_the_callee_side(ctx):
    plane, client, _, restarting = ctx
    app = child_pid(restarting, "restarting.py")
    port = restarting.info["app_port"]
    for _ in range(5):  # the health probe (every 0.5 s) may notice first; then the caller gets UH: again
        os.kill(app, signal.SIGUSR1)
        wait_for(lambda: not _listening(port), 5, what="the app to stop listening")
        status, rid = _call(client, "http://restarting:9080/")
        os.kill(app, signal.SIGUSR2)
        wait_for(lambda: _listening(port), 5, what="the app to listen again")
        wait_for(lambda: plane.proxy(restarting.id)["healthy"], 10, what="the app to be healthy again")
        answer = _why(plane, rid, "refused connection")
        if answer["cause"]["flag"] == "UF":
            break
    assert status == 503
    assert answer["cause"]["flag"] == "UF", answer
    assert "refused the connection" in answer["cause"]["summary"]
    assert "onnection refused" in " ".join(answer["cause"]["reasons"])
    assert any(h["reporter"] == "destination" and "UF" in h["flags"] for h in answer["hops"])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_route_timeout_names_the_virtual_service(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "VirtualService",
            "backend",
            {
                "hosts": ["backend"],
                "http": [{"name": "slow", "timeout": "0.3s", "route": [{"destination": {"host": "backend"}}]}],
            },
        ),
    )
    status, rid = _call(client, URL + "?delay=2")
    assert status == 504
    answer = _why(plane, rid, "route timeout")
    assert answer["cause"]["flag"] == "UT"
    assert ("VirtualService", "backend") in _decided(answer)
    assert "0.3s" in " ".join(answer["cause"]["reasons"])


def test_retries_exhausted_counts_the_attempts(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "VirtualService",
            "backend",
            {
                "hosts": ["backend"],
                "http": [
                    {"retries": {"attempts": 2, "retryOn": "5xx"}, "route": [{"destination": {"host": "backend"}}]}
                ],
            },
        ),
    )
    status, rid = _call(client, URL + "?status=503")
    assert status == 503
    answer = _why(plane, rid, "retries exhausted")
    assert answer["cause"]["flag"] == "URX", answer["cause"]
    assert "after 3 attempts" in answer["cause"]["summary"]
    assert ("VirtualService", "backend") in _decided(answer)
    assert "attempts=2" in " ".join(answer["cause"]["reasons"])


def test_circuit_breaker_overflow_names_the_destination_rule(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "DestinationRule",
            "backend",
            {"host": "backend", "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 1}}}},
        ),
    )
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _call(client, URL + "?delay=1", timeout=15), range(4)))
    refused = [rid for status, rid in results if status == 503]
    assert refused, results
    answer = _why(plane, refused[0], "circuit breaker")
    assert answer["cause"]["flag"] == "UO"
    assert ("DestinationRule", "backend") in _decided(answer)
    assert "circuit breaker" in answer["cause"]["summary"]


def test_rate_limit_names_the_rate_limit_policy(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "RateLimitPolicy",
            "backend-limit",
            {"selector": {"matchLabels": {"app": "backend"}}, "limits": [{"requests": 1, "per": "1m"}]},
            "lattice.dev/v1",
        ),
    )
    statuses = [_call(client) for _ in range(3)]
    limited = [rid for status, rid in statuses if status == 429]
    assert limited, statuses
    answer = _why(plane, limited[0], "rate limit")
    assert answer["cause"]["flag"] == "RL"
    assert _decided(answer) == {("RateLimitPolicy", "backend-limit")}


def test_authorization_deny_names_the_policy_and_rule(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "AuthorizationPolicy",
            "no-admin",
            {
                "selector": {"matchLabels": {"app": "backend"}},
                "action": "DENY",
                "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}],
            },
            "security.istio.io/v1",
        ),
    )
    status, rid = _call(client, URL + "admin")
    assert status == 403
    answer = _why(plane, rid, "authorization deny")
    assert _decided(answer) == {("AuthorizationPolicy", "no-admin")}
    assert "rule 0" in answer["cause"]["summary"]
    assert "AuthorizationPolicy default/no-admin" in _text(plane, rid)


def test_jwt_refused_says_why_the_token_failed(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "RequestAuthentication",
            "jwt",
            {"selector": {"matchLabels": {"app": "backend"}}, "jwtRules": [{"issuer": ISSUER, "jwks": jwks(KEY)}]},
            "security.istio.io/v1",
        ),
    )
    expired = KEY.sign(claims(ISSUER, ttl=-120))
    status, rid = _call(client, headers={"Authorization": f"Bearer {expired}"})
    assert status == 401
    answer = _why(plane, rid, "JWT refused")
    assert _decided(answer) == {("RequestAuthentication", "jwt")}
    assert "expired" in answer["cause"]["summary"].lower()


def test_no_route_for_the_path_names_the_virtual_service(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "VirtualService",
            "backend",
            {
                "hosts": ["backend"],
                "http": [{"match": [{"uri": {"prefix": "/only"}}], "route": [{"destination": {"host": "backend"}}]}],
            },
        ),
    )
    status, rid = _call(client, URL + "elsewhere")
    assert status == 404
    answer = _why(plane, rid, "no route")
    assert answer["cause"]["flag"] == "NR"
    assert ("VirtualService", "backend") in _decided(answer)


def test_registry_only_blocks_an_unknown_host(ctx):
    plane, client, _, _ = ctx
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        status, rid = _call(client, f"http://127.0.0.1:{port}/")
    assert status == 502
    answer = _why(plane, rid, "REGISTRY_ONLY")
    assert "REGISTRY_ONLY" in answer["cause"]["summary"]
    assert "ServiceEntry" in " ".join(answer["cause"]["fixes"])


def test_mtls_mode_mismatch_names_both_policies(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "PeerAuthentication",
            "strict",
            {"selector": {"matchLabels": {"app": "backend"}}, "mtls": {"mode": "STRICT"}},
            "security.istio.io/v1",
        ),
        _doc("DestinationRule", "backend", {"host": "backend", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    )
    status, rid = _call(client)
    assert status == 503
    answer = _why(plane, rid, "mTLS mismatch")
    assert "mTLS mode mismatch" in answer["cause"]["summary"], answer["cause"]
    assert {("DestinationRule", "backend"), ("PeerAuthentication", "strict")} <= _decided(answer)


def test_failures_are_listed_with_their_ids(ctx):
    plane, client, backend, _ = ctx
    status, rid = _call(client, URL + "?status=500")
    assert status == 500

    def listed() -> set[str]:
        items = json.loads(plane.cli("why", "-o", "json").stdout)["items"]
        return {r["proxy"] for r in items if request_key(r["request_id"]) == request_key(rid)}

    # Each sidecar streams its records on its own (every half second): wait for both sides' record.
    wait_for(lambda: listed() == {"client-v1", "backend-v1"}, 10, what="both sidecars to list the failure")
    answer = _why(plane, rid, "the app's own 500")
    assert "answered 500 itself" in answer["cause"]["summary"]


def test_stat_counts_what_callers_saw_fail_before_it_arrived(ctx):
    plane, client, backend, _ = ctx
    _apply(
        plane,
        backend,
        _doc(
            "VirtualService",
            "backend",
            {
                "hosts": ["backend"],
                "http": [
                    {
                        "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 100}}},
                        "route": [{"destination": {"host": "backend"}}],
                    }
                ],
            },
        ),
    )
    assert [_call(client)[0] for _ in range(4)] == [503] * 4

    def row():
        (found,) = json.loads(plane.cli("stat", "backend", "--by", "service", "-w", "30s", "-o", "json").stdout)[
            "items"
        ]
        return found if found["client"]["requests"] >= 4 else None

    found = wait_for(row, 10, what="the callers' failures to be counted")

    def failed(view: dict) -> int:
        return round(view["requests"] * (1 - view["success_rate"])) if view["requests"] else 0

    # The caller saw the four fail; none of them reached backend's sidecar (earlier tests' traffic
    # may share the window, seen alike by both sides).
    assert failed(found["client"]) - failed(found) >= 4
    assert "CLIENT_SUCCESS" in plane.cli("stat", "backend", "--by", "service").stdout
