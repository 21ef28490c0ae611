"""`lattice authz check`: ask the control plane what a destination's sidecar would decide."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.text import Text

from lattice.cli.client import ApiError, ServerOpt
from lattice.cli.client import connect as client
from lattice.cli.output import Format, OutputOpt, console, emit, fail

app = typer.Typer(
    help="Authorization: explain what AuthorizationPolicies decide, before you send a request.", no_args_is_help=True
)

_CHECK_HELP = """Would the destination's sidecar let this request through, and which policy and rule decide?

Evaluated on the RBAC config the control plane sends that sidecar (the compiled policy Envoy
enforces), for every workload of the destination service. Dry-run policies are shown as
what they would have done. A CUSTOM (external) authorizer is named, not called; a bearer token's
claims are read as the sidecar would, but its signature is not checked here.

  lattice authz check --from productpage-v1 --to reviews GET /reviews/0
  lattice authz check --from cluster.local/ns/default/sa/ratings --to reviews POST /admin -H 'x-role: admin'
  lattice authz check --from anonymous --to details /details/0 -o json
"""


@app.command(help=_CHECK_HELP)
def check(
    request: list[str] = typer.Argument(..., help="[METHOD] PATH, e.g. GET /reviews/0"),
    source: str = typer.Option(
        "anonymous",
        "--from",
        help="Caller: a workload (id or name), a service, a SPIFFE ID or principal, or 'anonymous'.",
    ),
    destination: str = typer.Option(
        ..., "--to", help="Destination service (name, name.namespace, FQDN) or a workload id."
    ),
    header: list[str] = typer.Option([], "-H", "--header", help="Request header 'name: value' (repeatable)."),
    namespace: str = typer.Option("default", "-n", "--namespace", help="Namespace for short names in --from and --to."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    method, path = _method_and_path(request)
    headers = dict(_header(h) for h in header)
    c = client(server)
    try:
        question = {
            "from": source,
            "to": destination,
            "method": method,
            "path": path,
            "headers": headers,
            "namespace": namespace,
        }
        answer = c.request(
            "POST", "/api/v1/authz/check", json.dumps(question).encode(), content_type="application/json"
        )
    except ApiError as e:
        fail(f"{e}")
    rows = [
        [r["workload"], r["decision"], r["reason"], ", ".join(_dry(d) for d in r.get("dry_run", [])) or "-"]
        for r in answer["results"]
    ]
    if output is Format.table:
        console.print(Text(f"{answer['request']} from {answer['source']} to {answer['destination']}"))
    emit(answer, output, ["WORKLOAD", "DECISION", "WHY", "DRY-RUN"], rows)
    if any(r["decision"] in ("DENY", "UNKNOWN") for r in answer["results"]):
        raise typer.Exit(1)


def _method_and_path(request: list[str]) -> tuple[str, str]:
    if len(request) == 1:
        return "GET", request[0]
    if len(request) == 2:
        return request[0].upper(), request[1]
    fail("give the request as [METHOD] PATH, e.g. `GET /reviews/0`")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        fail(f"header {text!r} is not 'name: value'")
    return name.strip().lower(), value.strip()


def _dry(d: dict) -> str:
    return f"{d['action']} would {'deny' if d['would_deny'] else 'allow'}" + (
        f" ({d['matched'][0]})" if d["matched"] else ""
    )
