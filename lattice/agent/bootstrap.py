"""Envoy's bootstrap: who it is, where its admin socket is, and that all config comes over ADS."""

from __future__ import annotations

import json
from pathlib import Path

from lattice.agent import stats_tags
from lattice.translate import SDS_CLUSTER
from lattice.translate.names import TELEMETRY_CLUSTER


# Istio's default stats inclusion list (its bootstrap's stats_matcher), in Lattice's names: the
# series that do not grow with the mesh. Istio's metrics themselves are Envoy's `lattice.` series
# (translate/istio_stats.py). Besides Istio's, per served port: the inbound connection manager's
# request counts and times (`lattice demo` reads them) and the open requests and connections to
# the app (a stopping sidecar waits for them, agent/drain.py) — not its other 70-odd series.
DEFAULT_STATS_PREFIXES = (
    "lattice.",
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-agent",
    "wasm",
)
DEFAULT_STATS_SUFFIXES = ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied", "downstream_cx_active")
DEFAULT_STATS_REGEXPS = (
    r"^http\.inbound_.+\.downstream_rq_(total|[1-5]xx|time|active)$",
    r"^cluster\.inbound\|[0-9]+\|\|\.upstream_(rq|cx)_active$",
)


def stats_matcher(prefixes=(), suffixes=(), regexps=()) -> dict:
    """Envoy keeps only these stats: Istio's short default list, plus what the workload asks for
    (Istio's statsInclusionPrefixes / Suffixes / Regexps). Stats left out cost no memory and no
    scrape bytes: a sidecar's cluster stats alone are some 200 series per service it knows."""
    patterns = [{"prefix": p} for p in (*DEFAULT_STATS_PREFIXES, *prefixes)]
    patterns += [{"suffix": x} for x in (*DEFAULT_STATS_SUFFIXES, *suffixes)]
    patterns += [{"safe_regex": {"regex": r}} for r in (*DEFAULT_STATS_REGEXPS, *regexps)]
    return {"stats_matcher": {"inclusion_list": {"patterns": patterns}}}


MAX_CONNECTIONS = 50000


def bootstrap(
    node_id: str,
    cluster: str,
    metadata: dict,
    admin_socket: Path,
    xds_socket: Path,
    sds_socket: Path,
    telemetry_socket: Path,
    stats_config: dict | None = None,
) -> dict:
    """`stats_config`: Envoy's (a `stats_matcher`); all stats when None. Istio's tag-extraction
    rules (agent/stats_tags.py) are always there: Envoy's metrics carry the labels Istio's docs query."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "stats_config": stats_tags.stats_config() | (stats_config or {}),
        "node": {"id": node_id, "cluster": cluster, "metadata": metadata},
        # At most this many connections open on all listeners together; more are closed as they come
        # (Envoy's edge-proxy guidance; the overload manager's monitor, not the deprecated runtime key).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_CONNECTIONS,
                    },
                }
            ]
        },
        # Admin on a 0600 unix socket: reachable by the agent only, never from the network.
        "admin": {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-agent"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        # Config (xDS) and certificates (SDS) both come from the agent over unix sockets; access
        # logs (the agent's metrics, tap) and spans go back to it over a third.
        "static_resources": {
            "clusters": [
                _grpc_cluster("xds-agent", xds_socket),
                _grpc_cluster(SDS_CLUSTER, sds_socket),
                _grpc_cluster(TELEMETRY_CLUSTER, telemetry_socket),
            ]
        },
        # A #fragment never belongs on the wire (RFC 9110 4.2.1): Envoy strips it before path
        # normalization, so routes, authorization and the app see one path, as Istio does,
        # instead of answering 400 to clients that send one.
        # The admin layer lets the agent switch the per-request stream on while someone taps
        # (translate/telemetry.TAP_RUNTIME_KEY), with no config push.
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "envoy.reloadable_features.http_reject_path_with_fragment": False,
                        # Istio's bootstrap value: the mesh's path policy (translate/paths.py) and
                        # users' regexes compile to more than RE2's default bound of 100.
                        "re2.max_program_size.error_level": 32768,
                    },
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
        # Histograms are merged from Envoy's threads when the agent reads them (once a second, and
        # per scrape), not on a timer of their own; idle per-path series (`lattice top`) go after a minute.
        "stats_flush_on_admin": True,
        "stats_eviction_interval": "60s",
    }


def _grpc_cluster(name: str, socket: Path) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket)}}}}]}],
        },
    }


def write_bootstrap(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, indent=2))
