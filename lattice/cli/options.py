"""The CLI's one grammar: option types and options that several commands share.

- `duration_option` — every time option: `100ms`, `15s`, `30m`, `24h`, `1m30s` (Istio's and Go's
  spelling). A bare number is seconds, as these options took before, so old scripts still work.
- `LogLevel`, `OutboundTrafficPolicy`, ... — options with a fixed set of values, as enums: listed
  in `--help` and checked by the parser.
- `AgentServerOpt` / `ServerOpt` (in `client.py`) — `--server` is always "the control plane to talk
  to"; a sidecar talks to its agent API (https, port 15012), every other command to its REST API
  (http, port 15080). Either shape is accepted where the other is expected, and several replicas
  comma-separated: a sidecar fails over between them, a REST command tries them in turn (`client.py`).
- `alias(...)` — an old spelling kept for one release: hidden from `--help`, named in the help of
  the option that replaces it.
"""

from __future__ import annotations

import enum
from typing import Any

import typer

from lattice.api.durations import parse_duration
from lattice.cli.output import fail


def duration(text: Any) -> float:
    """Seconds, from `100ms`, `15s`, `1m30s`, `24h` or a bare number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(str(text).strip())  # a bare number: seconds (the spelling these options had before)
    except ValueError:
        pass
    try:
        return parse_duration(str(text).strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration; write it like 100ms, 15s, 30m or 24h") from None


def duration_option(default: str | None, *names: str, help: str, **kwargs: Any) -> Any:
    """A time option: a DURATION, its default shown as written (`100ms`, not 0.1)."""
    return typer.Option(default, *names, parser=duration, metavar="DURATION", help=help, **kwargs)


def alias(old: str, new: str, default: Any = None, **kwargs: Any) -> Any:
    """The old spelling `old` of option `new`, hidden from --help (whose help names it); the caller
    takes its value when only `old` was given."""
    return typer.Option(default, old, hidden=True, help=f"Old spelling of {new}.", **kwargs)


def at_least(option: str, seconds: float, minimum: float, why: str = "") -> float:
    """A duration option's value, or a clear error naming the option when it is below `minimum`."""
    if seconds < minimum:
        fail(f"{option} must be at least {minimum:g}s{why}")
    return seconds


# Options with a fixed set of values: enums, so --help lists them and the parser checks them.
class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class OutboundTrafficPolicy(str, enum.Enum):
    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


class H2UpgradePolicy(str, enum.Enum):
    DO_NOT_UPGRADE = "DO_NOT_UPGRADE"
    UPGRADE = "UPGRADE"
