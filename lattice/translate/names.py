"""Names of generated resources, in Istio's format so its tooling habits carry over."""

from __future__ import annotations

OUTBOUND_ROUTE = "http_proxy"
OUTBOUND_LISTENER = "outbound_http"
PASSTHROUGH = "PassthroughCluster"
# The agent's telemetry socket (a static cluster of the bootstrap): access logs and spans go there.
TELEMETRY_CLUSTER = "lattice-telemetry"
# Envoy's RBAC filters: AuthorizationPolicy's (translate/authz.py) and the CUSTOM marker before
# ext_authz (translate/ext_authz.py), whose metadata the ext_authz filter reads under this name.
RBAC_HTTP_FILTER = "envoy.filters.http.rbac"
RBAC_NETWORK_FILTER = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."  # the stat prefix of every network filter on an inbound TCP chain


def outbound_cluster(port: int, subset: str | None, hostname: str) -> str:
    return f"outbound|{port}|{subset or ''}|{hostname}"


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def inbound_stat_prefix(port: int) -> str:
    """The inbound HTTP connection manager's (and TCP proxy's) stat prefix, Istio's
    `inbound_0.0.0.0_<port>`: Envoy's stats read `http.inbound_0.0.0.0_9080.*`, and Prometheus
    queries from Istio's docs (`envoy_http_inbound_0_0_0_0_80_rbac`) find them."""
    return f"inbound_0.0.0.0_{port}"


def inbound_listener(port: int) -> str:
    return f"inbound|{port}"


def parse_cluster(name: str) -> dict:
    """The parts of a cluster name, for `lattice proxy-config clusters`."""
    parts = name.split("|")
    if len(parts) != 4:
        return {"direction": "", "port": "", "subset": "", "host": name}
    direction, port, subset, host = parts
    return {"direction": direction, "port": port, "subset": subset, "host": host}
