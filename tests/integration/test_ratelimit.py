"""RateLimitPolicy with real sidecars: what clients observe when the destination's sidecar counts
their requests (429s, x-ratelimit-* headers, separate buckets per caller and per header value).

Limits use `per: 1m`: Envoy refills a bucket continuously (requests/per), so over a burst of a
few dozen milliseconds no token comes back and the counts are exact.
"""

from __future__ import annotations

import json

import pytest

from harness import BACKEND, Workload, drained, http, reset_config, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ratelimit")]
SERVER = "ratings"
URL = f"http://{SERVER}:9080"
HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _policy(*limits: dict, name: str = "limits") -> str:
    doc = {
        "apiVersion": "lattice.dev/v1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": SERVER}}, "limits": list(limits)},
    }
    return json.dumps(doc)


@pytest.fixture(scope="module")
def mesh(shared_plane):
    """The server and two clients with different identities (service accounts), all running BACKEND."""
    workloads = [
        Workload(shared_plane, SERVER, command=BACKEND),
        Workload(shared_plane, "client", "v1", command=BACKEND, extra=("--service-account", "client-a")),
        Workload(shared_plane, "client", "v2", command=BACKEND, extra=("--service-account", "client-b")),
    ]
    with running(shared_plane, workloads) as ready:
        yield ready


@pytest.fixture
def ctx(shared_plane, mesh):
    """(plane, server, client a, client b) with no config: every test starts from fresh buckets."""
    reset_config(shared_plane)
    drained(mesh[0])
    return (shared_plane, *mesh)


def _apply(plane, server: Workload, doc: str) -> None:
    plane.apply(doc)
    wait_for(plane.all_synced, 10, what="every proxy to hold the policy")
    drained(server)


def _burst(client: Workload, n: int, path: str = "/", headers: dict | None = None) -> list[tuple[int, dict]]:
    """n requests back to back; (status, x-ratelimit-* headers) of each, checking the app answered
    the allowed ones (a 429 comes from the sidecar, not the app)."""
    out = []
    for _ in range(n):
        status, h, _ = client.call(f"{URL}{path}", headers)
        assert status in (200, 429), (status, h)
        assert (h.get("x-served-by") == f"{SERVER}-v1") == (status == 200), h
        out.append((status, {k: h[k] for k in HEADERS if k in h}))
    return out


def _statuses(results: list[tuple[int, dict]]) -> list[int]:
    return [status for status, _ in results]


def test_n_plus_k_requests_get_exactly_k_429s_with_ratelimit_headers(ctx):
    plane, server, client, _ = ctx
    _apply(plane, server, _policy({"requests": 5, "per": "1m"}))
    results = _burst(client, 8)
    assert _statuses(results) == [200] * 5 + [429] * 3
    assert [h["x-ratelimit-remaining"] for _, h in results] == ["4", "3", "2", "1", "0", "0", "0", "0"]
    assert all(h["x-ratelimit-limit"] == "5" for _, h in results)
    # One token comes back every 60s / 5 = 12s; the refused requests are told to wait for it.
    assert all(0 < int(h["x-ratelimit-reset"]) <= 12 for status, h in results if status == 429), results


def test_burst_sets_the_bucket_size(ctx):
    plane, server, client, _ = ctx
    _apply(plane, server, _policy({"requests": 2, "per": "1m", "burst": 4}))
    assert _statuses(_burst(client, 6)) == [200] * 4 + [429] * 2


def test_each_client_identity_gets_its_own_bucket(ctx):
    plane, server, client_a, client_b = ctx
    _apply(plane, server, _policy({"requests": 3, "per": "1m", "by": {"clientIdentity": True}}))
    assert _statuses(_burst(client_a, 5)) == [200] * 3 + [429] * 2
    assert _statuses(_burst(client_b, 5)) == [200] * 3 + [429] * 2
    assert _statuses(_burst(client_a, 1)) == [429]  # a's bucket stayed empty while b spent its own


def test_plaintext_callers_share_one_bucket_per_identity_limit(ctx):
    plane, server, _, _ = ctx
    _apply(plane, server, _policy({"requests": 2, "per": "1m", "by": {"clientIdentity": True}}))
    # Straight to the inbound port without a certificate (PERMISSIVE): no identity to split on,
    # so such callers are counted together rather than escaping the limit.
    statuses = [http("GET", f"http://{server.address}:9080/")[0] for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


def test_each_header_value_gets_its_own_bucket_and_no_header_shares_one(ctx):
    plane, server, client, _ = ctx
    _apply(plane, server, _policy({"requests": 2, "per": "1m", "by": {"header": "x-user"}}))
    assert _statuses(_burst(client, 3, headers={"x-user": "alice"})) == [200, 200, 429]
    assert _statuses(_burst(client, 3, headers={"x-user": "bob"})) == [200, 200, 429]
    assert _statuses(_burst(client, 3)) == [200, 200, 429]
    assert _statuses(_burst(client, 1, headers={"x-user": "alice"})) == [429]


def test_route_scoped_limit_applies_to_its_path_only(ctx):
    plane, server, client, _ = ctx
    _apply(
        plane,
        server,
        _policy({"requests": 2, "per": "1m", "match": {"path": {"prefix": "/limited"}, "methods": ["GET"]}}),
    )
    # The query string is not part of the path: both count against /limited's bucket.
    assert _statuses(_burst(client, 2, "/limited/a?x=1") + _burst(client, 2, "/limited")) == [200, 200, 429, 429]
    others = _burst(client, 6, "/other?to=/limited")
    assert others == [(200, {})] * 6  # not limited, and no x-ratelimit-* headers where no limit applies


def test_every_matching_limit_must_have_a_token(ctx):
    plane, server, client, _ = ctx
    _apply(
        plane,
        server,
        _policy(
            {"name": "overall", "requests": 4, "per": "1m"},
            {"name": "api", "requests": 2, "per": "1m", "match": {"path": {"prefix": "/api"}}},
        ),
    )
    api = _burst(client, 3, "/api/x")
    assert _statuses(api) == [200, 200, 429]
    assert api[-1][1]["x-ratelimit-limit"] == "2"  # the headers name the limit that refused
    # /api spent two of overall's four tokens (the refused third took none from overall): two left.
    assert _statuses(_burst(client, 3, "/elsewhere")) == [200, 200, 429]


def test_deleting_the_policy_removes_the_limit(ctx):
    plane, server, client, _ = ctx
    _apply(plane, server, _policy({"requests": 1, "per": "1m"}))
    assert _statuses(_burst(client, 2)) == [200, 429]
    plane.cli("delete", "rlp", "limits")  # by short name, as a user types it
    wait_for(plane.all_synced, 10, what="every proxy to drop the policy")
    drained(server)
    assert _burst(client, 10) == [(200, {})] * 10
