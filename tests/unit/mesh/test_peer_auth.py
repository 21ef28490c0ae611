"""PeerAuthentication precedence: workload > namespace > mesh, UNSET inherits, oldest wins, PERMISSIVE by default."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from lattice.api import Resource, validate_object
from lattice.mesh import Workload
from lattice.mesh.peer_auth import describe, mtls_mode

ROOT = "istio-system"


def pa(
    namespace: str,
    name: str = "default",
    mode: str | None = None,
    labels: dict | None = None,
    ports: dict | None = None,
) -> Resource:
    spec: dict = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    if ports is not None:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return validate_object(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def workload(namespace: str = "foo", labels: dict | None = None, port: int = 9080, app_port: int = 8080) -> Workload:
    labels = {"app": "finance", "version": "v1"} if labels is None else labels
    return Workload(
        id=f"finance-v1-abc.{namespace}",
        name="finance-v1",
        namespace=namespace,
        service="finance",
        service_account="finance",
        labels=MappingProxyType(labels),
        address="127.0.0.1",
        port=port,
        app_port=app_port,
        protocol="http",
        outbound_port=15001,
        agent_port=15020,
    )


MESH_STRICT = pa(ROOT, mode="STRICT")
NS_PERMISSIVE = pa("foo", mode="PERMISSIVE")
NS_DISABLE = pa("foo", mode="DISABLE")
FINANCE_DISABLE = pa("foo", "finance", mode="DISABLE", labels={"app": "finance"})
FINANCE_UNSET = pa("foo", "finance", mode="UNSET", labels={"app": "finance"})


@pytest.mark.parametrize(
    "policies, expected",
    [
        ([], "PERMISSIVE"),
        ([MESH_STRICT], "STRICT"),
        ([MESH_STRICT, NS_PERMISSIVE], "PERMISSIVE"),
        ([MESH_STRICT, NS_PERMISSIVE, FINANCE_DISABLE], "DISABLE"),
        ([NS_PERMISSIVE, FINANCE_DISABLE, MESH_STRICT], "DISABLE"),
        ([FINANCE_DISABLE], "DISABLE"),
        ([MESH_STRICT, FINANCE_UNSET], "STRICT"),
        ([MESH_STRICT, NS_DISABLE, FINANCE_UNSET], "DISABLE"),
        ([MESH_STRICT, pa("foo")], "STRICT"),  # namespace policy with no mtls at all inherits too
        ([pa(ROOT, mode="UNSET"), pa("foo", mode="UNSET"), FINANCE_UNSET], "PERMISSIVE"),
        ([MESH_STRICT, pa("foo", "other", mode="DISABLE", labels={"app": "other"})], "STRICT"),
        ([MESH_STRICT, pa("foo", "v2", mode="DISABLE", labels={"app": "finance", "version": "v2"})], "STRICT"),
        ([MESH_STRICT, pa("foo", "v1", mode="DISABLE", labels={"app": "finance", "version": "v1"})], "DISABLE"),
        (
            [MESH_STRICT, pa("bar", mode="DISABLE"), pa("bar", "finance", mode="DISABLE", labels={"app": "finance"})],
            "STRICT",
        ),
    ],
)
def test_precedence(policies, expected):
    assert mtls_mode(policies, workload(), 9080, ROOT) == expected


def test_oldest_wins_at_each_level():
    older, newer = pa(ROOT, "a", mode="STRICT"), pa(ROOT, "b", mode="DISABLE")
    assert mtls_mode([older, newer], workload(), 9080, ROOT) == "STRICT"
    older, newer = pa("foo", "z", mode="DISABLE"), pa("foo", "a", mode="STRICT")
    assert describe([older, newer], workload(), 9080, ROOT) == ("DISABLE", "PeerAuthentication foo/z (namespace-wide)")
    older = pa("foo", "z", mode="STRICT", labels={"app": "finance"})
    newer = pa("foo", "a", mode="DISABLE", labels={"version": "v1"})
    assert describe([older, newer], workload(), 9080, ROOT) == ("STRICT", "PeerAuthentication foo/z (workload)")


def test_oldest_wins_even_when_its_mode_is_unset():
    # The winner is chosen per level first; an UNSET winner inherits upward, it does not defer to a newer sibling.
    policies = [MESH_STRICT, pa("foo", "old", mode="UNSET"), pa("foo", "new", mode="DISABLE")]
    assert mtls_mode(policies, workload(), 9080, ROOT) == "STRICT"


def test_port_level_override_by_service_port_and_by_app_port():
    by_service_port = pa("foo", "finance", mode="STRICT", labels={"app": "finance"}, ports={9080: "DISABLE"})
    assert describe([by_service_port], workload(), 9080, ROOT) == (
        "DISABLE",
        "PeerAuthentication foo/finance (workload, port 9080)",
    )
    by_app_port = pa("foo", "finance", mode="STRICT", labels={"app": "finance"}, ports={8080: "PERMISSIVE"})
    assert describe([by_app_port], workload(), 9080, ROOT) == (
        "PERMISSIVE",
        "PeerAuthentication foo/finance (workload, port 8080)",
    )
    other_port = pa("foo", "finance", mode="STRICT", labels={"app": "finance"}, ports={7070: "DISABLE"})
    assert mtls_mode([other_port], workload(), 9080, ROOT) == "STRICT"


def test_service_port_entry_beats_app_port_entry():
    both = pa("foo", "finance", labels={"app": "finance"}, ports={8080: "PERMISSIVE", 9080: "DISABLE"})
    assert mtls_mode([both], workload(), 9080, ROOT) == "DISABLE"


def test_unset_port_level_mode_inherits_the_policy_then_upward():
    own_mode = pa("foo", "finance", mode="DISABLE", labels={"app": "finance"}, ports={9080: "UNSET"})
    assert describe([MESH_STRICT, own_mode], workload(), 9080, ROOT) == (
        "DISABLE",
        "PeerAuthentication foo/finance (workload)",
    )
    no_mode = pa("foo", "finance", labels={"app": "finance"}, ports={9080: "UNSET"})
    assert describe([MESH_STRICT, no_mode], workload(), 9080, ROOT) == (
        "STRICT",
        "PeerAuthentication istio-system/default (mesh-wide)",
    )


def test_port_level_mtls_of_a_policy_that_does_not_select_the_workload_is_ignored():
    other = pa("foo", "other", mode="STRICT", labels={"app": "other"}, ports={9080: "DISABLE"})
    assert mtls_mode([MESH_STRICT, other], workload(), 9080, ROOT) == "STRICT"


def test_root_namespace_is_configurable():
    policies = [pa(ROOT, mode="STRICT"), pa("mesh-config", mode="DISABLE")]
    assert mtls_mode(policies, workload(), 9080, ROOT) == "STRICT"
    assert describe(policies, workload(), 9080, "mesh-config") == (
        "DISABLE",
        "PeerAuthentication mesh-config/default (mesh-wide)",
    )


def test_in_the_root_namespace_a_selector_less_policy_is_mesh_wide():
    w = workload(namespace=ROOT)
    assert describe([MESH_STRICT], w, 9080, ROOT) == ("STRICT", "PeerAuthentication istio-system/default (mesh-wide)")


def test_selector_policies_in_the_root_namespace_select_only_root_namespace_workloads():
    selecting = pa(ROOT, "finance", mode="DISABLE", labels={"app": "finance"})
    assert mtls_mode([MESH_STRICT, selecting], workload(namespace=ROOT), 9080, ROOT) == "DISABLE"
    assert mtls_mode([MESH_STRICT, selecting], workload(), 9080, ROOT) == "STRICT"


def test_empty_selector_is_namespace_wide():
    assert describe([MESH_STRICT, pa("foo", mode="DISABLE", labels={})], workload(), 9080, ROOT) == (
        "DISABLE",
        "PeerAuthentication foo/default (namespace-wide)",
    )


def test_describe_names_the_deciding_policy():
    assert describe([], workload(), 9080, ROOT) == ("PERMISSIVE", "default (no PeerAuthentication)")
    assert describe([pa(ROOT, mode="UNSET")], workload(), 9080, ROOT) == (
        "PERMISSIVE",
        "default (no PeerAuthentication sets a mode)",
    )
    assert describe([MESH_STRICT], workload(), 9080, ROOT) == (
        "STRICT",
        "PeerAuthentication istio-system/default (mesh-wide)",
    )
    assert describe([MESH_STRICT, NS_PERMISSIVE], workload(), 9080, ROOT) == (
        "PERMISSIVE",
        "PeerAuthentication foo/default (namespace-wide)",
    )
    assert describe([MESH_STRICT, NS_PERMISSIVE, FINANCE_DISABLE], workload(), 9080, ROOT) == (
        "DISABLE",
        "PeerAuthentication foo/finance (workload)",
    )
    assert describe([MESH_STRICT, FINANCE_UNSET], workload(), 9080, ROOT) == (
        "STRICT",
        "PeerAuthentication istio-system/default (mesh-wide)",
    )
