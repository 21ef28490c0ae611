"""The `lattice` command's entry point: the CLI, except that `lattice run` and `lattice agent`
start their agent while their command line is parsed.

Parsing a command line loads the whole CLI (typer, its pydantic-based coercion, every command's
schemas): about 0.3 s before the agent (agent/launch.py) could start importing what it runs on,
another 0.3 s. For `run` and `agent` this process forks: the child parses the command line exactly
as the CLI always does (help, errors and exit codes included) and hands the parsed options over a
pipe, while this process, at once, becomes the agent (`python -m lattice.agent`, same pid, same
standard streams) and imports the agent meanwhile. An agent whose parser hands nothing over (help
asked for, a bad option) exits with the parser's own exit code, after the parser said why.
"""

from __future__ import annotations

import os
import sys

SIDECAR_COMMANDS = ("run", "agent")  # the commands whose process becomes an agent (cli/main.py `_sidecar`)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SIDECAR_COMMANDS and sys.platform == "linux":
        _agent_while_parsing()
    from lattice.cli.main import app

    sys.exit(app())


def _agent_while_parsing() -> None:
    """Fork the parser; this process becomes the agent (returns only if the fork failed)."""
    from lattice.agent import launch

    try:
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parser = os.fork()
    except OSError:
        return  # parse, then become the agent, in turn
    if parser == 0:  # the child: parse as the CLI does; `become_agent` hands the options to the pipe
        os.close(read)
        launch.hand_options_to(write)
        return
    os.close(write)
    launch.exec_agent(read)
