"""How every proxy of the mesh reads a request before routing and policy: the path policy
(MeshConfig `pathNormalization`, translate/paths.py) and how many proxies in front of a gateway
are trusted to have written X-Forwarded-For (MeshConfig `defaultConfig.gatewayTopology.numTrustedProxies`).

Both are mesh-wide, fixed for the control plane's life (`lattice server --mesh-config`); so are
the bounds on silent connections (`lattice server --handshake-timeout`, `--idle-timeout`)."""

from __future__ import annotations

from dataclasses import dataclass

from lattice.api.mesh_config import MeshConfig


@dataclass(frozen=True)
class HttpPolicy:
    path_normalization: str = "DEFAULT"  # Lattice's strict default; or one of Istio's modes
    num_trusted_proxies: int = 0  # at gateways: the client is the peer, X-Forwarded-For is not believed
    # Every listener (translate/silence.py): the time a new connection has to finish its TLS
    # handshake or send its first bytes, and the time a connection manager keeps a connection
    # with no request open (`lattice server --handshake-timeout / --idle-timeout`).
    handshake_timeout: float = 10.0
    idle_timeout: float = 3600.0


def http_policy(config: MeshConfig) -> HttpPolicy:
    topology = config.default_config.gateway_topology if config.default_config else None
    return HttpPolicy(
        path_normalization=config.path_normalization.normalization if config.path_normalization else "DEFAULT",
        num_trusted_proxies=topology.num_trusted_proxies if topology else 0,
    )
