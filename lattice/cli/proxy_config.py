"""`lattice proxy-config`: what a sidecar's Envoy actually holds, read from its config_dump."""

from __future__ import annotations

from typing import Optional

import typer

from lattice.cli.client import ServerOpt, call, connect
from lattice.cli.output import Format, OutputOpt, emit
from lattice.translate.names import parse_cluster

app = typer.Typer(help="Show the config a sidecar's Envoy holds (from Envoy's own config_dump).", no_args_is_help=True)
WorkloadArg = typer.Argument(..., help="Proxy id or workload name (see `lattice status`).")


def _dump(workload: str, server: str | None) -> dict:
    return call(connect(server).get, f"/api/v1/proxies/{workload}/config_dump")


def _section(dump: dict, name: str) -> dict:
    return next((c for c in dump.get("configs", []) if c.get("@type", "").rsplit(".", 1)[-1] == name), {})


def clusters_of(dump: dict) -> list[dict]:
    section = _section(dump, "ClustersConfigDump")
    return [c["cluster"] for c in section.get("static_clusters", []) + section.get("dynamic_active_clusters", [])]


def listeners_of(dump: dict) -> list[dict]:
    section = _section(dump, "ListenersConfigDump")
    return [d["active_state"]["listener"] for d in section.get("dynamic_listeners", []) if "active_state" in d]


def routes_of(dump: dict) -> list[dict]:
    section = _section(dump, "RoutesConfigDump")
    return [
        r["route_config"] for r in section.get("static_route_configs", []) + section.get("dynamic_route_configs", [])
    ]


def endpoints_of(dump: dict) -> list[dict]:
    section = _section(dump, "EndpointsConfigDump")
    return [e["endpoint_config"] for e in section.get("dynamic_endpoint_configs", [])]


@app.command()
def clusters(workload: str = WorkloadArg, server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Clusters: one per service port and subset, plus inbound and passthrough."""
    items = clusters_of(_dump(workload, server))
    rows = []
    for c in items:
        parts = parse_cluster(c["name"])
        rows.append(
            [
                parts["host"],
                parts["port"] or "-",
                parts["subset"] or "-",
                parts["direction"] or "-",
                c.get("type", c.get("cluster_type", {}).get("name", "-")),
            ]
        )
    emit(items, output, ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"], sorted(rows))


@app.command()
def listeners(workload: str = WorkloadArg, server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Listeners: inbound (service port) and outbound (the HTTP proxy port)."""
    items = listeners_of(_dump(workload, server))
    rows = [
        [x["name"], x["address"]["socket_address"]["address"], x["address"]["socket_address"]["port_value"]]
        for x in items
    ]
    emit(items, output, ["NAME", "ADDRESS", "PORT"], rows)


@app.command()
def routes(workload: str = WorkloadArg, server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Routes of the outbound table: which host and match go to which cluster(s)."""
    items = routes_of(_dump(workload, server))
    rows = []
    for table in items:
        for vhost in table.get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                rows.append([table["name"], vhost["name"], _match(route.get("match", {})), _destination(route)])
    emit(items, output, ["ROUTE TABLE", "VIRTUAL HOST", "MATCH", "DESTINATION"], rows)


@app.command()
def endpoints(workload: str = WorkloadArg, server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Endpoints per cluster, with their health."""
    items = endpoints_of(_dump(workload, server))
    rows = []
    for cla in items:
        for group in cla.get("endpoints", []):
            for lb in group.get("lb_endpoints", []):
                a = lb["endpoint"]["address"]["socket_address"]
                rows.append(
                    [f"{a['address']}:{a['port_value']}", lb.get("health_status", "HEALTHY"), cla["cluster_name"]]
                )
    emit(items, output, ["ENDPOINT", "STATUS", "CLUSTER"], rows)


def _match(match: dict) -> str:
    path = (
        match.get("path")
        or match.get("prefix")
        or (match.get("safe_regex", {}).get("regex") and f"~{match['safe_regex']['regex']}")
        or "/"
    )
    headers = [f"{h['name']}={next(iter(h.get('string_match', {}).values()), '')}" for h in match.get("headers", [])]
    return " ".join([path, *headers])


def _destination(route: dict) -> str:
    action = route.get("route")
    if action is None:
        return "redirect" if "redirect" in route else "direct response"
    if "cluster" in action:
        return action["cluster"]
    weighted = action.get("weighted_clusters", {}).get("clusters", [])
    return ", ".join(f"{c['name']} ({c.get('weight', 0)})" for c in weighted)
