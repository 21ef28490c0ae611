"""Which mTLS mode a workload accepts on a port, by Istio's PeerAuthentication rules.

Three levels, most specific first: the workload's own policy (selector matching its labels, in its
namespace), its namespace's policy (no selector), the mesh's policy (no selector, in the root
namespace). A level whose mode is UNSET inherits from the next one up; with nothing set, Istio's
default is PERMISSIVE. Several policies at one level: the oldest wins, and callers pass policies
oldest first. Like Istio, a policy with a selector in the root namespace selects workloads of the
root namespace only; for every other namespace the root namespace holds mesh-wide policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from lattice.api import Resource
from lattice.mesh.workload import Workload

DEFAULT_MODE = "PERMISSIVE"


def mtls_mode(policies: Sequence[Resource], workload: Workload, port: int, root_namespace: str) -> str:
    """The mode, STRICT, PERMISSIVE or DISABLE, for traffic arriving at `workload` on `port`."""
    return describe(policies, workload, port, root_namespace)[0]


def describe(policies: Sequence[Resource], workload: Workload, port: int, root_namespace: str) -> tuple[str, str]:
    """The mode and which policy decided it, e.g. ("STRICT", "PeerAuthentication istio-system/default (mesh-wide)")."""
    levels = _levels(policies, workload, root_namespace)
    for policy, scope in levels:
        for mode, where in _modes(policy, scope, workload, port):
            if mode != "UNSET":
                return mode, f"PeerAuthentication {policy.namespace}/{policy.name} ({where})"
    return DEFAULT_MODE, "default (no PeerAuthentication sets a mode)" if levels else "default (no PeerAuthentication)"


def _levels(policies: Sequence[Resource], workload: Workload, root_namespace: str) -> list[tuple[Resource, str]]:
    own = [p for p in policies if p.namespace == workload.namespace]
    in_root = workload.namespace == root_namespace
    candidates = (
        (_first(p for p in own if _selects(p, workload)), "workload"),
        (None if in_root else _first(p for p in own if not p.spec.match_labels), "namespace-wide"),
        (_first(p for p in policies if p.namespace == root_namespace and not p.spec.match_labels), "mesh-wide"),
    )
    return [(p, scope) for p, scope in candidates if p is not None]


def _modes(policy: Resource, scope: str, workload: Workload, port: int) -> Iterator[tuple[str, str]]:
    """The policy's modes for this port, most specific first: its port-level entry, then its own."""
    if scope == "workload":
        # Istio keys portLevelMtls by the container port; ours is `app_port`, behind the service port.
        by_port = policy.spec.port_level_mtls
        keys = [port, workload.app_port] if port == workload.port else [port]
        key = next((k for k in keys if k in by_port), None)
        if key is not None:
            yield by_port[key].mode, f"workload, port {key}"
    yield (policy.spec.mtls.mode if policy.spec.mtls else "UNSET"), scope


def _selects(policy: Resource, workload: Workload) -> bool:
    labels = policy.spec.match_labels
    return bool(labels) and all(workload.labels.get(k) == v for k, v in labels.items())


def _first(policies: Iterable[Resource]) -> Resource | None:
    return next(iter(policies), None)
