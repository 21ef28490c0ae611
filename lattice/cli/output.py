"""Printing: a rich table for people, JSON or YAML for programs."""

from __future__ import annotations

import enum
import json
import sys
from typing import NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Wide enough that cluster names are never cut when output goes to a pipe or a CI log.
console = Console(width=None if sys.stdout.isatty() else 250)
errors = Console(stderr=True)


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


# The -o option every read command takes.
OutputOpt = typer.Option(Format.table, "-o", "--output", help="Output format: a table, or json / yaml for programs.")


def emit(data, fmt: Format, columns: list[str], rows: list[list]) -> None:
    """`data` for -o json|yaml; `columns`/`rows` for the table."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif fmt is Format.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*[Text(str(c)) for c in row])  # data, never markup: `ns[default]` stays as written
        console.print(table)


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)
