"""`lattice status`'s replica part: each control-plane replica, its store's health, its proxies."""

from __future__ import annotations

import typer

from lattice.cli.output import Format, emit


def print_replicas(data: dict) -> None:
    """After the proxy table: the store as the answering replica sees it, then every replica."""
    store = data.get("store") or {}
    if store:
        state = "healthy" if store.get("healthy") else f"UNAVAILABLE: {store.get('error')}"
        typer.echo(f"\nstore {store.get('store')} ({store.get('backend')}): {state}")
        for m in store.get("members", []):
            typer.echo(
                f"  member {m['endpoint']}: "
                + (
                    f"up, etcd {m['version']}{', leader' if m.get('is_leader') else ''}"
                    + ("" if m.get("leader") else ", NO LEADER")
                    if m["reachable"]
                    else f"DOWN ({m.get('error')})"
                )
            )
    replicas = data.get("replicas") or []
    if len(replicas) > 1 or store.get("backend") == "etcd":
        typer.echo("")
        rows = [
            [
                r["id"] + (" (this)" if i == 0 else ""),
                r.get("api", "?"),
                r.get("xds", "?"),
                r.get("agent", "?"),
                r.get("proxies", 0),
            ]
            for i, r in enumerate(replicas)
        ]
        emit(data, Format.table, ["REPLICA", "API", "XDS", "AGENTS", "PROXIES"], rows)
