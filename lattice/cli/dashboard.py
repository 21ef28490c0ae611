"""`lattice dashboard`: the web console in the default browser, logged in with a one-time link."""

from __future__ import annotations

import webbrowser
from typing import Optional

import typer

from lattice.cli.client import ApiError, ServerOpt
from lattice.cli.client import connect as client
from lattice.cli.output import console, fail

DASHBOARD_HELP = """Open the web console (the live mesh in a browser) logged in, with a one-time link.

The control plane serves the console on its REST port at /ui/. This asks it for a login link
(good once, for a minute; your admin credential never goes into a URL) and opens it in the
default browser. --url prints the link instead, for a browser on another machine or a script.

  lattice dashboard
  lattice dashboard --url
"""


def dashboard(
    url: bool = typer.Option(False, "--url", help="Print the one-time login URL instead of opening a browser."),
    server: Optional[str] = ServerOpt,
) -> None:
    api = client(server)
    try:
        answer = api.request("POST", "/api/v1/console/tickets", b"{}", content_type="application/json")
    except ApiError as e:
        fail(str(e))
    link = f"{api.base}{answer['path']}"
    if url:
        print(link)
        return
    if not webbrowser.open(link):
        fail(f"no browser to open here; open this link (good once, for a minute): {link}")
    console.print(f"console opened in your browser ({api.base}/ui/)")


def register(app: typer.Typer) -> None:
    app.command(help=DASHBOARD_HELP)(dashboard)
