"""Which RateLimitPolicies a workload's sidecar enforces.

Three levels, as PeerAuthentication has: the workload's own policies (selector matching its labels,
in its namespace), its namespace's (no selector), the mesh's (no selector, in the root namespace).
The most specific level that has any policy wins outright: a workload-level policy replaces the
namespace and mesh defaults instead of stacking on them, so a team can loosen a default for one
workload (and repeats a default it wants to keep). Within the winning level every policy applies,
oldest first: a request must find a token in every limit that matches it. Like Istio, a policy
with a selector in the root namespace selects workloads of the root namespace only.
"""

from __future__ import annotations

from collections.abc import Sequence

from lattice.api import Resource
from lattice.mesh.workload import Workload


def policies_for(policies: Sequence[Resource], workload: Workload, root_namespace: str) -> tuple[Resource, ...]:
    """The policies whose limits apply to `workload`, oldest first (callers pass them so)."""
    own = [p for p in policies if p.namespace == workload.namespace]
    levels = (
        [p for p in own if _selects(p, workload)],
        [] if workload.namespace == root_namespace else [p for p in own if not p.spec.match_labels],
        [p for p in policies if p.namespace == root_namespace and not p.spec.match_labels],
    )
    return next((tuple(level) for level in levels if level), ())


def _selects(policy: Resource, workload: Workload) -> bool:
    labels = policy.spec.match_labels
    return bool(labels) and all(workload.labels.get(k) == v for k, v in labels.items())
