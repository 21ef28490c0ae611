"""`lattice authz check` gives the decision the sidecar enforces: both are asked about the same
requests (callers × methods × paths × headers) and must agree on every one."""

from __future__ import annotations

import itertools
import json

import pytest

from harness import BACKEND, Workload, http, reset_config, running, wait_for

pytestmark = pytest.mark.slow

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: vault}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers}
spec:
  selector: {matchLabels: {app: vault}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/reader"]}}]
    to: [{operation: {methods: [GET], paths: ["/public/*", "/docs"]}}]
  - from: [{source: {principals: ["cluster.local/ns/default/sa/writer"]}}]
    to: [{operation: {methods: [GET, POST], notPaths: ["/secret*"]}}]
    when: [{key: "request.headers[x-team]", values: [blue, green]}]
"""

CALLERS = ("reader", "writer")
METHODS = ("GET", "POST")
PATHS = ("/public/a", "/docs", "/admin", "/admin/x", "/secret/k", "/other")
TEAMS = (None, "blue", "red")


@pytest.fixture(scope="module")
def mesh(shared_plane):
    workloads = [
        Workload(shared_plane, "vault", command=BACKEND),
        Workload(shared_plane, "reader", command=BACKEND),
        Workload(shared_plane, "writer", command=BACKEND),
    ]
    with running(shared_plane, workloads) as ready:
        yield {w.service: w for w in ready}


def test_check_agrees_with_the_sidecar_on_every_request(shared_plane, mesh):
    reset_config(shared_plane)
    shared_plane.apply(POLICIES)
    wait_for(shared_plane.all_synced, 10, what="the policies to reach the sidecars")
    disagreements, seen = [], set()
    for caller, method, path, team in itertools.product(CALLERS, METHODS, PATHS, TEAMS):
        headers = {"x-team": team} if team else {}
        status, _, body = http(
            method,
            f"http://vault:9080{path}",
            body=b"" if method == "POST" else None,
            headers=headers,
            proxy=mesh[caller].outbound,
        )
        code, answer = shared_plane.call(
            "POST",
            "/api/v1/authz/check",
            {"from": f"{caller}-v1", "to": "vault", "method": method, "path": path, "headers": headers},
        )
        assert code == 200, answer
        (result,) = answer["results"]
        predicted = 200 if result["decision"] == "ALLOW" else 403
        seen.add(status)
        if status != predicted:
            disagreements.append(
                f"{caller} {method} {path} x-team={team}: sidecar {status}, check {result['decision']} "
                f"({result['reason']})"
            )
        if status == 403:
            assert body == b"RBAC: access denied", body
    assert not disagreements, "\n".join(disagreements)
    assert seen == {200, 403}  # the matrix exercises both outcomes


def test_check_names_the_policy_and_rule(shared_plane, mesh):
    reset_config(shared_plane)
    shared_plane.apply(POLICIES)
    wait_for(shared_plane.all_synced, 10, what="the policies to reach the sidecars")
    result = shared_plane.cli(
        "authz", "check", "--from", "reader-v1", "--to", "vault", "GET", "/admin", "-o", "json", check=False
    )
    assert result.returncode == 1
    (verdict,) = json.loads(result.stdout)["results"]
    assert verdict["decision"] == "DENY" and verdict["reason"] == "denied by ns[default]-policy[no-admin]-rule[0]"
    result = shared_plane.cli(
        "authz", "check", "--from", "writer", "--to", "vault", "POST", "/orders", "-H", "x-team: blue"
    )
    assert "ALLOW" in result.stdout and "ns[default]-policy[readers]-rule[1]" in result.stdout
    result = shared_plane.cli("authz", "check", "--to", "vault", "/docs", check=False)
    assert result.returncode == 1 and "none of their rules matched" in result.stdout
