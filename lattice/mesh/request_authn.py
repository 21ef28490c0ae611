"""Which RequestAuthentications a workload's sidecar enforces, and JWKS problems to report.

Unlike PeerAuthentication, nothing overrides anything: Istio combines every matching policy as if
its rules were written in one — the mesh's (no selector, in the root namespace), the namespace's
(no selector) and the workload's own (selector matching its labels, in its namespace). As for
PeerAuthentication, a policy with a selector in the root namespace selects workloads of the root
namespace only.

The keys of a `jwksUri` are fetched by the control plane (`lattice.server.jwks`) and reach the
snapshot as text per URL; a URL that could not be fetched is reported here, so `lattice status`
says why tokens of that issuer are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lattice.api import Resource
from lattice.mesh.workload import Workload


def policies_for(policies: Sequence[Resource], workload: Workload, root_namespace: str) -> tuple[Resource, ...]:
    """Every policy whose rules apply to `workload`, in the order given (oldest first)."""
    return tuple(p for p in policies if _applies(p, workload, root_namespace))


def _applies(policy: Resource, workload: Workload, root_namespace: str) -> bool:
    labels = policy.spec.match_labels
    if policy.namespace == workload.namespace:
        return all(workload.labels.get(k) == v for k, v in labels.items())
    return policy.namespace == root_namespace and not labels


def jwks_problems(policies: Sequence[Resource], jwks: Mapping[str, str], errors: Mapping[str, str]) -> list[str]:
    """One line per policy rule whose jwksUri failed its last fetch, saying what the sidecars do now."""
    out = []
    for p in policies:
        for i, rule in enumerate(p.spec.jwt_rules):
            error = errors.get(rule.jwks_uri or "")
            if error is None:
                continue
            effect = (
                "sidecars keep the keys fetched before"
                if rule.jwks_uri in jwks
                else f"every token from issuer {rule.issuer} is rejected (401) until it can be fetched"
            )
            out.append(
                f"RequestAuthentication {p.namespace}/{p.name}: jwtRules[{i}].jwksUri {rule.jwks_uri} could not be "
                f"fetched ({error}); {effect}"
            )
    return out
