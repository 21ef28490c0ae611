"""The `lattice` command's entry point: the CLI, except that `lattice run` and `lattice agent`
start their agent while their command line is parsed.

Parsing a command line loads the whole CLI (typer, its pydantic-based coercion, every command's
schemas): about 0.3 s before the agent (agent/launch.py) could start importing what it runs on,
another 0.3 s. For `run` and `agent` this process forks a parser and, at once, becomes the agent
(`python -m lattice.agent`, same pid, same standard streams), which imports meanwhile. The parser
is a fresh interpreter of its own (`python -m lattice.cli.entry --parse-for-agent`; the command
line reaches it in an in-memory file, so `ps` never shows the workload's command twice): it parses
exactly as the CLI always does (help, errors and exit codes included) and hands the parsed options
over a pipe. An agent whose parser hands nothing over (help asked for, a bad option) exits with the
parser's own exit code, after the parser said why.
"""

from __future__ import annotations

import json
import os
import sys

SIDECAR_COMMANDS = ("run", "agent")  # the commands whose process becomes an agent (cli/main.py `_sidecar`)
PARSE_FOR_AGENT = "--parse-for-agent"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SIDECAR_COMMANDS and sys.platform == "linux":
        _agent_while_parsing()
    from lattice.cli.main import app

    sys.exit(app())


def _agent_while_parsing() -> None:
    """Fork the parser; this process becomes the agent (returns only if the fork failed)."""
    from lattice.agent import launch

    try:
        command_line = os.memfd_create("lattice-command-line", 0)
        os.write(command_line, json.dumps(sys.argv).encode())
        os.lseek(command_line, 0, os.SEEK_SET)
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parser = os.fork()
    except OSError:
        return  # parse, then become the agent, in turn
    if parser == 0:
        os.close(read)
        os.set_inheritable(command_line, True)
        os.set_inheritable(write, True)
        try:
            os.execv(
                sys.executable,
                [sys.executable, "-P", "-m", "lattice.cli.entry", PARSE_FOR_AGENT, str(command_line), str(write)],
            )
        finally:
            os._exit(127)  # (exec failed: the agent reads nothing and exits with this)
    os.close(write)
    os.close(command_line)
    os.environ[launch.PARSER_ENV] = str(parser)  # the agent waits for it (and only it) when it has read
    launch.exec_agent(read)


def _parse_for_agent(command_line: int, pipe: int) -> None:
    """The parser's side: the CLI on the agent's command line; `become_agent` writes to `pipe`."""
    from lattice.agent import launch

    with os.fdopen(command_line, "rb") as given:
        sys.argv = json.loads(given.read())
    launch.hand_options_to(pipe)
    from lattice.cli.main import app

    # Its name as the user typed it (not `python -m lattice.cli.entry`) in usage and errors.
    sys.exit(app(prog_name=os.path.basename(sys.argv[0])))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == PARSE_FOR_AGENT:
        _parse_for_agent(int(sys.argv[2]), int(sys.argv[3]))
    main()
