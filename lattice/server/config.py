"""Control-plane settings and the discovery file other commands read to find the server."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lattice.mesh.http_policy import HttpPolicy
    from lattice.mesh.telemetry import MeshTelemetry


def lattice_home() -> Path:
    return Path(os.environ.get("LATTICE_HOME") or Path.home() / ".lattice")


@dataclass(frozen=True)
class ServerConfig:
    home: Path
    db: Path
    store: str | None = None  # etcd://host:port,...[/prefix] for several replicas; None: the SQLite file `db`
    store_tls: tuple = (None, None, None)  # (--store-ca, --store-cert, --store-key) files for TLS to etcd
    api_host: str = "127.0.0.1"
    api_port: int = 15080
    xds_host: str = "127.0.0.1"
    xds_port: int = 15010
    agent_host: str = "127.0.0.1"
    agent_port: int = 15012
    debounce: float = 0.1
    heartbeat_timeout: float = 15.0  # silent after this long without a heartbeat
    endpoint_grace: float = 300.0  # a silent workload's endpoints stay this long (a partition is not an outage)
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    cert_ttl: float = 24 * 3600.0
    ca_cert: Path | None = None
    ca_key: Path | None = None
    root_lifetime: float = 3650 * 86400.0  # of each root generated here
    root_rotate_at: float = 0.8  # of a root's life: it rotates itself then (server/ca_duty.py)
    outbound_traffic_policy: str = "ALLOW_ANY"  # Istio's MeshConfig outboundTrafficPolicy.mode, or REGISTRY_ONLY
    h2_upgrade_policy: str = "DO_NOT_UPGRADE"  # Istio's MeshConfig h2UpgradePolicy, or UPGRADE
    extension_providers: tuple = ()  # MeshConfig extensionProviders (`--mesh-config`): CUSTOM authorizers
    mesh_telemetry: MeshTelemetry | None = None  # MeshConfig's telemetry part (`--mesh-config`); None: Istio's defaults
    http_policy: HttpPolicy | None = None  # MeshConfig's pathNormalization and numTrustedProxies; None: the defaults
    jwks_refresh: float = 20 * 60.0  # seconds between fetches of RequestAuthentication jwksUris (Istio's default)
    module_refresh: float = 5 * 60.0  # seconds between fetches of extensions' unpinned Wasm modules

    @property
    def discovery_file(self) -> Path:
        return self.home / "server.json"

    @property
    def admin_token_file(self) -> Path:
        return self.home / ADMIN_TOKEN_FILE


ADMIN_TOKEN_FILE = "admin-token"
METRICS_TOKEN_FILE = "metrics-token"  # read-only: Prometheus' service discovery, nothing else


def load_mesh_config(path: Path) -> tuple[tuple, MeshTelemetry, HttpPolicy]:
    """An Istio MeshConfig file's external authorizers (what CUSTOM AuthorizationPolicies name),
    its telemetry part (defaults, trace and access log providers) and its path and X-Forwarded-For
    policy; ValidationError names the bad field."""
    from lattice.api.mesh_config import parse_mesh_config
    from lattice.mesh.http_policy import http_policy
    from lattice.mesh.telemetry import mesh_telemetry

    config = parse_mesh_config(path.read_text(), str(path))
    providers = tuple(p for p in config.extension_providers if p.authorizer is not None)
    return providers, mesh_telemetry(config), http_policy(config)


def admin_token(home: Path, name: str = ADMIN_TOKEN_FILE) -> str:
    """The REST API's admin credential (or, by `name`, the read-only metrics one): created on the
    server's first start, readable by its owner only."""
    path = home / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


def write_discovery(path: Path, api: str, xds: str, agent: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"api": api, "xds": xds, "agent": agent, "pid": os.getpid()}, indent=2))
    tmp.replace(path)


def read_discovery(home: Path) -> dict | None:
    """The running server's addresses, or None if none is recorded or its process is gone."""
    try:
        info = json.loads((home / "server.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info
