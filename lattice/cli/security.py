"""`lattice token` (who may join as whom) and `lattice ca` (the mesh's certificate authority)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


from lattice.cli.client import ServerOpt, call, connect
from lattice.cli.options import duration_option
from lattice.cli.output import Format, OutputOpt, emit, fail

token_app = typer.Typer(
    help="Join tokens: each lets one workload identity get its first certificate.", no_args_is_help=True
)
ca_app = typer.Typer(
    help="The mesh's certificate authority: its roots, what it issued, root rotation.", no_args_is_help=True
)


@token_app.command("create")
def create(
    service_account: str = typer.Option(..., "--service-account", help="The identity's service account, e.g. reviews."),
    service: Optional[list[str]] = typer.Option(
        None,
        "--service",
        help="A service its holder may register as (repeat for several; default: the service named like the account).",
    ),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    ttl: float = duration_option("1h", "--ttl", help="How long the token may be used, e.g. 10m, 1h, 24h."),
    uses: int = typer.Option(1, min=1, help="How many workloads may join with it (default: one)."),
    description: str = typer.Option("", help="A note shown by `lattice token list`."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Print a join token bound to spiffe://<trust-domain>/ns/NAMESPACE/sa/SERVICE_ACCOUNT.

    Give it to `lattice run --token-file FILE` (or LATTICE_TOKEN). A workload that presents it can
    get a certificate for that identity and no other, and register only as the services named
    with --service. It is used up after --uses joins. Treat it like a password.
    """
    seconds = ttl
    body = {
        "namespace": namespace,
        "service_account": service_account,
        "services": list(service or []),
        "ttl_seconds": seconds,
        "uses": uses,
        "description": description,
    }
    result = call(
        connect(server).request, "POST", "/api/v1/tokens", json.dumps(body).encode(), content_type="application/json"
    )
    if output is not Format.table:
        return emit(result, output, [], [])
    typer.echo(result["token"])
    uses_text = (
        "unlimited uses" if result["uses"] is None else f"{result['uses']} use{'s' if result['uses'] != 1 else ''}"
    )
    Console(stderr=True).print(
        f"token {result['id']} for {result['identity']} serving {', '.join(result['services'])}: "
        f"{uses_text}, expires {_when(result['expires_at'])}",
        highlight=False,
    )


@token_app.command("list")
def list_tokens(server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Tokens the control plane knows (never their secrets)."""
    items = call(connect(server).get, "/api/v1/tokens")["items"]
    rows = [
        [
            t["id"],
            t["identity"].removeprefix("spiffe://"),
            ", ".join(t.get("services") or [t["service_account"]]),
            "unlimited" if t["uses_left"] is None else t["uses_left"],
            "EXPIRED" if t["expired"] else _when(t["expires_at"]),
            t.get("description", ""),
        ]
        for t in items
    ]
    emit({"items": items}, output, ["ID", "IDENTITY", "SERVICES", "USES LEFT", "EXPIRES", "DESCRIPTION"], rows)


@token_app.command("revoke")
def revoke(
    token_id: str = typer.Argument(..., help="Token id (the second part of the token; see `lattice token list`)."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Revoke a token: it cannot be used again, workloads that joined with it can neither renew
    nor register, and their certificates are refused by every sidecar (a CRL, within seconds)."""
    result = call(connect(server).request, "DELETE", f"/api/v1/tokens/{token_id}")
    if output is not Format.table:
        return emit(result, output, [], [])
    proxies = result.get("revoked_proxies", [])
    typer.echo(
        f"token {token_id} revoked; {len(proxies)} workload(s) cut off{': ' + ', '.join(proxies) if proxies else ''}"
    )


@ca_app.command("revoke")
def revoke_identity(
    service_account: str = typer.Option(..., "--service-account", help="The identity's service account."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Revoke an identity: delete its join tokens, cut off every workload holding it (no renewal,
    no registration) and have every sidecar refuse its certificates (a CRL, within seconds).
    A token minted for it afterwards lets it join again."""
    body = json.dumps({"namespace": namespace, "service_account": service_account}).encode()
    result = call(connect(server).request, "POST", "/api/v1/ca/revoke", body, content_type="application/json")
    if output is not Format.table:
        return emit(result, output, [], [])
    proxies = result["revoked_proxies"]
    typer.echo(
        f"{result['identity']} revoked: {result['tokens_deleted']} token(s) deleted, {len(proxies)} workload(s) cut off"
        f"{': ' + ', '.join(proxies) if proxies else ''}; {result['revoked_certificates']} certificate(s) on the CRL"
    )


@ca_app.command("show")
def show(server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Trusted roots (fingerprint, validity), the signing CA, certificates issued and refused."""
    info = call(connect(server).get, "/api/v1/ca")
    rows = [
        [
            r["fingerprint"][:32],
            r["subject"],
            r["not_before"][:10],
            r["not_after"][:10],
            "signing" if r["signing"] else "trusted",
        ]
        for r in info["roots"]
    ]
    emit(info, output, ["ROOT SHA-256", "SUBJECT", "NOT BEFORE", "NOT AFTER", "ROLE"], rows)
    if output is Format.table:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(info["refused"].items())) or "none"
        proxies = info["proxies"]
        typer.echo(
            f"\ntrust domain {info['trust_domain']}{' (plug-in CA)' if info['plug_in'] else ''}; workload "
            f"certificates last {_span(info['cert_ttl_seconds'])}\n"
            f"signing CA: {info['signing']['subject']}, {info['signing']['days_left']} days left\n"
            f"issued {info['issued']}, refused {refused}\n"
            f"rotation: {info['rotation']}; {proxies['trust_current_bundle']}/{proxies['total']} proxies hold "
            f"trust bundle v{info['bundle_version']}, {proxies['on_signing_root']}/{proxies['total']} hold a "
            "certificate from the signing root"
        )


@ca_app.command("rotate-root")
def rotate_root(
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the rotation until the old root is retired."),
    timeout: float = duration_option(
        "5m", "--timeout", help="How long to follow it before giving up, e.g. 5m (the rotation itself goes on)."
    ),
    server: Optional[str] = ServerOpt,
) -> None:
    """Replace the root CA with no failed requests.

    The new root is first trusted alongside the old one; once every workload trusts it, certificates
    are signed by it and every workload renews; once all hold one, the old root is retired.
    """
    client = connect(server)
    info = call(client.request, "POST", "/api/v1/ca/rotate-root")
    new = next(r for r in info["roots"] if not r["signing"])["fingerprint"][:16] if len(info["roots"]) > 1 else "?"
    typer.echo(f"rotation started: new root {new} added to the trust bundle")
    if not wait:
        return
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    with console.status("waiting for every workload to trust the new root") as status:
        while time.monotonic() < deadline:
            info = call(client.get, "/api/v1/ca")
            p = info["proxies"]
            if info["rotation"] == "none":
                break
            if info["rotation"] == "distributing":
                status.update(f"distributing the new root: {p['trust_current_bundle']}/{p['total']} workloads trust it")
            else:
                status.update(
                    f"switching: {p['on_signing_root']}/{p['total']} workloads hold a certificate from the new root"
                )
            time.sleep(0.5)
    if info["rotation"] != "none":
        fail(f"the rotation is still {info['rotation']} after {timeout:.0f}s (it goes on; see `lattice ca show`)")
    typer.echo(f"rotation done: the trust bundle holds only {info['roots'][0]['fingerprint'][:16]}")


trust_app = typer.Typer(
    help="""Roots the whole mesh trusts, with several replicas on etcd: rotate a plug-in CA with no
failed request. 1) `lattice ca trust add new-root.pem` (every proxy gets a trust bundle with both
roots); 2) restart each replica with the new --ca-cert/--ca-key (its proxies renew from the new
root); 3) `lattice ca trust remove <old fingerprint>` (refused while anything still uses it).""",
    no_args_is_help=True,
)
ca_app.add_typer(trust_app, name="trust")


@trust_app.command("add")
def trust_add(
    root: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The root certificate (PEM)."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Trust another root mesh-wide: every replica adds it to its proxies' trust bundle, and a
    replica may then be restarted to sign under it."""
    body = json.dumps({"pem": root.read_text(errors="replace")}).encode()
    result = call(connect(server).request, "POST", "/api/v1/ca/trust", body, content_type="application/json")
    if output is not Format.table:
        return emit(result, output, [], [])
    typer.echo(
        f"root {result['added'][:16]} trusted mesh-wide; trusted roots: {', '.join(f[:16] for f in result['roots'])}\n"
        "next: restart each replica with the new --ca-cert/--ca-key, then `lattice ca trust remove` the old root"
    )


@trust_app.command("remove")
def trust_remove(
    fingerprint: str = typer.Argument(
        ..., help="The root's SHA-256 fingerprint (at least 8 hex digits; see `lattice ca show`)."
    ),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Stop trusting a root mesh-wide. Refused while a replica signs under it or a proxy still
    holds a certificate from it."""
    result = call(connect(server).request, "DELETE", f"/api/v1/ca/trust/{fingerprint.strip().lower()}")
    if output is not Format.table:
        return emit(result, output, [], [])
    typer.echo(
        f"root {result['removed'][:16]} no longer trusted; trusted roots: {', '.join(f[:16] for f in result['roots'])}"
    )


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"
