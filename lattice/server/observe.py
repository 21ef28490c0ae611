"""Live golden signals for the CLI (`lattice stat`, `top`, `edges`, `tap`), from the sidecars.

Each sidecar's agent keeps the last minutes of its own traffic (agent/live.py). The control plane
asks every registered agent at once for the same window and merges the answers: a workload's
success rate and latency come from what its own sidecar served (reporter=destination), callers
from the identities those requests presented. Nothing is stored here, so there is nothing to
configure and nothing to lose; an agent that does not answer within `TIMEOUT` is left out and
named in the result.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from lattice.mesh import Workload
from lattice.mesh.telemetry import percentile
from lattice.server.agent_port import bounded_json, check_window, credential_middleware

TIMEOUT = 2.0
log = logging.getLogger("lattice.observe")


async def windows(
    session: aiohttp.ClientSession, workloads: tuple[Workload, ...], seconds: float
) -> tuple[list[tuple[Workload, dict]], list[str]]:
    """Every agent's window summary; and the workloads whose agents did not answer."""

    async def one(w: Workload):
        url = f"http://{w.address}:{w.agent_port}/lattice/v1/window"
        try:
            async with session.get(
                url, params={"seconds": str(seconds)}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as response:
                return w, check_window(await bounded_json(response)) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):  # AgentAnswerError too: counted as silent
            return w, None

    answers = await asyncio.gather(*(one(w) for w in workloads))
    return [(w, s) for w, s in answers if s is not None], [w.name for w, s in answers if s is None]


def _matches(w: Workload, name: str | None, namespace: str | None) -> bool:
    return (name is None or name in (w.name, w.service)) and (namespace is None or w.namespace == namespace)


def _caller_matches(row: dict, caller: str | None) -> bool:
    """`--from`: a workload name, or a service name (its workloads are `<service>-<version>`)."""
    return caller is None or row["peer_workload"] == caller or row["peer_workload"].rsplit("-", 1)[0] == caller


def stat(
    summaries: list[tuple[Workload, dict]],
    seconds: float,
    name: str | None = None,
    namespace: str | None = None,
    caller: str | None = None,
    by: str = "workload",
) -> list[dict]:
    """Success rate, requests per second and latency percentiles of what each workload (or
    service) served, optionally only of requests from `caller`."""
    groups: dict[tuple[str, str], dict] = {}
    for w, summary in summaries:
        if w.kind == "gateway" or not _matches(w, name, namespace):
            continue
        key = (w.namespace, w.service if by == "service" else w.name)
        group = groups.setdefault(
            key,
            {
                "requests": 0,
                "failures": 0,
                "latency": {},
                "tcp_opened": 0,
                "tcp_bytes": 0,
                "workloads": 0,
                "callers": set(),
            },
        )
        group["workloads"] += 1
        for row in summary["peers"]:
            if row["reporter"] != "destination" or not _caller_matches(row, caller):
                continue
            group["requests"] += row["requests"]
            group["failures"] += row["failures"]
            group["tcp_opened"] += row["tcp_opened"]
            group["tcp_bytes"] += row["tcp_bytes"]
            group["callers"].add(row["peer_workload"])
            for index, count in row["latency"].items():
                group["latency"][int(index)] = group["latency"].get(int(index), 0) + count
    _add_callers_view(groups, summaries, caller, by)
    return [_stat_row(by, key, g, seconds) for key, g in sorted(groups.items())]


def _add_callers_view(groups: dict, summaries: list[tuple[Workload, dict]], caller: str | None, by: str) -> None:
    """The same traffic as the callers' sidecars saw it (Istio's reporter="source", Linkerd's
    `stat --from`): failures that never reached the destination count here, such as a circuit
    breaker's overflow, a fault injected at the caller or a refused connection. A request that
    reached no workload is known only by its service: `--by service` shows it."""
    for w, summary in summaries:
        if caller is not None and caller not in (w.name, w.service):
            continue
        for row in summary["peers"]:
            if row["reporter"] != "source":
                continue
            if by == "service":
                host = row["service"].split(".")
                key = (host[1] if len(host) > 1 else w.namespace, host[0])
            else:
                key = (row["peer_namespace"], row["peer_workload"])
            group = groups.get(key)
            if group is None:
                continue
            client = group.setdefault("client", {"requests": 0, "failures": 0, "latency": {}})
            client["requests"] += row["requests"]
            client["failures"] += row["failures"]
            for index, count in row["latency"].items():
                client["latency"][int(index)] = client["latency"].get(int(index), 0) + count


def _stat_row(by: str, key: tuple[str, str], g: dict, seconds: float) -> dict:
    n = g["requests"]
    return {
        "namespace": key[0],
        by: key[1],
        "workloads": g["workloads"],
        "requests": n,
        "success_rate": round((n - g["failures"]) / n, 4) if n else None,
        "rps": round(n / seconds, 2) if seconds else 0.0,
        "latency_ms": {
            "p50": percentile(g["latency"], 0.5),
            "p95": percentile(g["latency"], 0.95),
            "p99": percentile(g["latency"], 0.99),
        },
        "tcp_connections": g["tcp_opened"],
        "tcp_bytes": g["tcp_bytes"],
        "client": _client_view(g.get("client"), seconds),
        "callers": sorted(g["callers"]),
    }


def _client_view(c: dict | None, seconds: float) -> dict:
    n, failures = (c["requests"], c["failures"]) if c else (0, 0)
    return {
        "requests": n,
        "success_rate": round((n - failures) / n, 4) if n else None,
        "rps": round(n / seconds, 2) if seconds else 0.0,
        "latency_ms": {
            q: percentile(c["latency"], v) if c else None for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
    }


def top(summaries: list[tuple[Workload, dict]], name: str, namespace: str | None = None, limit: int = 20) -> list[dict]:
    """The busiest (caller, method, path) through `name`'s sidecars, inbound and outbound."""
    rows: dict[tuple, dict] = {}
    for w, summary in summaries:
        if not _matches(w, name, namespace):
            continue
        for p in summary["paths"]:
            source, destination = (
                (p["peer_workload"], w.name) if p["reporter"] == "destination" else (w.name, p["peer_workload"])
            )
            key = (source, destination, p["method"], p["path"])
            row = rows.get(key)
            if row is None:
                rows[key] = {
                    "source": source,
                    "destination": destination,
                    "service": p["service"],
                    "method": p["method"],
                    "path": p["path"],
                    "requests": p["requests"],
                    "failures": p["failures"],
                    "best_ms": p["best_ms"],
                    "worst_ms": p["worst_ms"],
                    "last_ms": p["last_ms"],
                    "direction": "inbound" if p["reporter"] == "destination" else "outbound",
                }
                continue
            row["requests"] += p["requests"]
            row["failures"] += p["failures"]
            row["best_ms"], row["worst_ms"], row["last_ms"] = (
                min(row["best_ms"], p["best_ms"]),
                max(row["worst_ms"], p["worst_ms"]),
                p["last_ms"],
            )
    ordered = sorted(rows.values(), key=lambda r: (-r["requests"], r["path"]))[:limit]
    for row in ordered:
        row["success_rate"] = (
            round((row["requests"] - row["failures"]) / row["requests"], 4) if row["requests"] else None
        )
    return ordered


def edges(summaries: list[tuple[Workload, dict]], namespace: str | None = None) -> list[dict]:
    """Who called whom in the window, with both identities and whether the hop was mutual TLS.
    The callee's sidecar knows best (it saw the certificate); a callee without a sidecar is
    known only from the caller's side, and then the hop's security is "unknown"."""
    found: dict[tuple[str, str], dict] = {}
    for w, summary in summaries:
        for row in summary["peers"]:
            if row["reporter"] != "destination":
                continue
            key = (row["peer_workload"], w.name)
            edge = found.setdefault(
                key,
                {
                    "source": row["peer_workload"],
                    "source_namespace": row["peer_namespace"],
                    "source_principal": row["peer_principal"],
                    "destination": w.name,
                    "destination_namespace": w.namespace,
                    "destination_principal": "",
                    "secured": True,
                    "requests": 0,
                    "tcp_connections": 0,
                },
            )
            edge["secured"] = edge["secured"] and row["mtls"]
            edge["requests"] += row["requests"]
            edge["tcp_connections"] += row["tcp_opened"]
    meshed = {w.name for w, _ in summaries}
    for w, summary in summaries:
        for row in summary["peers"]:
            key = (w.name, row["peer_workload"])
            if row["reporter"] != "source" or key in found or row["peer_workload"] in meshed:
                continue  # the callee's own report (above) is the one to believe
            found[key] = {
                "source": w.name,
                "source_namespace": w.namespace,
                "source_principal": "",
                "destination": row["peer_workload"] if row["peer_workload"] != "unknown" else row["service"],
                "destination_namespace": row["peer_namespace"],
                "destination_principal": row["peer_principal"],
                "secured": None,
                "requests": row["requests"],
                "tcp_connections": row["tcp_opened"],
            }
    # A meshed workload's identity, as its peers saw it (a callee its caller's certificate, a caller its callee's).
    principal: dict[str, str] = {}
    for _, summary in summaries:
        for row in summary["peers"]:
            if row["peer_principal"] != "unknown":
                principal.setdefault(row["peer_workload"], row["peer_principal"])
    # One agent cannot claim traffic for another: a callee's report of calls from a meshed caller
    # counts only as far as that caller's own report confirms it.
    confirmed: dict[tuple[str, str], list[int]] = {}
    for w, summary in summaries:
        for row in summary["peers"]:
            if row["reporter"] == "source":
                counts = confirmed.setdefault((w.name, row["peer_workload"]), [0, 0])
                counts[0] += row["requests"]
                counts[1] += row["tcp_opened"]
    out = []
    for key, edge in list(found.items()):
        if edge["source"] in meshed and edge["secured"] is not None:
            requests, connections = confirmed.get(key, (0, 0))
            edge["requests"] = min(edge["requests"], requests)
            edge["tcp_connections"] = min(edge["tcp_connections"], connections)
            if not edge["requests"] and not edge["tcp_connections"]:
                continue
        for end in ("source", "destination"):
            if edge[end] in meshed and not edge[f"{end}_principal"]:
                edge[f"{end}_principal"] = principal.get(edge[end], "")
        if namespace is None or namespace in (edge["source_namespace"], edge["destination_namespace"]):
            out.append(edge)
    return sorted(out, key=lambda e: (e["source"], e["destination"]))


async def tap(
    session: aiohttp.ClientSession, targets: list[Workload], path: str | None, method: str | None
) -> AsyncIterator[dict]:
    """Requests through the targets' sidecars as they happen; each appears once (the target's
    own report: inbound for what it serves, outbound for what it calls)."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=10000)

    async def follow(w: Workload) -> None:
        url = f"http://{w.address}:{w.agent_port}/lattice/v1/tap"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT)) as response:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or not isinstance(event.get("path"), str):
                        raise ValueError("not a tap event")
                except ValueError:  # one agent's garbage ends its own stream, not the tap
                    log.warning("tap: %s sent a malformed event; not following it any more", w.id)
                    return
                if (
                    (path is None or event["path"].startswith(path))
                    and (method is None or event.get("method") == method.upper())
                    and not queue.full()
                ):
                    queue.put_nowait(event | {"proxy": w.name})

    async with asyncio.TaskGroup() as group:
        for w in targets:
            group.create_task(follow(w), name=f"tap-{w.id}")
        while True:
            yield await queue.get()


class Observatory:
    """The REST side: `/api/v1/stat`, `/top`, `/edges` (JSON) and `/tap` (one JSON object per line)."""

    def __init__(self, registry, agent_key: Callable[[str], str] | None = None) -> None:
        self.registry = registry
        self._agent_key = agent_key  # proxy id -> the key its agent's port asks for (server/agent_port.py)
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/stat", self.stat)
        app.router.add_get("/api/v1/top", self.top)
        app.router.add_get("/api/v1/edges", self.edges)
        app.router.add_get("/api/v1/tap", self.tap)
        app.on_cleanup.append(self._close)

    async def _close(self, app) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(middlewares=(credential_middleware(self._key_for),))
        return self._session

    def _key_for(self, host: str, port: int) -> str | None:
        if self._agent_key is None:
            return None
        for w in self.registry.workloads():
            if w.agent_port == port and w.address.strip("[]") == host:
                return self._agent_key(w.id)
        return None

    async def _summaries(self, request: web.Request) -> tuple[float, list, list[str]]:
        seconds = _window(request.query.get("window", "60"))
        summaries, silent = await windows(self.session, self.registry.workloads(), seconds)
        return seconds, summaries, silent

    async def stat(self, request: web.Request) -> web.Response:
        q = request.query
        by = q.get("by", "workload")
        if by not in ("workload", "service"):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"by must be workload or service, not {by!r}"}),
                content_type="application/json",
            )
        seconds, summaries, silent = await self._summaries(request)
        rows = stat(summaries, seconds, q.get("name") or None, q.get("namespace") or None, q.get("from") or None, by)
        return web.json_response({"window_seconds": seconds, "items": rows, "unreachable": silent})

    async def top(self, request: web.Request) -> web.Response:
        q = request.query
        seconds, summaries, silent = await self._summaries(request)
        rows = top(summaries, q.get("name", ""), q.get("namespace") or None, int(q.get("limit", "20")))
        return web.json_response({"window_seconds": seconds, "items": rows, "unreachable": silent})

    async def edges(self, request: web.Request) -> web.Response:
        seconds, summaries, silent = await self._summaries(request)
        return web.json_response(
            {
                "window_seconds": seconds,
                "items": edges(summaries, request.query.get("namespace") or None),
                "unreachable": silent,
            }
        )

    async def tap(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        targets = [
            w for w in self.registry.workloads() if _matches(w, q.get("name") or None, q.get("namespace") or None)
        ]
        if not targets:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "error": f"no workload or service named {q.get('name')!r} is registered; `lattice status` "
                        "lists them"
                    }
                ),
                content_type="application/json",
            )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(json.dumps({"tapping": sorted(w.name for w in targets)}).encode() + b"\n")
        try:
            async for event in tap(self.session, targets, q.get("path") or None, q.get("method") or None):
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, aiohttp.ClientError):
            pass
        return response


def _window(text: str) -> float:
    try:
        seconds = float(text.rstrip("s"))
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= 300:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"window must be 1 to 300 seconds, not {text!r}"}),
            content_type="application/json",
        )
    return seconds
