"""`lattice why <request-id>`: what happened to one request, in plain words, and which config decided it.

Every sidecar keeps its own records of requests that went wrong (agent/records.py; all requests
while tapped). The control plane asks every agent at once for the request's records (`gather`),
orders them as the request travelled (the caller's sidecar first, then the callee's), and
`explain` reads them with the mesh snapshot in hand: the route and rule matched, the cluster and
endpoint tried, the attempts, Envoy's response flag translated, the policy that refused, and
what to change. `explain` is pure: records and snapshot in, an answer out.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from lattice.server.agent_port import bounded_json, check_records
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.peer_auth import describe as describe_mtls

TIMEOUT = 2.0
# Envoy's response flags, as its access log documentation explains them, in a user's words.
FLAG_MEANINGS = {
    "UH": "no healthy upstream: the cluster had no healthy endpoint to send the request to",
    "UF": "upstream connection failure: connecting to the endpoint failed",
    "UO": "upstream overflow: a circuit breaker (connection pool limit) was full, so the request was refused "
    "without being sent",
    "NR": "no route: no route in the route table matched the request's host and path",
    "URX": "retry limit exceeded: every attempt failed and the retry budget was spent",
    "UT": "upstream request timeout: the route's timeout ran out before the answer came",
    "RL": "rate limited: a rate limit refused the request",
    "UAEX": "unauthorized by the external authorizer (CUSTOM AuthorizationPolicy)",
    "DC": "downstream connection termination: the caller closed the connection before the answer",
    "NC": "no cluster: the route named a cluster the proxy does not have",
    "UC": "upstream connection termination: the endpoint closed the connection",
    "UR": "upstream remote reset: the endpoint reset the stream",
    "LR": "local reset: this proxy reset the stream",
    "LH": "the local health check failed",
    "DI": "a delay was injected (VirtualService fault)",
    "FI": "a fault was injected (VirtualService fault abort)",
    "RLSE": "the rate limit service could not be asked",
    "SI": "stream idle timeout",
    "IH": "invalid x-envoy-* request headers",
    "DPE": "the caller spoke malformed HTTP",
    "UPE": "the endpoint spoke malformed HTTP",
    "UMSDR": "the upstream stream reached its maximum duration",
    "DT": "the request's overall duration limit was reached",
    "OM": "the proxy's overload manager shed the request",
    "DF": "DNS resolution of the endpoint failed",
    "DR": "the caller reset the stream",
}


async def gather(session: aiohttp.ClientSession, workloads: tuple[Workload, ...], request_id: str):
    """Every agent's records of `request_id` (each tagged with the proxy that holds it), and the
    workloads whose agents did not answer."""

    async def one(w: Workload):
        url = f"http://{w.address}:{w.agent_port}/lattice/v1/requests"
        try:
            async with session.get(
                url, params={"id": request_id}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as response:
                body = check_records(await bounded_json(response)) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):  # AgentAnswerError too: counted as silent
            return w, None
        return w, [r | {"proxy": w.name, "proxy_id": w.id} for r in body["records"]] if body else []

    answers = await asyncio.gather(*(one(w) for w in workloads))
    records = [r for _, found in answers if found for r in found]
    return records, [w.name for w, found in answers if found is None]


@dataclass
class Cause:
    summary: str  # one line: what went wrong
    reasons: list[str] = field(default_factory=list)  # why, naming the config that decided it
    fixes: list[str] = field(default_factory=list)  # what to change
    decided_by: list[dict] = field(default_factory=list)  # {kind, namespace, name}
    flag: str = ""


def explain(request_id: str, records: list[dict], snapshot: MeshSnapshot) -> dict:
    """The request's hops in travel order, each told in words, and the cause of its fate."""
    hops = sorted(records, key=lambda r: (r["time"], r["reporter"] != "source"))
    cause = _cause(hops, snapshot) if hops else None
    return {
        "request_id": request_id,
        "found": bool(hops),
        "hops": [_hop(h) | {"story": _story(h)} for h in hops],
        "outcome": _outcome(hops),
        "cause": None
        if cause is None
        else {
            "summary": cause.summary,
            "flag": cause.flag if cause.flag != "app" else "",
            "flag_meaning": FLAG_MEANINGS.get(cause.flag, ""),
            "reasons": cause.reasons,
            "fixes": cause.fixes,
            "decided_by": cause.decided_by,
        },
    }


def _hop(r: dict) -> dict:
    keys = (
        "proxy",
        "reporter",
        "time",
        "method",
        "authority",
        "path",
        "status",
        "flags",
        "route",
        "cluster",
        "upstream_host",
        "attempts",
        "details",
        "transport_failure",
        "duration_ms",
        "mtls",
    )
    return {k: r.get(k) for k in keys} | {
        "source": r["source"]["workload"] if r["source"]["workload"] != "unknown" else r["source"]["principal"],
        "destination": r["destination"]["workload"],
    }


def _outcome(hops: list[dict]) -> str:
    if not hops:
        return "unknown"
    first = hops[0]
    return f"{first['status'] or 'no response'}" + (f" ({first['flags']})" if first["flags"] != "-" else "")


def _story(r: dict) -> str:
    side = "caller's sidecar" if r["reporter"] == "source" else "callee's sidecar"
    words = [f"{r['proxy']} ({side}): {r['method']} {r['authority']}{r['path']} -> {r['status'] or 'no response'}"]
    if r.get("route"):
        words.append(f"route {r['route']}")
    if r.get("cluster"):
        words.append(f"cluster {r['cluster']}")
    if r.get("upstream_host"):
        words.append(f"endpoint {r['upstream_host']}")
    if r.get("attempts", 0) > 1:
        words.append(f"{r['attempts']} attempts ({r['attempts'] - 1} retries)")
    if r["flags"] != "-":
        words.append(f"flags {r['flags']}")
    if r.get("details") and r["details"] != "via_upstream":
        words.append(f"details {r['details']}")
    if r.get("transport_failure"):
        words.append(f"connection failure: {r['transport_failure']}")
    return "; ".join(words)


# Causes that are the consequence of another (a caller that gave up, retries of a failure whose
# own cause is further along): believed only when no hop has a cause of its own.
_CONSEQUENCES = {"URX", "DC", "DR", "app"}


def _cause(hops: list[dict], snapshot: MeshSnapshot) -> Cause | None:
    """The hop that decided the request's fate: the first (in travel order) with a cause of its own."""
    found = [c for c in (_hop_cause(hop, hops, snapshot) for hop in hops) if c is not None]
    chosen = next((c for c in found if c.flag not in _CONSEQUENCES), None) or next(iter(found), None)
    retried = next((h for h in hops if h["reporter"] == "source" and (h.get("attempts") or 0) > 1), None)
    if chosen is not None and chosen.flag != "URX" and retried is not None:
        chosen.reasons.append(
            f"{retried['proxy']}'s sidecar tried {retried['attempts']} times (retries), each failing the same way"
        )
    return chosen


def _hop_cause(hop: dict, hops: list[dict], snapshot: MeshSnapshot) -> Cause | None:
    flags = set(hop["flags"].split(",")) - {"-"}
    details = hop.get("details") or ""
    inbound = hop["reporter"] == "destination"
    for test, reader in _READERS:
        if test(hop, flags, details):
            return reader(hop, flags, details, hops, snapshot)
    if inbound and hop["status"] >= 500:
        return Cause(
            f"{hop['destination']} answered {hop['status']} itself",
            [f"the app behind {hop['proxy']}'s sidecar returned {hop['status']}; the mesh passed it on"],
            [f"look at {hop['destination']}'s own logs for this request (x-request-id {hop.get('request_id', '')})"],
            flag="app",
        )
    if inbound and hop["status"] >= 400:
        return Cause(
            f"{hop['destination']} answered {hop['status']}",
            [f"the app behind {hop['proxy']}'s sidecar refused the request itself; no mesh policy did"],
            flag="app",
        )
    return None


# --- readers: one per kind of cause ------------------------------------------------------------


def _ref(resource) -> dict:
    return {"kind": resource.kind, "namespace": resource.namespace, "name": resource.name}


def _name(resource) -> str:
    return f"{resource.kind} {resource.namespace}/{resource.name}"


def _workload(snapshot: MeshSnapshot, hop: dict) -> Workload | None:
    return snapshot.workload(hop.get("proxy_id", "")) or next(
        (w for w in snapshot.workloads if w.name == hop["proxy"]), None
    )


def _host(cluster: str) -> tuple[str, str, str]:
    """(port, subset, host) of an outbound cluster name."""
    parts = cluster.split("|")
    return (parts[1], parts[2], parts[3]) if len(parts) == 4 else ("", "", cluster)


def _route_rule(snapshot: MeshSnapshot, route: str):
    """The VirtualService (and its http rule) a route name points at: `<ns>/<name>#<index>`,
    or a rule's own `name` (looked up in every VirtualService)."""
    m = re.fullmatch(r"([^/]+)/([^#]+)#(\d+)(?:\..*)?", route or "")
    for vs in snapshot.virtual_services:
        rules = getattr(vs.spec, "http", None) or []
        if m and (vs.namespace, vs.name) == (m.group(1), m.group(2)) and int(m.group(3)) < len(rules):
            return vs, rules[int(m.group(3))]
        for rule in rules:
            if route and getattr(rule, "name", None) and route.split(".")[0] == rule.name:
                return vs, rule
    return None, None


def _rbac(hop, flags, details, hops, snapshot) -> Cause:
    inside = details[details.index("[") + 1 : details.rindex("]")] if "[" in details else ""
    proxy = _workload(snapshot, hop)
    m = re.fullmatch(r"ns\[([^\]]*)\]-policy\[([^\]]*)\]-rule\[(\d+)\]", inside)
    caller = hop["source"]
    if m:
        namespace, name, rule = m.group(1), m.group(2), m.group(3)
        policy = next((p for p in snapshot.authorization_policies if (p.namespace, p.name) == (namespace, name)), None)
        action = getattr(policy.spec, "action", "DENY") if policy else "DENY"
        return Cause(
            f"denied by AuthorizationPolicy {namespace}/{name} (rule {rule}) at {hop['proxy']}",
            [
                f"{hop['proxy']}'s sidecar answered 403: its {action} policy {namespace}/{name}, rule {rule}, "
                f"matched the request from {caller}"
            ],
            [
                f"if {caller} should be let in, change rule {rule} of AuthorizationPolicy {namespace}/{name} "
                "so it no longer matches this request, "
                f"or check it first with `lattice authz check`"
            ],
            [{"kind": "AuthorizationPolicy", "namespace": namespace, "name": name}],
        )
    allows = (
        [p for p in snapshot.authorization_policies_for(proxy) if getattr(p.spec, "action", "ALLOW") == "ALLOW"]
        if proxy
        else []
    )
    names = ", ".join(f"{p.namespace}/{p.name}" for p in allows) or "(none found now)"
    return Cause(
        f"denied at {hop['proxy']}: no ALLOW AuthorizationPolicy matched",
        [
            f"{hop['proxy']}'s sidecar has ALLOW policies ({names}); when there is any, a request none of "
            "them matches is denied (403)"
        ],
        [f"add a rule allowing {caller} to one of: {names} (try it with `lattice authz check`)"],
        [_ref(p) for p in allows],
    )


def _jwt(hop, flags, details, hops, snapshot) -> Cause:
    reason = details[details.find("{") + 1 : details.rfind("}")] if "{" in details else details
    proxy = _workload(snapshot, hop)
    policies = list(snapshot.request_authentications_for(proxy)) if proxy else []
    names = ", ".join(f"{p.namespace}/{p.name}" for p in policies) or "(none found now)"
    return Cause(
        f"JWT refused at {hop['proxy']}: {reason.replace('_', ' ')}",
        [
            f"{hop['proxy']}'s sidecar checks JWTs per RequestAuthentication {names}; the request's token "
            f"failed: {reason.replace('_', ' ')} (401)"
        ],
        [
            "send a token the RequestAuthentication's issuer signed, unexpired, with the audience it expects; "
            "or fix the RequestAuthentication's issuer/jwksUri if the token is right"
        ],
        [_ref(p) for p in policies],
    )


def _rate_limited(hop, flags, details, hops, snapshot) -> Cause:
    proxy = _workload(snapshot, hop)
    policies = list(snapshot.rate_limit_policies_for(proxy)) if proxy else []
    names = ", ".join(f"{p.namespace}/{p.name}" for p in policies) or "(none found now)"
    return Cause(
        f"rate limited at {hop['proxy']} by RateLimitPolicy {names}",
        [f"{hop['proxy']}'s sidecar answered 429: the request was over the limit of RateLimitPolicy {names}"],
        [f"raise the limit in RateLimitPolicy {names}, or have {hop['source']} send fewer requests (back off on 429)"],
        [_ref(p) for p in policies],
        "RL",
    )


def _registry_only(hop, flags, details, hops, snapshot) -> Cause:
    host = hop["authority"].rsplit(":", 1)[0] if ":" in hop["authority"] else hop["authority"]
    return Cause(
        f"{host} is outside the mesh's registry and the mesh allows only registered hosts (REGISTRY_ONLY)",
        [
            f"the outbound traffic policy is REGISTRY_ONLY: {hop['proxy']}'s sidecar answered 502 for {host}, "
            "which is neither a service nor a ServiceEntry host"
        ],
        [
            f"add a ServiceEntry for {host} (hosts: [{host}], location: MESH_EXTERNAL), or set "
            "outboundTrafficPolicy ALLOW_ANY in the mesh config"
        ],
        [{"kind": "MeshConfig", "namespace": "", "name": "outboundTrafficPolicy"}],
    )


def _no_route(hop, flags, details, hops, snapshot) -> Cause:
    host = hop["authority"].rsplit(":", 1)[0] if ":" in hop["authority"] else hop["authority"]
    vs = next(
        (v for v in snapshot.virtual_services if any(h == host or h.split(".")[0] == host for h in v.spec.hosts)),
        None,
    )
    reasons = [f"{hop['proxy']}'s sidecar found no route for {host}{hop['path']} (404)"]
    fixes = []
    if vs is not None:
        reasons.append(f"{_name(vs)} routes {host}, and none of its http rules matches {hop['method']} {hop['path']}")
        fixes.append(
            f"add a rule without a match (a default) at the end of {_name(vs)}'s http list, or one matching "
            f"{hop['path']}"
        )
    else:
        fixes.append(
            f"check the host name {host!r}: is it a registered service (`lattice status`) or a ServiceEntry host?"
        )
    return Cause(f"no route for {host}{hop['path']}", reasons, fixes, [_ref(vs)] if vs else [], "NR")


def _overflow(hop, flags, details, hops, snapshot) -> Cause:
    host = _host(hop.get("cluster") or "")[2]
    dr = snapshot.destination_rule_for(host)
    reasons = [
        f"{hop['proxy']}'s sidecar refused to send the request to {hop.get('cluster')}: its circuit breaker "
        f"(connection pool) was full, so it answered 503 at once"
    ]
    fixes = []
    if dr is not None:
        pool = dr.spec.traffic_policy.connection_pool if dr.spec.traffic_policy else None
        if pool is not None:
            reasons.append(f"{_name(dr)} sets connectionPool {pool.model_dump(by_alias=True, exclude_none=True)}")
        fixes.append(
            "raise connectionPool limits (http.http1MaxPendingRequests, http.http2MaxRequests, "
            f"tcp.maxConnections) in {_name(dr)}, "
            f"or add replicas of {host}"
        )
    return Cause(f"circuit breaker open toward {host}", reasons, fixes, [_ref(dr)] if dr else [], "UO")


def _retries(hop, flags, details, hops, snapshot) -> Cause:
    vs, rule = _route_rule(snapshot, hop.get("route", ""))
    retry = getattr(rule, "retries", None) if rule is not None else None
    attempts = hop.get("attempts") or 0
    upstream = [h for h in hops if h["reporter"] == "destination" and h["status"]]
    reasons = [
        f"{hop['proxy']}'s sidecar tried {hop.get('cluster')} {attempts} times; every attempt failed, and the "
        "retry limit was reached"
    ]
    if upstream:
        reasons.append("the attempts were answered: " + ", ".join(f"{h['proxy']} {h['status']}" for h in upstream))
    if vs is not None and retry is not None:
        reasons.append(f"{_name(vs)} sets retries attempts={retry.attempts} retryOn={retry.retry_on or 'default'}")
    return Cause(
        f"retries exhausted after {attempts} attempts",
        reasons,
        [
            f"fix what makes {_host(hop.get('cluster') or '')[2]} fail (see its own answers above); retries "
            "only hide a steady failure"
        ],
        [_ref(vs)] if vs else [],
        "URX",
    )


def _timeout(hop, flags, details, hops, snapshot) -> Cause:
    vs, rule = _route_rule(snapshot, hop.get("route", ""))
    timeout = getattr(rule, "timeout", None) if rule is not None else None
    reasons = [
        f"{hop['proxy']}'s sidecar gave up on {hop.get('cluster')} after {hop['duration_ms']:.0f} ms and answered 504"
    ]
    fixes = [f"make {_host(hop.get('cluster') or '')[2]} answer faster"]
    if vs is not None:
        reasons.append(f"{_name(vs)}, route {hop.get('route')}, sets timeout {timeout}")
        fixes.append(f"or raise the timeout of that rule in {_name(vs)}")
    return Cause("route timeout", reasons, fixes, [_ref(vs)] if vs else [], "UT")


def _destination(hop: dict, snapshot: MeshSnapshot) -> tuple[str, str, str]:
    """(cluster, subset, host) the request was for: the cluster Envoy chose, or, when it chose
    none (no endpoint to pick), the destination the matched route names."""
    if hop.get("cluster"):
        _, subset, host = _host(hop["cluster"])
        return hop["cluster"], subset, host
    vs, rule = _route_rule(snapshot, hop.get("route", ""))
    routes = getattr(rule, "route", None) or []
    if vs is not None and routes:
        d = routes[0].destination
        host = snapshot.resolve_host(d.host, vs.namespace)
        return f"{host} subset {d.subset}" if d.subset else host, d.subset or "", host
    authority = hop["authority"].rsplit(":", 1)[0] if ":" in hop["authority"] else hop["authority"]
    return authority, "", authority


def _no_healthy(hop, flags, details, hops, snapshot) -> Cause:
    cluster, subset, host = _destination(hop, snapshot)
    endpoints = snapshot.endpoints(host)
    reasons = [f"{hop['proxy']}'s sidecar had no healthy endpoint in {hop.get('cluster')} (503)"]
    fixes = []
    decided = []
    if subset:
        dr = snapshot.destination_rule_for(host)
        labels: dict[str, str] = {}
        if dr is not None:
            decided.append(_ref(dr))
            labels = next((s.labels for s in dr.spec.subsets if s.name == subset), {}) or {}
        matching = [w for w in endpoints if all(w.labels.get(k) == v for k, v in labels.items())]
        reasons.append(
            f"subset {subset} of {_name(dr) if dr else 'no DestinationRule'} selects {labels or 'nothing'}: "
            f"{len(matching)} of {host}'s {len(endpoints)} endpoints match, {sum(w.healthy for w in matching)} healthy"
        )
        vs, _ = _route_rule(snapshot, hop.get("route", ""))
        if vs is not None:
            decided.append(_ref(vs))
            reasons.append(f"{_name(vs)} sends this request to subset {subset}")
        fixes.append(f"start a workload with labels {labels}, or route to a subset that has one")
    else:
        reasons.append(f"{host} has {len(endpoints)} endpoints, {sum(w.healthy for w in endpoints)} healthy")
        fixes.append(f"start {host}'s workloads or make their health checks pass (`lattice status`)")
    return Cause(f"no healthy upstream in {hop.get('cluster')}", reasons, fixes, decided, "UH")


def _inbound_refused(hop, flags, details, hops, snapshot) -> Cause:
    proxy = _workload(snapshot, hop)
    port = proxy.app_port if proxy else "its port"
    return Cause(
        f"{hop['proxy']}'s app refused the connection",
        [
            f"{hop['proxy']}'s sidecar could not connect to its app on 127.0.0.1:{port}: "
            f"{hop.get('transport_failure') or 'connection failed'}"
        ],
        [
            f"is {hop['proxy']}'s app running and listening on port {port}? (`lattice run --port` must name "
            "the app's port)"
        ],
        [],
        "UF",
    )


def _mtls_mismatch(hop, flags, details, hops, snapshot) -> Cause | None:
    _, _, host = _host(hop.get("cluster") or "")
    servers = [w for w in snapshot.endpoints(host) if isinstance(w, Workload)]
    dr = snapshot.destination_rule_for(host)
    tls = dr.spec.traffic_policy.tls if dr is not None and dr.spec.traffic_policy else None
    if not servers:
        return None
    mode, source = describe_mtls(snapshot.peer_authentications, servers[0], servers[0].port, snapshot.root_namespace)
    client = tls.mode if tls is not None else "ISTIO_MUTUAL"
    if (mode == "STRICT" and client == "DISABLE") or (mode == "DISABLE" and client == "ISTIO_MUTUAL"):
        decided = ([_ref(dr)] if dr is not None and tls is not None else []) + [
            {"kind": "PeerAuthentication", "namespace": p.namespace, "name": p.name}
            for p in snapshot.peer_authentications
            if f"{p.namespace}/{p.name}" in source
        ]
        side = f"{_name(dr)} sets tls mode {client}" if tls is not None else f"callers use mutual TLS ({client})"
        return Cause(
            f"mTLS mode mismatch toward {host}",
            [
                f"{host}'s sidecars accept {mode} ({source}), but {side}: the connection was closed "
                f"({hop.get('transport_failure') or hop['flags']})"
            ],
            [
                f"make them agree: set tls mode ISTIO_MUTUAL in {_name(dr)}"
                if client == "DISABLE" and dr is not None
                else f"set mode PERMISSIVE or STRICT in {source.split(' (')[0]}"
            ],
            decided,
            min(set(hop["flags"].split(","))),
        )
    return None


def _connection_failed(hop, flags, details, hops, snapshot) -> Cause:
    mismatch = _mtls_mismatch(hop, flags, details, hops, snapshot)
    if mismatch is not None:
        return mismatch
    flag = next(f for f in ("UF", "UC", "UR", "LR") if f in flags)
    return Cause(
        f"the connection to {hop.get('upstream_host') or hop.get('cluster')} failed",
        [f"{hop['proxy']}'s sidecar: {FLAG_MEANINGS[flag]} ({hop.get('transport_failure') or hop.get('details')})"],
        [f"check that {_host(hop.get('cluster') or '')[2]}'s sidecar is running (`lattice status`)"],
        [],
        flag,
    )


def _ext_authz(hop, flags, details, hops, snapshot) -> Cause:
    proxy = _workload(snapshot, hop)
    custom = (
        [p for p in snapshot.authorization_policies_for(proxy) if getattr(p.spec, "action", "") == "CUSTOM"]
        if proxy
        else []
    )
    return Cause(
        f"the external authorizer refused the request at {hop['proxy']}",
        [
            f"CUSTOM AuthorizationPolicy {', '.join(f'{p.namespace}/{p.name}' for p in custom) or ''} sent it "
            f"to its provider, which said no ({hop['status']})"
        ],
        ["look at the external authorizer's decision for this request, or the policy's rules that send it there"],
        [_ref(p) for p in custom],
        "UAEX",
    )


def _fault(hop, flags, details, hops, snapshot) -> Cause:
    vs, _ = _route_rule(snapshot, hop.get("route", ""))
    return Cause(
        "a fault was injected on purpose",
        [
            f"{_name(vs) if vs else 'a VirtualService'}, route {hop.get('route')}, injects a fault: "
            f"{FLAG_MEANINGS['FI']}"
        ],
        [f"remove the fault from {_name(vs)}" if vs else "remove the VirtualService fault"],
        [_ref(vs)] if vs else [],
        "FI",
    )


def _generic(hop, flags, details, hops, snapshot) -> Cause:
    flag = min(flags)
    return Cause(
        FLAG_MEANINGS.get(flag, flag).split(":")[0],
        [f"{hop['proxy']}'s sidecar: {FLAG_MEANINGS.get(flag, flag)}"],
        [],
        [],
        flag,
    )


_READERS = [
    (lambda h, f, d: d.startswith("rbac_access_denied"), _rbac),
    (lambda h, f, d: d.startswith("jwt_authn_access_denied"), _jwt),
    (lambda h, f, d: "RL" in f, _rate_limited),
    (lambda h, f, d: "UAEX" in f or d.startswith("ext_authz"), _ext_authz),
    (lambda h, f, d: "FI" in f, _fault),
    (lambda h, f, d: h.get("route") == "block_all" and h["status"] == 502, _registry_only),
    (lambda h, f, d: "NR" in f, _no_route),
    (lambda h, f, d: "UO" in f, _overflow),
    (lambda h, f, d: "UT" in f, _timeout),
    (lambda h, f, d: "UH" in f, _no_healthy),
    (lambda h, f, d: h["reporter"] == "destination" and "UF" in f, _inbound_refused),
    (lambda h, f, d: h["reporter"] == "source" and bool(f & {"UF", "UC", "UR", "LR"}), _connection_failed),
    (lambda h, f, d: "URX" in f, _retries),
    (lambda h, f, d: bool(f - {"DI"}), _generic),
]


async def recent(session: aiohttp.ClientSession, workloads: tuple[Workload, ...], limit: int):
    """The latest failed requests every sidecar remembers, newest first (their ids are `why`'s handles)."""

    async def one(w: Workload):
        url = f"http://{w.address}:{w.agent_port}/lattice/v1/requests"
        try:
            async with session.get(
                url, params={"limit": str(limit)}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as response:
                body = check_records(await bounded_json(response)) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):  # AgentAnswerError too: counted as silent
            return w, None
        return w, [r | {"proxy": w.name} for r in body["records"]] if body else []

    answers = await asyncio.gather(*(one(w) for w in workloads))
    records = sorted((r for _, found in answers if found for r in found), key=lambda r: -r["time"])
    return records[:limit], [w.name for w, found in answers if found is None]


class WhyApi:
    """`GET /api/v1/why/{request_id}` and `GET /api/v1/failures` (the latest failed requests)."""

    def __init__(self, registry, snapshot, session) -> None:
        self.registry = registry
        self._snapshot = snapshot  # () -> the current MeshSnapshot
        self._session = session  # () -> the shared aiohttp session

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/why/{request_id}", self.why)
        app.router.add_get("/api/v1/failures", self.failures)

    async def why(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"].strip()
        if not request_id or len(request_id) > 200:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "give the request's x-request-id (as `lattice tap` shows it)"}),
                content_type="application/json",
            )
        records, silent = await gather(self._session(), self.registry.workloads(), request_id)
        return web.json_response(explain(request_id, records, self._snapshot()) | {"unreachable": silent})

    async def failures(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "20")), 500))
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "limit must be a whole number"}), content_type="application/json"
            ) from None
        records, silent = await recent(self._session(), self.registry.workloads(), limit)
        return web.json_response({"items": records, "unreachable": silent})
