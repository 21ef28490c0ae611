"""Control-plane settings and the discovery file other commands read to find the server."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def lattice_home() -> Path:
    return Path(os.environ.get("LATTICE_HOME") or Path.home() / ".lattice")


@dataclass(frozen=True)
class ServerConfig:
    home: Path
    db: Path
    api_host: str = "127.0.0.1"
    api_port: int = 15080
    xds_host: str = "127.0.0.1"
    xds_port: int = 15010
    debounce: float = 0.1
    heartbeat_timeout: float = 15.0

    @property
    def discovery_file(self) -> Path:
        return self.home / "server.json"


def write_discovery(path: Path, api: str, xds: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"api": api, "xds": xds, "pid": os.getpid()}, indent=2))
    tmp.replace(path)


def read_discovery(home: Path) -> dict | None:
    """The running server's addresses, or None if none is recorded or its process is gone."""
    try:
        info = json.loads((home / "server.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info
