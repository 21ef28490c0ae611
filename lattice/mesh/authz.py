"""Which AuthorizationPolicies a workload's sidecar enforces, by Istio's rules.

Unlike PeerAuthentication and RateLimitPolicy there are no levels that override each other: every
policy that selects the workload applies, and the actions combine (CUSTOM, then DENY, then ALLOW;
see `lattice.translate.authz`). A policy selects a workload when it is in the workload's namespace
or in the root namespace, and its selector (none: every workload) matches the workload's labels.
Istio's documentation says so explicitly for AuthorizationPolicy: a selector in the root namespace
matches workloads in every namespace (PeerAuthentication's root selector does not).
"""

from __future__ import annotations

from collections.abc import Sequence

from lattice.api import Resource
from lattice.api.authorization import is_dry_run
from lattice.mesh.workload import Workload


def policies_for(policies: Sequence[Resource], workload: Workload, root_namespace: str) -> tuple[Resource, ...]:
    """The policies `workload` enforces, in the order given (callers pass them oldest first)."""
    return tuple(p for p in policies if p.namespace in (workload.namespace, root_namespace) and _selects(p, workload))


def by_action(policies: Sequence[Resource], action: str) -> list[Resource]:
    return [p for p in policies if p.spec.action == action]


def dry_run(policy: Resource) -> bool:
    """Evaluated and counted, not enforced (`istio.io/dry-run: "true"`)."""
    return is_dry_run(policy.metadata)


def _selects(policy: Resource, workload: Workload) -> bool:
    return all(workload.labels.get(k) == v for k, v in policy.spec.match_labels.items())
