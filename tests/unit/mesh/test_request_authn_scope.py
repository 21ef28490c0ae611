"""Which RequestAuthentications a workload enforces: all that match, mesh + namespace + workload
together (unlike PeerAuthentication); root-namespace selectors select root-namespace workloads only."""

from __future__ import annotations

from dataclasses import replace

from lattice.api import Resource, validate_object
from lattice.mesh import MeshSnapshot, Workload

ROOT = "istio-system"
RATINGS = Workload.from_record(
    {
        "id": "ratings-v1-1.default",
        "name": "ratings-v1",
        "namespace": "default",
        "service": "ratings",
        "service_account": "ratings",
        "labels": {"app": "ratings", "version": "v1"},
        "address": "127.0.10.6",
        "port": 9080,
        "app_port": 30006,
        "protocol": "http",
        "outbound_port": 15001,
        "agent_port": 15020,
        "healthy": True,
    }
)
WORKLOADS = (RATINGS,)
JWKS = '{"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB"}]}'


def ra(namespace: str, name: str, labels: dict | None = None, jwks_uri: str | None = None) -> Resource:
    rule = {"issuer": f"{namespace}/{name}"} | ({"jwksUri": jwks_uri} if jwks_uri else {"jwks": JWKS})
    spec: dict = {"jwtRules": [rule]}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    return validate_object(
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def names(snapshot: MeshSnapshot, workload=RATINGS) -> list[str]:
    return [f"{r.namespace}/{r.name}" for r in snapshot.request_authentications_for(workload)]


def test_mesh_namespace_and_workload_policies_all_apply_in_order():
    policies = (
        ra(ROOT, "mesh"),
        ra("default", "ns"),
        ra("default", "mine", {"app": "ratings"}),
        ra("default", "v1", {"version": "v1"}),
    )
    assert names(MeshSnapshot("t", WORKLOADS, request_authentications=policies)) == [
        "istio-system/mesh",
        "default/ns",
        "default/mine",
        "default/v1",
    ]


def test_policies_that_do_not_select_the_workload_do_not_apply():
    policies = (
        ra("default", "other-app", {"app": "reviews"}),
        ra("default", "partial", {"app": "ratings", "version": "v2"}),
        ra("other", "other-namespace"),
        ra(ROOT, "root-selector", {"app": "ratings"}),  # selects root-namespace workloads only
    )
    assert names(MeshSnapshot("t", WORKLOADS, request_authentications=policies)) == []


def test_a_root_namespace_selector_selects_root_namespace_workloads():
    gateway = replace(RATINGS, id="ratings-v1-x.istio-system", namespace=ROOT)
    policies = (ra(ROOT, "mesh"), ra(ROOT, "mine", {"app": "ratings"}))
    assert names(MeshSnapshot("t", (gateway,), request_authentications=policies), gateway) == [
        "istio-system/mesh",
        "istio-system/mine",
    ]


def test_a_failed_jwks_fetch_is_reported_with_its_effect():
    uri = "https://keys.example/jwks.json"
    policy = ra("default", "jwt", jwks_uri=uri)
    never = MeshSnapshot("t", WORKLOADS, request_authentications=(policy,), jwks_errors={uri: "HTTP 404"})
    (problem,) = never.conflicts()
    assert problem.startswith(
        "RequestAuthentication default/jwt: jwtRules[0].jwksUri https://keys.example/jwks.json could not be "
        "fetched (HTTP 404)"
    )
    assert "rejected (401)" in problem
    stale = replace(never, jwks={uri: JWKS})
    assert "keep the keys fetched before" in stale.conflicts()[0]
    assert MeshSnapshot("t", WORKLOADS, request_authentications=(policy,), jwks={uri: JWKS}).conflicts() == []
