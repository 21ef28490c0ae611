"""`lattice why <request-id>`: why a request failed (or went where it went), in plain words.

The control plane gathers the request's records from every sidecar it crossed and explains them
(server/why.py). Without an id, the latest failed requests are listed with their ids.
"""

from __future__ import annotations

from datetime import datetime

import typer
from rich.text import Text

from lattice.cli.client import ApiError, ServerOpt
from lattice.cli.client import connect as client
from lattice.cli.output import Format, OutputOpt, console, emit, fail

WHY_HELP = """Why did this request fail, or go where it went? From the sidecars it crossed.

REQUEST_ID is the request's x-request-id, which every sidecar assigns (or keeps) and which
`lattice tap` and the console show. Each sidecar remembers its latest failed requests (and every
request while it is tapped); without REQUEST_ID, the latest failures are listed.

Says the route matched, the cluster and endpoint tried, the retries, Envoy's response flag in
words, the AuthorizationPolicy or RateLimitPolicy that refused, and what to change.

  lattice why
  lattice why 3c1f7a52-1b0e-4a43-9f55-0c4c0b4f2d9e
  lattice why 3c1f7a52-1b0e-4a43-9f55-0c4c0b4f2d9e -o json
"""


def why(
    request_id: str | None = typer.Argument(
        None, help="The request's x-request-id; the latest failures when left out."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="Without REQUEST_ID: how many failures to list."),
    server: str | None = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    try:
        if not request_id:
            answer = client(server).get("/api/v1/failures", limit=limit)
            _failures(answer, output)
            return
        answer = client(server).get(f"/api/v1/why/{request_id}")
    except ApiError as e:
        fail(str(e))
    if output is not Format.table:
        emit(answer, output, [], [])
        return
    if not answer["found"]:
        fail(
            f"no sidecar remembers request {request_id}: sidecars keep failed requests (and all requests "
            "while tapped), "
            "the latest few thousand each; `lattice why` lists the latest failures"
            + (f" (no answer from: {', '.join(answer['unreachable'])})" if answer.get("unreachable") else "")
        )
    _print(answer)


def _print(answer: dict) -> None:
    console.print(Text(f"request {answer['request_id']}: {answer['outcome']}", style="bold"))
    for i, hop in enumerate(answer["hops"], 1):
        console.print(Text(f"  {i}. {hop['story']}"))
    cause = answer.get("cause")
    if not cause:
        console.print(Text("nothing went wrong on the way, as far as the sidecars saw"))
        return
    console.print(Text(f"why: {cause['summary']}", style="bold red"))
    if cause["flag"]:
        console.print(Text(f"  {cause['flag']}: {cause['flag_meaning']}"))
    for reason in cause["reasons"]:
        console.print(Text(f"  - {reason}"))
    if cause["decided_by"]:
        console.print(
            Text(
                "decided by: "
                + ", ".join(f"{d['kind']} {d['namespace']}/{d['name']}".replace(" /", " ") for d in cause["decided_by"])
            )
        )
    for fix in cause["fixes"]:
        console.print(Text(f"what to change: {fix}", style="green"))
    if answer.get("unreachable"):
        console.print(Text(f"no answer from: {', '.join(answer['unreachable'])}", style="yellow"))


def _failures(answer: dict, output: Format) -> None:
    rows = [
        [
            datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S"),
            r["request_id"] or "-",
            r["proxy"],
            r["source"]["workload"],
            r["destination"]["workload"] if r["destination"]["workload"] != "unknown" else r["service"],
            f"{r['method']} {r['authority']}{r['path']}",
            r["status"],
            r["flags"],
        ]
        for r in answer["items"]
    ]
    emit(answer, output, ["TIME", "REQUEST_ID", "PROXY", "SRC", "DST", "REQUEST", "STATUS", "FLAGS"], rows)


def register(app: typer.Typer) -> None:
    app.command(help=WHY_HELP)(why)
