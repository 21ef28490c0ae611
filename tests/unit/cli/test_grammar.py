"""One CLI grammar: durations everywhere, --limit everywhere, choices in --help, one option set
for `run` and `agent`, and --server as "the control plane to talk to" in either shape."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from lattice.cli import observe
from lattice.cli.client import _this_api, agent_url, server_url
from lattice.cli.main import app
from lattice.cli.options import duration

runner = CliRunner()


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def _option_rows(*command: str) -> dict[str, str]:
    """The rows of --help's option table, by the option's (long) name."""
    rows = {}
    for line in _help(*command).splitlines():
        words = line.replace("│", " ").replace("*", " ").split()
        if words and re.fullmatch(r"--[a-z][a-z0-9-]*", words[0]):
            rows[words[0]] = line
    return rows


@pytest.mark.parametrize(
    "text, seconds",
    [("100ms", 0.1), ("15s", 15.0), ("1m30s", 90.0), ("24h", 86400.0), ("0.1", 0.1), ("15", 15.0), ("0", 0.0)],
)
def test_a_duration_is_written_as_istio_writes_it_or_as_bare_seconds(text, seconds):
    assert duration(text) == pytest.approx(seconds)


def test_a_bad_duration_names_the_option_and_the_shape_wanted():
    result = runner.invoke(app, ["server", "--debounce", "soon"])
    assert result.exit_code == 2
    assert "--debounce" in result.output and "100ms" in result.output


@pytest.mark.parametrize(
    "command, option",
    [
        (["server"], "--debounce"),
        (["server"], "--heartbeat-timeout"),
        (["server"], "--cert-ttl"),
        (["server"], "--jwks-refresh"),
        (["tap"], "--duration"),
        (["demo"], "--duration"),
        (["ca", "rotate-root"], "--timeout"),
        (["token", "create"], "--ttl"),
    ],
)
def test_every_time_option_takes_a_duration(command, option):
    row = _option_rows(*command)[option]
    assert "DURATION" in row, row


def test_choices_are_listed_in_help():
    text = _help("server")
    assert "ALLOW_ANY|REGISTRY_ONLY" in text and "DO_NOT_UPGRADE|UPGRADE" in text
    assert "debug|info|warning|error" in text
    result = runner.invoke(app, ["server", "--outbound-traffic-policy", "SOMETIMES"])
    assert result.exit_code == 2 and "SOMETIMES" in result.output


def test_run_and_agent_take_one_option_set():
    run, agent = _option_rows("run"), _option_rows("agent")
    assert set(run) == set(agent)
    assert {"--service", "--upstream", "--server", "--token-file", "--log-level", "--app-port"} <= set(run)
    assert all(run[o] == agent[o] for o in run if o != "--app-port")  # the same help, word for word


def test_tap_takes_limit_and_its_old_spelling_max_hidden(monkeypatch):
    rows = _option_rows("tap")
    assert "--max" not in rows and "old spelling --max" in rows["--limit"]

    class Stream:  # the control plane's tap stream, three events long (the real one: test_observability.py)
        def stream(self, endpoint, query):
            yield {"tapping": ["server-v1"]}
            for i in range(3):
                yield {"n": i}

    monkeypatch.setattr(observe, "client", lambda server: Stream())
    for spelling in ("--limit", "--max"):
        result = runner.invoke(app, ["tap", "server", spelling, "2", "-o", "json"])
        assert result.exit_code == 0, result.output
        assert [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")] == [
            {"n": 0},
            {"n": 1},
        ]


@pytest.mark.parametrize(
    "given, rest, agent",
    [
        ("10.0.0.1", "http://10.0.0.1:15080", "https://10.0.0.1:15012"),
        ("10.0.0.1:9999", "http://10.0.0.1:9999", "https://10.0.0.1:9999"),
        ("10.0.0.1:15012", "http://10.0.0.1:15080", "https://10.0.0.1:15012"),
        ("10.0.0.1:15080", "http://10.0.0.1:15080", "https://10.0.0.1:15012"),
        ("http://10.0.0.1:15080", "http://10.0.0.1:15080", "https://10.0.0.1:15012"),
        ("https://10.0.0.1:15012", "http://10.0.0.1:15080", "https://10.0.0.1:15012"),
        ("https://cp.example:15012/", "http://cp.example:15080", "https://cp.example:15012"),
        ("[::1]:7000", "http://[::1]:7000", "https://[::1]:7000"),
    ],
)
def test_server_means_the_control_plane_in_either_shape(given, rest, agent):
    """--server names the control plane: the REST commands and the sidecar commands each read the
    other's default address on a host as their own on that host."""
    assert _this_api(given, ("http", 15080), ("https", 15012)) == rest
    assert _this_api(given, ("https", 15012), ("http", 15080)) == agent


def test_several_control_planes_are_read_alike():
    assert agent_url("https://10.0.0.1:15012,10.0.0.2") == "https://10.0.0.1:15012,https://10.0.0.2:15012"
    assert server_url("http://127.0.0.1:15080") == "http://127.0.0.1:15080"


def test_server_help_says_what_server_means():
    assert "The control plane to talk to: its agent API" in _help("run")
    assert "The control plane to talk to: its REST API" in _help("get")


def test_duration_rejects_what_is_not_one():
    with pytest.raises(typer.BadParameter):
        duration("ten seconds")
