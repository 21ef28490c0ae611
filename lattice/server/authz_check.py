"""`lattice authz check`: the decision a destination's sidecar would make, and why.

The RBAC configs come from `translate.authz.rbac_configs`, the same function that builds what the
sidecar enforces, and are evaluated by `translate.explain` with Envoy's semantics. What cannot be
decided here is said, not guessed: a CUSTOM (external) authorizer is named, not called, and a JWT
in the request is read for its claims without checking its signature (the sidecar does that).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import authz
from lattice.translate.explain import Decision, Request, Unexplainable, decide

JWT_METADATA = "envoy.filters.http.jwt_authn"


class CheckError(ValueError):
    """The question names something the mesh does not have; the message says what to use."""


@dataclass(frozen=True)
class Question:
    source: str  # a workload id or name, a service name, a SPIFFE ID, or "anonymous"
    destination: str  # a service (name, name.namespace or FQDN) or a workload id
    method: str
    path: str
    headers: dict[str, str]
    namespace: str = "default"


def check(snapshot: MeshSnapshot, q: Question) -> dict:
    targets = _destinations(snapshot, q)
    peer, source_ip = _source(snapshot, q)
    out = []
    for w in targets:
        request = Request(
            method=q.method.upper(),
            path=q.path,
            headers=q.headers,
            host=q.headers.get("host", w.service),
            peer_uri=peer,
            source_ip=source_ip,
            destination_ip=w.address,
            destination_port=w.port,
            metadata=_jwt_metadata(q.headers),
        )
        stages = authz.rbac_configs(snapshot, w)
        try:
            decision = decide([(action, config, shadow) for action, config, shadow in stages], request)
        except Unexplainable as e:
            out.append(
                {
                    "workload": w.id,
                    "decision": "UNKNOWN",
                    "reason": f"the policy uses {e}, which authz check cannot evaluate",
                }
            )
            continue
        out.append(_report(w, decision, [a for a, _, _ in stages]))
    return {
        "source": peer or "anonymous (plaintext, no certificate)",
        "destination": q.destination,
        "request": f"{q.method.upper()} {q.path}",
        "results": out,
    }


def _report(w: Workload, d: Decision, labels: list[str]) -> dict:
    return {
        "workload": w.id,
        # EXTERNAL: a CUSTOM policy hands the request to an external authorizer, not called here.
        "decision": ("EXTERNAL" if d.external else "ALLOW") if d.allowed else "DENY",
        "status": (None if d.external else 200) if d.allowed else 403,
        "external_authorizer": d.external or None,
        "reason": d.reason,
        "dry_run": [{"action": s.action, "would_deny": s.denies, "matched": list(s.matched)} for s in d.dry_run],
        "stages": [
            {"stage": label, "action": s.action, "shadow": s.shadow, "matched": list(s.matched)}
            for label, s in zip(labels, d.stages, strict=False)
        ],
    }


def _destinations(snapshot: MeshSnapshot, q: Question) -> list[Workload]:
    by_id = snapshot.workload(q.destination)
    if by_id is not None:
        return [by_id]
    host = snapshot.resolve_host(q.destination, q.namespace)
    found = [w for w in snapshot.endpoints(host) if isinstance(w, Workload) and w.kind == "sidecar" and w.id]
    if not found:
        raise CheckError(
            f"no workload serves {q.destination!r} ({host}); give a service or a workload id from `lattice status`"
        )
    return found


def _source(snapshot: MeshSnapshot, q: Question) -> tuple[str | None, str]:
    """The caller's certificate URI and address: from a running workload when one is named."""
    s = q.source
    if s in ("anonymous", "plaintext", ""):
        return None, "127.0.0.1"
    if s.startswith("spiffe://"):
        return s, "127.0.0.1"
    if s.count("/") >= 4 and "/ns/" in s:  # Istio principal form: cluster.local/ns/x/sa/y
        return f"spiffe://{s}", "127.0.0.1"
    for w in snapshot.workloads:
        if s in (w.id, w.name) or (w.service == s and w.namespace == q.namespace):
            return snapshot.identity(w), w.address
    raise CheckError(
        f"no workload or identity {s!r}; give a workload (id or name), a service, a SPIFFE ID, or 'anonymous'"
    )


def _jwt_metadata(headers: dict[str, str]) -> dict:
    """Claims of a bearer token, keyed by issuer as the sidecar's jwt_authn filter stores them."""
    value = headers.get("authorization", "")
    if not value.lower().startswith("bearer "):
        return {}
    parts = value.split(None, 1)[1].strip().split(".")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (IndexError, ValueError):
        return {}
    if not isinstance(payload, dict) or not isinstance(payload.get("iss"), str):
        return {}
    return {JWT_METADATA: {payload["iss"]: payload}}
