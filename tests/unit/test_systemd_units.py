"""The systemd units in docs/systemd: each starts a `lattice` command with options that exist,
restarts it, and lets `lattice run`/`agent` drain before systemd kills anything."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import typer

from lattice.agent.drain import DEFAULT_DRAIN_TIMEOUT
from lattice.api.durations import parse_duration
from lattice.cli.main import app

UNITS = sorted((Path(__file__).parents[2] / "docs" / "systemd").glob("*.service"))


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


def test_there_are_units_for_the_server_run_and_agent():
    assert {p.name for p in UNITS} == {"lattice-server.service", "lattice-run@.service", "lattice-agent@.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_a_lattice_command_with_options_that_exist(path):
    service = _unit(path)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/lattice")
    command = typer.main.get_command(app).commands[argv[1]]
    known = {opt for param in command.params for opt in param.opts}
    given = [a for a in argv[2 : argv.index("--") if "--" in argv else None] if a.startswith("--")]
    assert given and set(given) <= known, set(given) - known


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_restarts_and_stops_the_main_process_first(path):
    service = _unit(path)["Service"]
    assert service["Restart"] == "always"
    # SIGTERM to `lattice run` alone: it drains, then stops app and Envoy itself; SIGKILL only after.
    assert service["KillMode"] == "mixed"
    argv = shlex.split(service["ExecStart"])
    if "--drain-timeout" in argv:
        drain = parse_duration(argv[argv.index("--drain-timeout") + 1])
        assert drain <= DEFAULT_DRAIN_TIMEOUT < float(service["TimeoutStopSec"])
