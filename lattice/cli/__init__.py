"""The `lattice` command: a thin client of the REST API, plus the process entry points.

Parts:
- `main`      — the typer app: server, run/agent, apply/get/delete, status, proxy-config, demo.
- `client`    — finds the control plane (`--server`, `$LATTICE_SERVER`, `$LATTICE_HOME/server.json`)
                and calls its REST API.
- `secrets`   — `lattice secret create|update tls`, list, get, delete (never the key).
- `output`    — tables (rich) and `-o json|yaml` for every read command.
- `options`   — the one grammar: durations for every time option, enums for fixed choices, old
                spellings as hidden aliases for one release.

Rules: no mesh logic here; every error says what went wrong and what to do next.
"""
