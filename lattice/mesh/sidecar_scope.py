"""Which Istio `Sidecar` applies to a proxy, in Istio's precedence.

A Sidecar in the workload's namespace whose `workloadSelector` matches its labels; else the one
in its namespace without a selector; else the one in the root namespace without a selector. Within
a level the oldest wins (callers pass them oldest first), as Istio does when several conflict.
Gateways take none: a Sidecar shapes sidecars' outbound config only.
"""

from __future__ import annotations

from typing import Sequence

from lattice.api import Resource
from lattice.mesh.workload import Workload


def sidecar_for(sidecars: Sequence[Resource], proxy: Workload, root_namespace: str) -> Resource | None:
    if not sidecars or proxy.kind == "gateway":
        return None
    own = [s for s in sidecars if s.namespace == proxy.namespace]
    for s in own:
        labels = s.spec.match_labels
        if labels and all(proxy.labels.get(k) == v for k, v in labels.items()):
            return s
    for s in own:
        if not s.spec.match_labels:
            return s
    return next((s for s in sidecars if s.namespace == root_namespace and not s.spec.match_labels), None)
