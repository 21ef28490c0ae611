"""What the console's service, workload and config pages show, built from what the CLI reads.

Each function takes the mesh as last pushed (`MeshSnapshot`), the registry's workloads and the
proxies' status rows (`/api/v1/status`'s, so a page and `lattice status` cannot disagree), and
returns JSON for `lattice/console/static/console.js`. Traffic numbers come from the agents'
windows (server/observe.py), charts from their per-step series (agent/live.py `Window.series`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp

from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh import peer_auth
from lattice.mesh.analyze import analyze
from lattice.mesh.model import SNAPSHOT_FIELDS
from lattice.mesh.telemetry import percentile
from lattice.server.agent_port import AgentAnswerError, bounded_json, check_window
from lattice.server.authz_check import CheckError, Question, check
from lattice.server.observe import TIMEOUT, stat


def sync_state(types: dict) -> str:
    """One word for a proxy's xDS types, as `lattice status` shows them type by type: NACK if
    it rejected any, SYNCED if it ACKed the newest of each, else STALE (sent, not yet ACKed)."""
    states = {t["state"] for t in types.values()}
    if "NACKED" in states:
        return "NACK"
    return "SYNCED" if states == {"SYNCED"} else "STALE"


def proxy_row(status: dict) -> dict:
    """A proxy as the pages list it: its endpoint, health, sync state and certificate."""
    cert = status.get("certificate") or {}
    return {
        "id": status["id"],
        "name": status["name"],
        "namespace": status["namespace"],
        "service": status["service"],
        "version": status["version"],
        "address": f"{status['address']}:{status['port']}",
        "healthy": status["healthy"],
        "connected": status["connected"],
        "sync": sync_state(status["types"]),
        "types": {t: v["state"] for t, v in status["types"].items()},
        "nacks": {t: v["error"] for t, v in status["types"].items() if v["error"]},
        "identity": cert.get("identity", ""),
        "cert_expires": cert.get("expires", ""),
    }


def applies_to(snapshot: MeshSnapshot, workloads: Iterable[Workload]) -> list[dict]:
    """The routes and policies that decide traffic to these workloads (all of one service, or
    one), each with what it does and which of them it selects."""
    found: dict[tuple[str, str, str], dict] = {}

    def add(kind: str, namespace: str, name: str, role: str, w: Workload) -> None:
        entry = found.setdefault(
            (kind, namespace, name),
            {"kind": kind, "namespace": namespace, "name": name, "role": role, "workloads": []},
        )
        if w.name not in entry["workloads"]:
            entry["workloads"].append(w.name)

    for w in workloads:
        host = snapshot.resolve_host(w.service, w.namespace)
        vs = snapshot.virtual_service_for(host)
        if vs is not None:
            add("VirtualService", vs.namespace, vs.name, f"routes requests for {host}", w)
        dr = snapshot.destination_rule_for(host)
        if dr is not None:
            add("DestinationRule", dr.namespace, dr.name, f"traffic policy and subsets of {host}", w)
        for p in snapshot.authorization_policies_for(w):
            add("AuthorizationPolicy", p.namespace, p.name, f"authorization: {p.spec.action}", w)
        for p in snapshot.rate_limit_policies_for(w):
            add("RateLimitPolicy", p.namespace, p.name, "rate limit", w)
        for p in snapshot.request_authentications_for(w):
            add("RequestAuthentication", p.namespace, p.name, "JWT authentication", w)
        for p in snapshot.peer_authentications:
            if _peer_auth_selects(p, w, snapshot.root_namespace):
                mode, _ = peer_auth.describe((p,), w, w.port, snapshot.root_namespace)
                add("PeerAuthentication", p.namespace, p.name, f"mutual TLS: {mode}", w)
    return sorted(found.values(), key=lambda e: (e["kind"], e["namespace"], e["name"]))


def _peer_auth_selects(p, w: Workload, root_namespace: str) -> bool:
    labels = p.spec.match_labels
    if labels:
        return p.namespace == w.namespace and all(w.labels.get(k) == v for k, v in labels.items())
    return p.namespace in (w.namespace, root_namespace)


def traffic(summary: dict, seconds: float) -> dict:
    """One sidecar's window: what it served (inbound, by caller) and what it called (outbound,
    by destination), as its own sidecar counted them."""
    sides: dict[str, dict[tuple, dict]] = {"inbound": {}, "outbound": {}}
    for row in summary["peers"]:
        if not row["requests"] and not row["tcp_opened"]:
            continue
        side = "inbound" if row["reporter"] == "destination" else "outbound"
        peer = row["peer_workload"] if row["peer_workload"] != "unknown" else row["service"]
        key = (peer, row["service"])
        g = sides[side].setdefault(key, {"requests": 0, "failures": 0, "latency": {}, "mtls": True})
        g["requests"] += row["requests"]
        g["failures"] += row["failures"]
        g["mtls"] = g["mtls"] and row["mtls"]
        for bucket, count in row["latency"].items():
            g["latency"][int(bucket)] = g["latency"].get(int(bucket), 0) + count
    out: dict = {}
    for side, groups in sides.items():
        rows = [
            {"peer": peer, "service": service, "mtls": g["mtls"]} | _numbers(g, seconds)
            for (peer, service), g in sorted(groups.items())
        ]
        total: dict = {"requests": 0, "failures": 0, "latency": {}}
        for g in groups.values():
            total["requests"] += g["requests"]
            total["failures"] += g["failures"]
            for b, c in g["latency"].items():
                total["latency"][b] = total["latency"].get(b, 0) + c
        out[side] = {"total": _numbers(total, seconds), "peers": rows}
    return out


def _numbers(g: dict, seconds: float) -> dict:
    n = g["requests"]
    return {
        "requests": n,
        "rps": round(n / seconds, 2),
        "success_rate": round((n - g["failures"]) / n, 4) if n else None,
        "p50_ms": percentile(g["latency"], 0.5),
        "p99_ms": percentile(g["latency"], 0.99),
    }


async def series(
    session: aiohttp.ClientSession, workloads: list[Workload], seconds: float, step: float
) -> tuple[list[tuple[Workload, list[dict]]], list[str]]:
    """Every named workload's agent's per-step window; and those whose agents did not answer."""

    async def one(w: Workload):
        url = f"http://{w.address}:{w.agent_port}/lattice/v1/series"
        try:
            async with session.get(
                url,
                params={"seconds": str(seconds), "step": str(step)},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            ) as response:
                if response.status != 200:
                    return w, None
                body = await bounded_json(response)
                steps = body.get("steps") if isinstance(body, dict) else None
                if not isinstance(steps, list):
                    raise AgentAnswerError("steps: a list")
                for s in steps:
                    check_window({"peers": s.get("peers") if isinstance(s, dict) else None, "paths": []})
                    if not isinstance(s.get("start"), int | float):
                        raise AgentAnswerError("steps[].start: a number")
                return w, steps
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return w, None

    answers = await asyncio.gather(*(one(w) for w in workloads))
    return [(w, s) for w, s in answers if s is not None], [w.name for w, s in answers if s is None]


def chart(answers: list[tuple[Workload, list[dict]]], step: float, name: str, namespace: str, by: str) -> list[dict]:
    """Per step: requests/s, success rate and latency p50/p99 of what `name` served, merged over
    its sidecars the way `lattice stat` merges a window."""
    if not answers:
        return []
    count = min(len(steps) for _, steps in answers)
    points = []
    for i in range(count):
        start = answers[0][1][len(answers[0][1]) - count + i]["start"]
        summaries = [(w, {"peers": steps[len(steps) - count + i]["peers"]}) for w, steps in answers]
        rows = stat(summaries, step, name, namespace, by=by)
        row = rows[0] if rows else None
        points.append(
            {
                "start": start,
                "requests": row["requests"] if row else 0,
                "rps": row["rps"] if row else 0.0,
                "success_rate": row["success_rate"] if row else None,
                "p50_ms": row["latency_ms"]["p50"] if row else None,
                "p99_ms": row["latency_ms"]["p99"] if row else None,
            }
        )
    return points


def config(snapshot: MeshSnapshot, stored: list, kinds: dict) -> dict:
    """Every stored resource with its analysis warnings (what `lattice apply` and `lattice analyze`
    say of it), and the workloads whose traffic it decides."""
    resources = [r for field in SNAPSHOT_FIELDS.values() for r in getattr(snapshot, field)]
    findings: dict[str, list[dict]] = {}
    for f in analyze(snapshot, resources, registry_known=True):
        findings.setdefault(f.resource, []).append({"level": f.level, "field": f.field, "message": f.message})
    for conflict in snapshot.conflicts():
        resource = conflict.partition(":")[0]
        findings.setdefault(resource, []).append({"level": "warning", "field": "", "message": conflict})
    decides: dict[tuple[str, str, str], list[str]] = {}
    sidecars = [w for w in snapshot.workloads if w.kind == "sidecar"]
    for entry in applies_to(snapshot, sidecars):
        decides[(entry["kind"], entry["namespace"], entry["name"])] = entry["workloads"]
    items = []
    for r in stored:
        kind = kinds[r.kind].kind if r.kind in kinds else r.kind
        items.append(
            {
                "kind": kind,
                "namespace": r.namespace,
                "name": r.name,
                "api_version": r.api_version,
                "revision": r.revision,
                "findings": findings.pop(f"{kind} {r.namespace}/{r.name}", []),
                "decides": decides.get((kind, r.namespace, r.name), []),
                "spec": r.spec,
            }
        )
    return {"items": items, "other_findings": [f | {"resource": k} for k, fs in findings.items() for f in fs]}


def reach(snapshot: MeshSnapshot) -> dict:
    """Which service may call which: for each caller's identity (one workload per service, and
    anonymous plaintext), what each destination's sidecar decides for `GET /`, as `lattice authz
    check` answers it. A path-, method- or header-specific rule can decide otherwise for other
    requests: the cell names the policies that matched."""
    sidecars = sorted(
        (w for w in snapshot.workloads if w.kind == "sidecar"), key=lambda w: (w.namespace, w.service, w.id)
    )
    callers: dict[tuple[str, str], Workload] = {}
    for w in sidecars:
        callers.setdefault((w.namespace, w.service), w)
    destinations = sorted(callers)
    rows = []
    for caller in [None, *callers.values()]:
        cells = []
        for namespace, service in destinations:
            question = Question(
                source=caller.id if caller else "anonymous",
                destination=f"{service}.{namespace}",
                method="GET",
                path="/",
                headers={},
                namespace=namespace,
            )
            try:
                results = check(snapshot, question)["results"]
            except CheckError as e:
                cells.append({"destination": service, "namespace": namespace, "decision": "UNKNOWN", "reason": str(e)})
                continue
            decisions = {r["decision"] for r in results}
            cells.append(
                {
                    "destination": service,
                    "namespace": namespace,
                    "decision": decisions.pop() if len(decisions) == 1 else "MIXED",
                    "reason": "; ".join(sorted({f"{r['workload']}: {r['reason']}" for r in results})),
                }
            )
        rows.append(
            {
                "source": caller.service if caller else "anonymous",
                "namespace": caller.namespace if caller else "",
                "identity": snapshot.identity(caller) if caller else "",
                "cells": cells,
            }
        )
    return {
        "request": "GET /",
        "destinations": [{"namespace": ns, "service": s} for ns, s in destinations],
        "rows": rows,
    }


REQUEST_ID_TAG = "guid:x-request-id"  # Envoy's tag for a span's request id


def same_request(a: str, b: str) -> bool:
    """Two spellings of one x-request-id: Envoy writes its trace decision into a UUID's version
    digit (the 15th character), so the id an app sent and the one a sidecar logged may differ there."""
    a, b = a.strip().lower(), b.strip().lower()
    if len(a) == len(b) == 36 and a[14] != b[14]:
        return a[:14] + a[15:] == b[:14] + b[15:]
    return a == b


def waterfall(request_id: str, records: list[dict], trace: dict | None) -> dict:
    """A request's hops on one time axis: each sidecar's record of it (inbound and outbound, the
    same records `lattice why` reads) and, when it was sampled, its trace's spans."""
    rows = [
        {
            "source": "sidecar",
            "proxy": r["proxy"],
            "side": "inbound" if r["reporter"] == "destination" else "outbound",
            "label": f"{r['method']} {r['authority']}{r['path']}",
            "start": r["time"],
            "duration_ms": r["duration_ms"],
            "status": r["status"],
            "flags": r["flags"],
            "error": r["status"] >= 500 or r["status"] == 0 or r["flags"] not in ("-", ""),
            "span_id": "",
            "parent_span_id": "",
        }
        for r in records
    ]
    for s in (trace or {}).get("spans", []):
        code = s["http"].get("status_code", "")
        rows.append(
            {
                "source": "trace",
                "proxy": s["service"],
                "side": s["kind"].lower(),
                "label": s["name"],
                "start": s["start_unix_nano"] / 1e9,
                "duration_ms": s["duration_ms"],
                "status": int(code) if code.isdigit() else 0,
                "flags": s["http"].get("response_flags", ""),
                "error": s["error"],
                "span_id": s["span_id"],
                "parent_span_id": s["parent_span_id"],
            }
        )
    rows.sort(key=lambda r: (r["start"], -r["duration_ms"]))
    origin = rows[0]["start"] if rows else 0.0
    for r in rows:
        r["offset_ms"] = round((r["start"] - origin) * 1000, 3)
    return {
        "request_id": request_id,
        "trace_id": trace["trace_id"] if trace else "",
        "total_ms": max((r["offset_ms"] + r["duration_ms"] for r in rows), default=0.0),
        "rows": rows,
    }
