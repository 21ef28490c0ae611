"""RequestAuthentication and AuthorizationPolicy together, as Istio's "authorization with JWT" task
shows: a request principal required by policy, and `when` on a JWT claim; `lattice authz check`
reads the same claims and agrees."""

from __future__ import annotations

import json

import pytest

from harness import BACKEND, Workload, http, reset_config, running, wait_for
from jwt_tokens import SigningKey, claims, jwks

pytestmark = pytest.mark.slow
ISSUER = "https://issuer.example"
KEY = SigningKey.ec("k1")

POLICIES = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  jwtRules: [{{issuer: "{ISSUER}", jwks: {json.dumps(jwks(KEY))}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice", "{ISSUER}/bob"]}}}}]
    to: [{{operation: {{paths: ["/orders/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/admin/*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admins]}}]
"""


@pytest.fixture(scope="module")
def mesh(shared_plane):
    with running(
        shared_plane,
        [Workload(shared_plane, "orders", command=BACKEND), Workload(shared_plane, "shop", command=BACKEND)],
    ) as ready:
        yield {w.service: w for w in ready}


def _call(mesh, path: str, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return http("GET", f"http://orders:9080{path}", headers=headers, proxy=mesh["shop"].outbound)[0]


def _check(plane, path: str, token: str | None) -> str:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    code, answer = plane.call(
        "POST", "/api/v1/authz/check", {"from": "shop-v1", "to": "orders", "path": path, "headers": headers}
    )
    assert code == 200, answer
    return answer["results"][0]["decision"]


def test_request_principals_and_claims(shared_plane, mesh):
    reset_config(shared_plane)
    shared_plane.apply(POLICIES)
    wait_for(shared_plane.all_synced, 10, what="the policies to reach the sidecars")
    alice, carol = KEY.sign(claims(ISSUER, subject="alice")), KEY.sign(claims(ISSUER, subject="carol"))
    admin = KEY.sign(claims(ISSUER, subject="dave", groups=["staff", "admins"]))
    cases = [
        ("/orders/1", None, 403),  # no token: authenticated as nobody, and the policy needs a principal
        ("/orders/1", alice, 200),
        ("/orders/1", carol, 403),
        ("/orders/1", "not.a.token", 401),  # an invalid token never gets to authorization
        ("/admin/x", alice, 403),  # a principal, but not in the admins group
        ("/admin/x", admin, 200),
        ("/other", admin, 403),
    ]
    statuses = [_call(mesh, path, token) for path, token, _ in cases]
    assert statuses == [expected for _, _, expected in cases], list(zip(cases, statuses, strict=True))
    # authz check reads the same claims (it does not verify signatures; the sidecar did, above).
    for path, token, expected in cases:
        if expected != 401:
            assert _check(shared_plane, path, token) == ("ALLOW" if expected == 200 else "DENY"), (path, expected)
