"""The agent's own process: `lattice run` and `lattice agent` parse their options, then become it.

The CLI loads every command it knows (schemas, tables, the YAML parser) to parse one command
line; a sidecar agent runs for the app's whole life beside every workload, so it should not carry
them. `become_agent` hands the parsed `RunOptions` over in an anonymous in-memory file (not the
command line, not the environment: they hold the join token) and replaces the CLI's process with a
fresh interpreter (`python -m lattice.agent`, same pid, same standard streams) that imports only
the agent. `main` is that interpreter's side. `lattice run` and `lattice agent` themselves fork
their parser first (cli/entry.py): their process becomes the agent at once and imports while the
child parses, and the options come over a pipe instead.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import NoReturn

OPTIONS_FD = "--options-fd"
PARSER_ENV = "LATTICE_OPTIONS_PARSER"  # the pid of the child parsing the command line (cli/entry.py)


_handing_to: int | None = None  # a pipe to the agent this process's parent became (cli/entry.py)


def hand_options_to(pipe: int) -> None:
    """This process only parses the command line: `become_agent` writes the options to `pipe`, to
    the agent that its parent already became (cli/entry.py), and exits."""
    global _handing_to
    _handing_to = pipe


def become_agent(options, log_level: str) -> NoReturn:
    """Replace this process with the agent, running `options` (never returns)."""
    given = json.dumps({"options": options.to_json(), "log_level": log_level}).encode()
    if _handing_to is not None:  # the agent runs already: it reads them, and this parser is done
        with os.fdopen(_handing_to, "wb") as pipe:
            pipe.write(given)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    fd = os.memfd_create("lattice-agent-options", 0)
    os.write(fd, given)
    os.lseek(fd, 0, os.SEEK_SET)
    exec_agent(fd)


def exec_agent(fd: int) -> NoReturn:
    """Replace this process with the agent, which reads its options from `fd` (an in-memory file,
    or a pipe from the parser: then it imports the agent while the parser works)."""
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
    from lattice.agent.phases import STARTUP

    STARTUP.mark("exec")  # `lattice run` re-executed this interpreter
    from lattice.agent import heap

    heap.steady()  # before the agent's allocations (agent/heap.py)
    fd = int(argv[1])
    parser = int(os.environ.pop(PARSER_ENV, "0") or 0)  # not for the app's or Envoy's environment
    from_parser = stat.S_ISFIFO(os.fstat(fd).st_mode) and parser > 0  # cli/entry.py
    if not from_parser:
        given = _read_options(fd)
    # gRPC's fork handlers only print warnings when the agent starts Envoy and the app; we never
    # use gRPC in a child, so they are off (read by gRPC at import, hence before any import of it).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from lattice.agent import keysmith

    keysmith.prestart()  # the first key is made while the agent loads (agent/keysmith.py)
    import asyncio
    import logging

    from lattice.agent.options import RunOptions
    from lattice.agent.sidecar import run_sidecar

    STARTUP.mark("imports")
    if from_parser:
        given = _read_options(fd)
        _, status = os.waitpid(parser, 0)
        if given is None:  # help, or a bad command line: the parser said so, its exit code is ours
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        STARTUP.mark("options")
    assert given is not None, "an in-memory file of options is never empty"
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


def _read_options(fd: int) -> dict | None:
    with os.fdopen(fd, "rb") as handed:
        data = handed.read()
    return json.loads(data) if data else None


def _fail(message: str) -> int:
    """As the CLI says an error (lattice/cli/output.py `fail`): on stderr, red on a terminal."""
    prefix = "\x1b[1;31merror:\x1b[0m" if sys.stderr.isatty() else "error:"
    print(f"{prefix} {message}", file=sys.stderr, flush=True)
    return 1


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
