"""The agent's own process: `lattice run` and `lattice agent` parse their options, then become it.

The CLI loads every command it knows (schemas, tables, the YAML parser) to parse one command
line; a sidecar agent runs for the app's whole life beside every workload, so it should not carry
them. `become_agent` hands the parsed `RunOptions` over in an anonymous in-memory file (not the
command line, not the environment: they hold the join token) and replaces the CLI's process with a
fresh interpreter (`python -m lattice.agent`, same pid, same standard streams) that imports only
the agent. `main` is that interpreter's side.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

OPTIONS_FD = "--options-fd"


def become_agent(options, log_level: str) -> NoReturn:
    """Replace this process with the agent, running `options` (never returns)."""
    fd = os.memfd_create("lattice-agent-options", 0)
    os.write(fd, json.dumps({"options": options.to_json(), "log_level": log_level}).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    # -P: the current directory is not put on the module path of a process that runs for long.
    # The CLI's own arguments follow, only so that `ps` shows what this sidecar was asked for.
    os.execv(sys.executable, [sys.executable, "-P", "-m", "lattice.agent", OPTIONS_FD, str(fd), *sys.argv[1:]])


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != OPTIONS_FD or not argv[1].isdigit():
        print(
            "error: this is the sidecar agent's process, started by `lattice run` or `lattice agent`; run those",
            file=sys.stderr,
        )
        return 2
    with os.fdopen(int(argv[1]), "rb") as handed:
        given = json.loads(handed.read())
    # gRPC's fork handlers only print warnings when the agent starts Envoy and the app; we never
    # use gRPC in a child, so they are off (read by gRPC at import, hence before any import of it).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from lattice.agent import keysmith

    keysmith.prestart()  # the first key is made while the agent loads (agent/keysmith.py)
    import asyncio
    import logging

    from lattice.agent.options import RunOptions
    from lattice.agent.sidecar import run_sidecar

    level = given["log_level"]
    logging.basicConfig(
        level="INFO" if level in ("debug", "info") else "WARNING",
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(run_sidecar(RunOptions.from_json(given["options"])))
    except (RuntimeError, OSError) as e:
        return _fail(str(e))
    except BaseExceptionGroup as group:  # a task of the sidecar's TaskGroup: its message, not a traceback
        first = _first_leaf(group)
        if not isinstance(first, (RuntimeError, OSError)):
            raise
        return _fail(str(first))


def _fail(message: str) -> int:
    """As the CLI says an error (lattice/cli/output.py `fail`): on stderr, red on a terminal."""
    prefix = "\x1b[1;31merror:\x1b[0m" if sys.stderr.isatty() else "error:"
    print(f"{prefix} {message}", file=sys.stderr, flush=True)
    return 1


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
