"""What each piece of a real Lattice sidecar's HTTP connection manager costs one Envoy per request.

    .venv/bin/python bench/sidecar_pieces.py [--rounds 10] [--seconds 1.5] [--side inbound|outbound|both]

Issue 16's data plane gap, taken apart: `bench/dataplane.py` says how much more CPU a request costs
through two Lattice sidecars than through the hand-written Envoy pair; this says where it goes.
It starts a control plane and two `lattice run` sidecars as `bench/dataplane.py`'s `lattice` path
has them (STRICT mTLS, an ALLOW policy on the server, telemetry as shipped), reads each sidecar's
config as Envoy holds it (admin `/config_dump`), and runs one static Envoy per variant of one side's
connection manager, all at once:
  - `full`: the sidecar's own (outbound: the client's, with its route table from RDS; inbound: the
    server's), every filter, access log, tracer and option as delivered, and the cluster its
    requests go to with its balancer, outlier detection and circuit breakers;
  - `plain router`: the hand-written pair's (a router, one route, a plain cluster), the floor;
  - `- <piece>`: the full one without that piece (tracing, each access log, the path policy
    filters, RBAC, header_to_metadata, the proxy credential check, the outbound cors / fault /
    dynamic forward proxy filters, the retry policy and extra routes, the connection manager's
    options, the cluster's settings).
Each Envoy takes plain HTTP/1.1 on a port of its own and forwards to the same app (an Envoy that
answers `200 ok`); a closed loop of 16 keep-alive connections drives one variant at a time, in
rounds whose order rotates. Figure: the Envoy's CPU (utime + stime) per request over the run, in
microseconds; min, first quartile and median of the rounds, and each against `full`. Another
process on the machine only ever adds CPU, so the minimum is the best estimate of a variant's own
cost and the spread says how loaded the machine was.

What it leaves out: TLS (the pieces run on plaintext, the same for every variant: the cluster's
endpoints are the app's, without EDS and the mTLS socket; on the inbound side the RBAC policy's
principal becomes `any`, there being no peer certificate, so the filter still evaluates the
policy), the agent, xDS and SDS (no per-request cost), and the other side.
Removing a piece can cost less than its share when pieces share work (both stats loggers and the
failures stream walk the same finished request): the sum of the `-` rows is not the gap.

    .venv/bin/python bench/sidecar_pieces.py --chain [--rounds 6] [--seconds 2]

With `--chain`, the whole path instead, with mTLS: the hand-written pair, the live sidecars, and
static copies of the two sidecars (each side's connection manager and cluster as Envoy holds
them, the SDS certificates replaced by inline ones of the same SPIFFE identities, the server's
endpoint with the peer metadata the control plane gives it, RBAC as delivered), whole and
without tracing, Istio's metrics' stats logger, every access log, all telemetry (each variant
edits both sides). A closed loop of 32 connections drives each chain in turn; the figure is the
CPU of both Envoys per request at saturation, and the median max rps. The copy costs what the live
sidecars cost (within a few percent): what a variant saves there is what the piece costs them.

    .venv/bin/python bench/sidecar_pieces.py --chain --bisect --connections 1 --workers-only [--rate 1000]

`--connections 1`: one request at a time, so each wakes every Envoy on its own and nothing batches
(a loaded machine batches a closed loop of 32 connections more or less from round to round, which
moves CPU per request more than most pieces cost); `--workers-only`: the worker threads' CPU, the
request path alone; `--rate`: an open loop at that rate too (each Envoy's whole CPU, as
bench/dataplane.py counts it). `--bisect` adds the live sidecars with telemetry off (a Telemetry
resource, as bench/dataplane.py's path) and static copies with the live bootstrap's node metadata,
overload manager and stats flush setting; with the pair's plain router over the sidecars' TLS and
clusters; without the `lattice top` histogram; without the failures stream; with `~proto`
computed by CEL as before 1ecabb8.

    .venv/bin/python bench/sidecar_pieces.py --chain --rest --connections 1 --workers-only

`--rest`, instead of the telemetry variants: what the connection managers cost beyond telemetry.
Every copy but the first is without tracing and access logs, and each without one more piece
(the path policy, header_to_metadata, the proxy credential, the outbound cors / fault / dynamic
forward proxy filters, RBAC, the retry policy and extra routes, the connection manager's options,
every filter but the router), so a piece's few µs are not read against telemetry's larger swings.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import procstat  # noqa: E402
from closedloop import max_rate  # noqa: E402
from openloop import run as run_open  # noqa: E402
from dataplane import HOST, POLICIES, QUIET_HOST, QUIET_URL, URL, _sidecar_envoy, rotated  # noqa: E402
from envoy_pair import _ROUTER, EnvoyPair, StaticEnvoy, admin_get, app_command, issue  # noqa: E402
from harness import ControlPlane, Workload, running  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lattice.agent.envoy import envoy_binary  # noqa: E402
from lattice.translate.agent_names import PEER_ENV, PROXY_USER, PROXY_USERS_ENV  # noqa: E402
from lattice.translate.istio_stats import PROTOCOL, STATS_LOGGER  # noqa: E402

DEFAULT_JSON = Path(__file__).parent / "results" / "sidecar_pieces.json"
HCM_NAME = "envoy.filters.network.http_connection_manager"
GRPC_LOGGER = "envoy.access_loggers.http_grpc"
# What the live bootstrap has and the static copies' minimal one does not (besides xDS and SDS).
LIVE_BOOTSTRAP = ("node", "overload_manager", "stats_flush_on_admin", "stats_eviction_interval")
CONNECTIONS = 16
SIDE_OF = {"outbound": "bench-client", "inbound": "bench-server"}

Edit = Callable[[dict], None]


@dataclass(frozen=True)
class Variant:
    edit: Edit  # what it does to the connection manager
    plain_cluster: bool = False  # the pair's plain cluster instead of the sidecar's own


# -- the sidecars' own config -------------------------------------------------------------------


def _dump(admin: Path) -> dict:
    return json.loads(admin_get(admin, "/config_dump", timeout=10))


def _of_type(dump: dict, suffix: str) -> dict:
    return next(c for c in dump["configs"] if c["@type"].endswith(suffix))


def connection_manager(dump: dict, side: str) -> dict:
    """The side's connection manager as Envoy holds it, its RDS route table inlined."""
    listener = next(
        entry["active_state"]["listener"]
        for entry in _of_type(dump, ".ListenersConfigDump")["dynamic_listeners"]
        if entry["name"].startswith(side)
    )
    manager = copy.deepcopy(listener["filter_chains"][0]["filters"][0]["typed_config"])
    if "rds" in manager:
        name = manager.pop("rds")["route_config_name"]
        routes = _of_type(dump, ".RoutesConfigDump")["dynamic_route_configs"]
        table = next(r["route_config"] for r in routes if r["route_config"]["name"] == name)
        manager["route_config"] = {k: v for k, v in copy.deepcopy(table).items() if k != "@type"}
    return manager


def upstream_cluster(dump: dict, manager: dict) -> dict:
    """The cluster the bench's requests go to, as the sidecar holds it (outbound: the server's
    service, its balancer, outlier detection and circuit breakers; inbound: the app's), sent to
    the one app in plaintext: no EDS, no mTLS socket (see the module docstring)."""
    wanted = next(
        route["route"]["cluster"]
        for host in manager["route_config"]["virtual_hosts"]
        if "bench-server:9080" in host["domains"] or host["domains"] == ["*"]
        for route in host["routes"]
        if "route" in route
    )
    clusters = _of_type(dump, ".ClustersConfigDump").get("dynamic_active_clusters", [])
    cluster = copy.deepcopy(next(c["cluster"] for c in clusters if c["cluster"]["name"] == wanted))
    for key in ("@type", "eds_cluster_config", "transport_socket_matches", "transport_socket"):
        cluster.pop(key, None)
    cluster["type"] = "STATIC"
    return cluster


def _to_app(manager: dict) -> None:
    """Every route that forwards goes to the one app; the credential's users and the RBAC
    principals become what a static plaintext Envoy can check (see the module docstring)."""
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if "route" in route:
                route["route"]["cluster"] = "app"
    for f in manager.get("http_filters", []):
        config = f.get("typed_config", {})
        if f["name"] == "envoy.filters.http.basic_auth":
            config["users"] = {"environment_variable": PROXY_USERS_ENV}
        if config.get("@type", "").endswith("rbac.v3.RBAC"):
            for policy in config.get("rules", {}).get("policies", {}).values():
                policy["principals"] = [{"any": True}]


# -- the variants -------------------------------------------------------------------------------


def _without_filters(*names: str) -> Edit:
    def edit(manager: dict) -> None:
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]

    return edit


def _is_paths_logger(log: dict) -> bool:
    histograms = log.get("typed_config", {}).get("value", {}).get("histograms", [])
    return log["name"] == STATS_LOGGER and any(h["stat"]["name"] == "path" for h in histograms)


def _without_logs(unwanted: Callable[[dict], bool]) -> Edit:
    def edit(manager: dict) -> None:
        manager["access_log"] = [log for log in manager.get("access_log", []) if not unwanted(log)]

    return edit


def _stats(manager: dict):
    """Every histogram's stat (name and tags) in the connection manager's stats loggers."""
    for log in manager.get("access_log", []):
        for histogram in log.get("typed_config", {}).get("value", {}).get("histograms", []):
            yield histogram["stat"]


def _without_proto(manager: dict) -> None:
    for stat in _stats(manager):
        stat["tags"] = [t for t in stat["tags"] if t["name"] != "~proto"]


def _with_cel_proto(manager: dict) -> None:
    """`~proto` as it was computed before 1ecabb8: a CEL expression in each histogram."""
    for stat in _stats(manager):
        for tag in stat["tags"]:
            if tag["name"] == "~proto":
                tag["value_format"] = PROTOCOL  # the overrides' CEL expression, as `~proto` had it


def _plain_router_to_cluster(manager: dict) -> None:
    """The pair's connection manager (a router, one route), to the cluster the sidecar's routes name."""
    cluster = next(
        route["route"]["cluster"]
        for host in manager["route_config"]["virtual_hosts"]
        for route in host["routes"]
        if "route" in route
    )
    _plain_router(manager)
    manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = cluster


def _without_route_extras(manager: dict) -> None:
    """Only forwarding routes (and the mesh domain's 503), no retry policy, no added header."""
    for host in manager["route_config"]["virtual_hosts"]:
        host["routes"] = [r for r in host["routes"] if "route" in r or r.get("name") == "mesh_domain"]
        host.pop("request_headers_to_add", None)
        for route in host["routes"]:
            if "route" in route:
                route["route"].pop("retry_policy", None)


_OPTIONS = (
    "forward_client_cert_details",
    "set_current_client_cert_details",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
    "original_ip_detection_extensions",
    "strip_trailing_host_dot",
    "early_header_mutation_extensions",
    "common_http_protocol_options",
    "request_headers_timeout",
    "upgrade_configs",
    "local_reply_config",
)


def _plain_router(manager: dict) -> None:
    for key in list(manager):
        if key not in ("@type", "stat_prefix"):
            manager.pop(key)
    manager["http_filters"] = [_ROUTER]
    route = {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    manager["route_config"] = {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [route]}]}


# The mesh's HTTP filters by piece, as the variants remove them (RBAC's are named per policy).
PATH_POLICY = ("lattice.path_policy", "lattice.path_policy.utf8")
HEADER_TO_METADATA = ("envoy.filters.http.header_to_metadata",)
PROXY_CREDENTIAL = ("envoy.filters.http.basic_auth", "envoy.filters.http.header_mutation")
OUTBOUND_EXTRAS = ("envoy.filters.http.cors", "envoy.filters.http.fault", "envoy.filters.http.dynamic_forward_proxy")


def _rbac_filters(manager: dict) -> tuple[str, ...]:
    return tuple(f["name"] for f in manager.get("http_filters", []) if f["name"].startswith("lattice.authz"))


def _without_rbac(manager: dict) -> None:
    _without_filters(*_rbac_filters(manager))(manager)


def variants(manager: dict) -> dict[str, Variant]:
    """The variants that apply to this side's connection manager (a piece it lacks is left out)."""
    filters = {f["name"] for f in manager.get("http_filters", [])}
    logs = manager.get("access_log", [])
    istio = lambda log: log["name"] == STATS_LOGGER and not _is_paths_logger(log)  # noqa: E731
    out: dict[str, Edit | Variant] = {"full": lambda m: None, "plain router": Variant(_plain_router, True)}
    if "tracing" in manager:
        out["- tracing"] = lambda m: m.pop("tracing", None)
    if logs:
        out["- all access logs"] = lambda m: m.pop("access_log", None)
        if "tracing" in manager:
            out["- tracing, all access logs"] = lambda m: (m.pop("tracing", None), m.pop("access_log", None))
    if any(istio(log) for log in logs):
        out["- Istio metrics' stats logger"] = _without_logs(istio)
        out["- its ~proto tag"] = _without_proto
    if any(_is_paths_logger(log) for log in logs):
        out["- `lattice top` path histogram"] = _without_logs(_is_paths_logger)
    if any(log["name"] == GRPC_LOGGER for log in logs):
        out["- failures stream to the agent"] = _without_logs(lambda log: log["name"] == GRPC_LOGGER)
    pieces = {
        "- path policy (2 fault filters)": PATH_POLICY,
        "- RBAC": _rbac_filters(manager),
        "- header_to_metadata": HEADER_TO_METADATA,
        "- proxy credential (basic_auth)": PROXY_CREDENTIAL,
        "- cors, fault, dynamic forward proxy": OUTBOUND_EXTRAS,
    }
    for label, names in pieces.items():
        if names and filters.intersection(names):
            out[label] = _without_filters(*names)
    out["- retries, extra routes, added header"] = _without_route_extras
    out["- connection manager options"] = lambda m: [m.pop(k, None) for k in _OPTIONS]
    out["- cluster settings (balancer, outlier detection, breakers)"] = Variant(lambda m: None, True)
    return {label: v if isinstance(v, Variant) else Variant(v) for label, v in out.items()}


def bootstrap(manager: dict, variant: Variant, app_port: int, dump: dict, admin: Path) -> dict:
    cluster = {} if variant.plain_cluster else upstream_cluster(dump, manager)
    manager = copy.deepcopy(manager)
    _to_app(manager)
    variant.edit(manager)
    manager["stat_prefix"] = "pieces"
    boot = _of_type(dump, ".BootstrapConfigDump")["bootstrap"]
    telemetry = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "lattice-telemetry")
    app = cluster | {
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "app",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}}
                    ]
                }
            ],
        },
    }
    listener = {
        "name": "pieces",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": manager}]}],
    }
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "stats_config": boot["stats_config"],  # the sidecar's stats matcher and tag extraction
        "layered_runtime": boot.get("layered_runtime", {}),
        "static_resources": {"listeners": [listener], "clusters": [app, telemetry]},
    }


# -- measuring ----------------------------------------------------------------------------------


def _request(side: str, credential: str) -> tuple[str, str, dict[str, str]]:
    """(url, host, headers) as the app sends it outbound (proxy form, its credential) and as the
    calling sidecar sends it inbound (with its peer header)."""
    if side == "outbound":
        token = base64.b64encode(f"{PROXY_USER}:{credential}".encode()).decode()
        return "http://bench-server:9080/", "bench-server:9080", {"proxy-authorization": f"Basic {token}"}
    return "/", "bench-server:9080", {"x-lattice-peer": os.environ[PEER_ENV]}


def _quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "min": ordered[0],
        "q1": ordered[len(ordered) // 4],
        "median": statistics.median(ordered),
        "all": ordered,
    }


def _finished(result: dict, loads: list[float], started: float) -> dict:
    """`result` with the load seen during the rounds, the machine, and the wall time taken."""
    result["load_average"] = {"min": min(loads), "max": max(loads)}
    result["machine"] = procstat.machine(envoy_binary())
    result["wall_seconds"] = time.monotonic() - started
    return result


def measure(rounds: int, seconds: float, sides: list[str]) -> dict:
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-pieces-"))
    generator_cpus, server_cpus = procstat.split_cpus()
    credential = secrets.token_urlsafe(24)  # this run's own, for the static Envoys' proxy check
    digest = base64.b64encode(hashlib.sha1(credential.encode()).digest()).decode()
    os.environ[PROXY_USERS_ENV] = f"{PROXY_USER}:{{SHA}}{digest}"  # inherited by the Envoys started below
    os.environ[PEER_ENV] = "bench-client-v1;default;bench-client;v1;bench-client;v1"
    result: dict = {"rounds": rounds, "seconds": seconds, "connections": CONNECTIONS, "sides": {}}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)  # last: after every process stopped
        with procstat.pinned(server_cpus):
            plane = ControlPlane(home / "home").start()
            stack.callback(plane.stop)
            plane.apply(POLICIES)
            quiet = ("--log-level", "warning")
            names = ("bench-client", "bench-server")
            workloads = [Workload(plane, n, command=app_command(), extra=quiet) for n in names]
            client, server = stack.enter_context(running(plane, workloads))
            dumps = {"outbound": _dump(_sidecar_envoy(client)[1]), "inbound": _dump(_sidecar_envoy(server)[1])}
            app_port = server.info["app_port"]
            envoys: dict[str, dict[str, StaticEnvoy]] = {}
            for side in sides:
                manager = connection_manager(dumps[side], side)
                envoys[side] = {}
                for i, (label, variant) in enumerate(variants(manager).items()):
                    config = bootstrap(manager, variant, app_port, dumps[side], home / f"{side}-{i}.sock")
                    envoy = StaticEnvoy(home, f"{side}-{i}", config, "warning")
                    stack.callback(envoy.stop)
                    envoys[side][label] = envoy
        loads = [os.getloadavg()[0]]
        with procstat.pinned(generator_cpus):
            for side in sides:
                url, host, headers = _request(side, credential)
                labels = list(envoys[side])
                samples: dict[str, list[float]] = {label: [] for label in labels}
                errors = dict.fromkeys(labels, 0)
                for round_ in range(rounds):
                    for label in rotated(labels, round_):
                        envoy = envoys[side][label]
                        cpu: dict[str, float] = {}

                        def window(start: bool, pid: int = envoy.pid, cpu: dict = cpu) -> None:
                            cpu["start" if start else "end"] = procstat.cpu_seconds(pid)

                        done = max_rate(
                            ("127.0.0.1", envoy.port), url, host, CONNECTIONS, seconds, 0.2, headers, window
                        )
                        errors[label] += done.errors
                        if done.requests:
                            samples[label].append((cpu["end"] - cpu["start"]) / done.requests * 1e6)
                    loads.append(os.getloadavg()[0])
                result["sides"][side] = {
                    label: {"us_per_request": _quantiles(samples[label]), "errors": errors[label]}
                    for label in labels
                    if samples[label]
                }
    return _finished(result, loads, started)


# -- the chain: client → mTLS → server, as the live sidecars (--chain) ---------------------------

PEER_OF_SERVER = (
    "bench-server-v1;default;bench-server;v1;bench-server;v1;spiffe://cluster.local/ns/default/sa/bench-server"
)
CHAIN_VARIANTS: dict[str, Edit] = {
    "static copy of the sidecars": lambda m: None,
    "- tracing": lambda m: m.pop("tracing", None),
    "- Istio metrics' stats logger": _without_logs(
        lambda log: log["name"] == STATS_LOGGER and not _is_paths_logger(log)
    ),
    "- all access logs": lambda m: m.pop("access_log", None),
    "- all telemetry (tracing, every access log)": lambda m: (m.pop("tracing", None), m.pop("access_log", None)),
}
# With --bisect, besides: where a live sidecar's cost per request is, piece by piece.
BISECT_VARIANTS: dict[str, Edit] = {
    "static copy + the live bootstrap's node, overload manager, stats flush": lambda m: None,
    "the pair's plain router, the sidecars' TLS and clusters": _plain_router_to_cluster,
    "- `lattice top` path histogram": _without_logs(_is_paths_logger),
    "- failures stream to the agent": _without_logs(lambda log: log["name"] == GRPC_LOGGER),
    "with `~proto` by CEL (before 1ecabb8)": _with_cel_proto,
}


def _without_telemetry(then: Edit) -> Edit:
    """No tracing and no access log, then `then`: a piece of what is left once telemetry is off."""

    def edit(manager: dict) -> None:
        manager.pop("tracing", None)
        manager.pop("access_log", None)
        then(manager)

    return edit


def _only_router(manager: dict) -> None:
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] == _ROUTER["name"]]


# With --rest, instead: what the connection managers cost beyond telemetry, piece by piece, each
# variant without tracing and access logs (so a piece's share is not hidden under theirs).
REST_VARIANTS: dict[str, Edit] = {
    "static copy of the sidecars": lambda m: None,
    "- all telemetry": _without_telemetry(lambda m: None),
    "- all telemetry, path policy": _without_telemetry(_without_filters(*PATH_POLICY)),
    "- all telemetry, header_to_metadata": _without_telemetry(_without_filters(*HEADER_TO_METADATA)),
    "- all telemetry, proxy credential": _without_telemetry(_without_filters(*PROXY_CREDENTIAL)),
    "- all telemetry, cors, fault, dynamic forward proxy": _without_telemetry(_without_filters(*OUTBOUND_EXTRAS)),
    "- all telemetry, RBAC": _without_telemetry(_without_rbac),
    "- all telemetry, retries, extra routes, added header": _without_telemetry(_without_route_extras),
    "- all telemetry, connection manager options": _without_telemetry(lambda m: [m.pop(k, None) for k in _OPTIONS]),
    "- all telemetry, every filter but the router": _without_telemetry(_only_router),
    "the pair's plain router, the sidecars' TLS and clusters": _plain_router_to_cluster,
}


def _inline_tls(context: dict, credentials) -> dict:
    """A sidecar's TLS context with its SDS secrets replaced by inline ones of the same identity."""
    context = copy.deepcopy(context)
    context.pop("tls_certificate_sds_secret_configs", None)
    context["tls_certificates"] = [
        {
            "certificate_chain": {"inline_string": credentials.chain},
            "private_key": {"inline_string": credentials.key},
        }
    ]
    validation = context.pop("combined_validation_context", {}).get("default_validation_context", {})
    context["validation_context"] = validation | {"trusted_ca": {"inline_string": credentials.root}}
    return context


def _static(dump: dict, admin: Path, listener: dict, clusters: list[dict]) -> dict:
    boot = _of_type(dump, ".BootstrapConfigDump")["bootstrap"]
    telemetry = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "lattice-telemetry")
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "stats_config": boot["stats_config"],
        "layered_runtime": boot.get("layered_runtime", {}),
        "static_resources": {"listeners": [listener], "clusters": [*clusters, telemetry]},
    }


def _endpoint(port: int, metadata: dict | None = None) -> dict:
    endpoint: dict = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if metadata:
        endpoint["metadata"] = {"filter_metadata": metadata}
    return endpoint


def server_chain(dump: dict, edit: Edit, app_port: int, credentials, admin: Path) -> dict:
    """The server sidecar's mTLS inbound chain and its cluster to the app, RBAC as delivered."""
    listener = next(
        e["active_state"]["listener"]
        for e in _of_type(dump, ".ListenersConfigDump")["dynamic_listeners"]
        if e["name"].startswith("inbound")
    )
    chain = next(fc for fc in listener["filter_chains"] if "transport_socket" in fc)
    manager = copy.deepcopy(chain["filters"][0]["typed_config"])
    cluster = upstream_cluster(dump, manager)
    edit(manager)
    cluster["load_assignment"] = {
        "cluster_name": cluster["name"],
        "endpoints": [{"lb_endpoints": [_endpoint(app_port)]}],
    }
    socket = copy.deepcopy(chain["transport_socket"])
    socket["typed_config"]["common_tls_context"] = _inline_tls(
        socket["typed_config"]["common_tls_context"], credentials
    )
    out = {
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": manager}], "transport_socket": socket}],
    }
    return _static(dump, admin, out, [cluster])


def client_chain(dump: dict, edit: Edit, server_port: int, credentials, admin: Path) -> dict:
    """The client sidecar's outbound listener and the server's cluster with its mTLS socket, its
    one endpoint the server chain's, with the peer metadata the control plane gives it."""
    manager = connection_manager(dump, "outbound")
    cluster = upstream_cluster(dump, manager)
    real = next(
        c["cluster"]
        for c in _of_type(dump, ".ClustersConfigDump")["dynamic_active_clusters"]
        if c["cluster"]["name"] == cluster["name"]
    )
    edit(manager)
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if "route" in route:
                route["route"]["cluster"] = cluster["name"]
    for f in manager.get("http_filters", []):
        if f["name"] == "envoy.filters.http.basic_auth":
            f["typed_config"]["users"] = {"environment_variable": PROXY_USERS_ENV}
    socket = copy.deepcopy(real["transport_socket_matches"][0]["transport_socket"])
    socket["typed_config"]["common_tls_context"] = _inline_tls(
        socket["typed_config"]["common_tls_context"], credentials
    )
    cluster["transport_socket"] = socket
    endpoint = _endpoint(server_port, {"lattice": {"peer": PEER_OF_SERVER}})
    cluster["load_assignment"] = {"cluster_name": cluster["name"], "endpoints": [{"lb_endpoints": [endpoint]}]}
    out = {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": manager}]}],
    }
    return _static(dump, admin, out, [cluster])


def _worker_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of an Envoy's worker threads (`wrk:*`): the request path only, not
    the main thread's xDS, admin and stats work."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "comm").read_text().startswith("wrk:"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass(frozen=True)
class ChainSettings:
    rounds: int = 6
    seconds: float = 2.0
    connections: int = 32  # closed loop; 1: every request wakes each Envoy on its own, nothing batches
    rate: float = 0.0  # also an open loop at this many requests/s (0: none)
    workers_only: bool = False  # CPU of the worker threads only
    bisect: bool = False  # BISECT_VARIANTS and the live sidecars with telemetry off, besides
    rest: bool = False  # REST_VARIANTS instead of CHAIN_VARIANTS


def _chain_workloads(plane: ControlPlane, bisect: bool) -> list[Workload]:
    quiet = ("--log-level", "warning")
    names = ["bench-client", "bench-server"] + (["bench-quiet-client", "bench-quiet-server"] if bisect else [])
    return [Workload(plane, n, command=app_command(), extra=quiet) for n in names]


def measure_chain(settings: ChainSettings) -> dict:
    """The pair, the live sidecars and static mTLS copies of them (each variant edits both sides),
    each driven in turn by a closed loop (and an open loop at `rate`): CPU per request of both Envoys."""
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="lattice-bench-chain-"))
    generator_cpus, server_cpus = procstat.split_cpus()
    credential = secrets.token_urlsafe(24)
    digest = base64.b64encode(hashlib.sha1(credential.encode()).digest()).decode()
    os.environ[PROXY_USERS_ENV] = f"{PROXY_USER}:{{SHA}}{digest}"
    os.environ[PEER_ENV] = "bench-client-v1;default;bench-client;v1;bench-client;v1"
    token = base64.b64encode(f"{PROXY_USER}:{credential}".encode()).decode()
    url, host = URL, HOST
    result: dict = dataclasses.asdict(settings) | {"chains": {}}
    cpu_of = _worker_cpu_seconds if settings.workers_only else procstat.cpu_seconds
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        with procstat.pinned(server_cpus):
            plane = ControlPlane(home / "home").start()
            stack.callback(plane.stop)
            plane.apply(POLICIES)
            client, server, *quiet = stack.enter_context(running(plane, _chain_workloads(plane, settings.bisect)))
            (client_pid, client_admin), (server_pid, server_admin) = _sidecar_envoy(client), _sidecar_envoy(server)
            client_dump, server_dump = _dump(client_admin), _dump(server_admin)
            app_port = server.info["app_port"]
            pair = EnvoyPair.start(home / "pair", app_port)
            stack.callback(pair.stop)
            credentials = issue(["bench-client", "bench-server"])
            # label → (target, headers, (client pid, server pid), url, host)
            chains: dict[str, tuple[tuple[str, int], dict, tuple[int, int], str, str]] = {
                "hand-written pair": (("127.0.0.1", pair.port), {}, (pair.client.pid, pair.server.pid), url, host),
                "live sidecars": ((client.address, 15001), client.proxy_headers, (client_pid, server_pid), url, host),
            }
            if quiet:
                off = (quiet[0].address, 15001), quiet[0].proxy_headers
                pids = (_sidecar_envoy(quiet[0])[0], _sidecar_envoy(quiet[1])[0])
                chains["live sidecars, telemetry off"] = (*off, pids, *_QUIET_TARGET)
            if settings.rest:
                variants = REST_VARIANTS
            else:
                variants = CHAIN_VARIANTS | (BISECT_VARIANTS if settings.bisect else {})
            live = next(iter(BISECT_VARIANTS))
            for i, (label, edit) in enumerate(variants.items()):
                config = server_chain(server_dump, edit, app_port, credentials["bench-server"], home / f"s{i}.sock")
                if label == live:
                    config |= {k: v for k, v in _live_bootstrap(server_dump).items() if k in LIVE_BOOTSTRAP}
                server_envoy = StaticEnvoy(home, f"chain-server-{i}", config, "warning")
                stack.callback(server_envoy.stop)
                config = client_chain(
                    client_dump, edit, server_envoy.port, credentials["bench-client"], home / f"c{i}.sock"
                )
                if label == live:
                    config |= {k: v for k, v in _live_bootstrap(client_dump).items() if k in LIVE_BOOTSTRAP}
                client_envoy = StaticEnvoy(home, f"chain-client-{i}", config, "warning")
                stack.callback(client_envoy.stop)
                headers = {"proxy-authorization": f"Basic {token}"}
                pids = (client_envoy.pid, server_envoy.pid)
                chains[label] = (("127.0.0.1", client_envoy.port), headers, pids, url, host)
        loads = [os.getloadavg()[0]]
        labels = list(chains)
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
        opened: dict[str, list[float]] = {label: [] for label in labels}
        errors = dict.fromkeys(labels, 0)
        with procstat.pinned(generator_cpus):
            for round_ in range(settings.rounds):
                for label in rotated(labels, round_):
                    target, headers, pids, path_url, path_host = chains[label]
                    if settings.rate:
                        run_open(target, path_url, path_host, settings.rate, 0.5, headers)
                        before = sum(cpu_of(pid) for pid in pids)
                        done_open = run_open(target, path_url, path_host, settings.rate, settings.seconds, headers)
                        used = sum(cpu_of(pid) for pid in pids) - before
                        errors[label] += done_open.errors
                        if done_open.latencies_ms:
                            opened[label].append(used / len(done_open.latencies_ms) * 1e6)
                    cpu: dict[bool, float] = {}

                    def window(start: bool, pids: tuple[int, int] = pids, cpu: dict = cpu) -> None:
                        cpu[start] = sum(cpu_of(pid) for pid in pids)

                    done = max_rate(
                        target, path_url, path_host, settings.connections, settings.seconds, 0.3, headers, window
                    )
                    errors[label] += done.errors
                    if done.requests:
                        samples[label].append(((cpu[False] - cpu[True]) / done.requests * 1e6, done.rps))
                loads.append(os.getloadavg()[0])
        result["chains"] = {
            label: {
                "us_per_request_both_envoys": _quantiles([us for us, _ in samples[label]]),
                "by_round": [us for us, _ in samples[label]],  # in round order: differences within a round
                "rps_median": statistics.median(rps for _, rps in samples[label]),
                "open_loop_us_per_request": _quantiles(opened[label]) if opened[label] else None,
                "errors": errors[label],
            }
            for label in labels
            if samples[label]
        }
    return _finished(result, loads, started)


_QUIET_TARGET = (QUIET_URL, QUIET_HOST)


def _live_bootstrap(dump: dict) -> dict:
    return _of_type(dump, ".BootstrapConfigDump")["bootstrap"]


def chain_table(result: dict) -> Table:
    rows = result["chains"]
    pair = rows["hand-written pair"]
    loop = f"{result['connections']} connection{'s' if result['connections'] > 1 else ''}"
    whose = "worker threads" if result.get("workers_only") else "Envoys"
    out = Table(
        title=f"client → mTLS → server, both {whose}: CPU µs per request, closed loop of {loop} "
        f"({result['rounds']} rounds × {result['seconds']:g} s)",
        caption=f"load average {result['load_average']['min']:.1f}-{result['load_average']['max']:.1f} while "
        "measured; static copies: the live sidecars' config with inline certificates; × pair on the median"
        + (f"; open loop at {result['rate']:g} requests/s" if result.get("rate") else ""),
    )
    columns = ["chain", "min", "q1", "median", "× pair", "max rps", "× pair ", "errors"]
    if result.get("rate"):
        columns[-1:-1] = ["open loop median", "× pair  "]
    for column in columns:
        out.add_column(column, justify="left" if column == "chain" else "right")
    for label, r in rows.items():
        q, m = r["us_per_request_both_envoys"], pair["us_per_request_both_envoys"]["median"]
        cells = [
            label,
            f"{q['min']:.1f}",
            f"{q['q1']:.1f}",
            f"{q['median']:.1f}",
            f"{q['median'] / m:.2f}",
            f"{r['rps_median']:,.0f}",
            f"{r['rps_median'] / pair['rps_median']:.2f}",
        ]
        if result.get("rate"):
            o, p = r.get("open_loop_us_per_request"), pair.get("open_loop_us_per_request")
            cells += [f"{o['median']:.1f}", f"{o['median'] / p['median']:.2f}"] if o and p else ["", ""]
        out.add_row(*cells, str(r["errors"]))
    return out


# -- presenting -----------------------------------------------------------------------------------


def table(result: dict, side: str) -> Table:
    rows = result["sides"][side]
    full = rows["full"]["us_per_request"]
    out = Table(
        title=f"{side} connection manager of a Lattice sidecar, one Envoy, plaintext: CPU µs per request "
        f"({result['rounds']} rounds × {result['seconds']:g} s, {result['connections']} connections)",
        caption=f"load average {result['load_average']['min']:.1f}-{result['load_average']['max']:.1f} "
        "while measured; Δ: against `full` (negative: the piece costs that much)",
    )
    for column in ("variant", "min", "Δ min", "q1", "Δ q1", "median", "errors"):
        out.add_column(column, justify="left" if column == "variant" else "right")
    for label, r in rows.items():
        q = r["us_per_request"]
        out.add_row(
            label,
            f"{q['min']:.1f}",
            f"{q['min'] - full['min']:+.1f}",
            f"{q['q1']:.1f}",
            f"{q['q1'] - full['q1']:+.1f}",
            f"{q['median']:.1f}",
            str(r["errors"]),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds over every variant (default 10)")
    parser.add_argument("--seconds", type=float, default=1.5, help="closed-loop seconds per variant and round")
    parser.add_argument("--side", choices=("inbound", "outbound", "both"), default="both")
    parser.add_argument(
        "--chain",
        action="store_true",
        help="instead: client → mTLS → server chains (the pair, the live sidecars, static copies of "
        "them without tracing, Istio's metrics, all telemetry), CPU of both Envoys per request",
    )
    parser.add_argument("--connections", type=int, default=32, help="--chain: closed-loop connections (default 32)")
    parser.add_argument("--rate", type=float, default=0.0, help="--chain: also an open loop at this rate (requests/s)")
    parser.add_argument("--workers-only", action="store_true", help="--chain: CPU of the Envoys' worker threads only")
    parser.add_argument(
        "--bisect",
        action="store_true",
        help="--chain: besides, the live sidecars with telemetry off and more static variants (the live "
        "bootstrap's extras, the pair's router with the sidecars' TLS, each remaining access log, "
        "`~proto` by CEL as before)",
    )
    parser.add_argument(
        "--rest",
        action="store_true",
        help="--chain: instead of the telemetry variants, what the connection managers cost beyond "
        "telemetry: copies without tracing and access logs, and without each other piece too",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the result ({DEFAULT_JSON})")
    args = parser.parse_args()
    sides = ["outbound", "inbound"] if args.side == "both" else [args.side]
    console = Console(width=None if sys.stdout.isatty() else 140)
    if args.chain:
        with console.status("sidecar chains: starting sidecars, the pair and static copies"):
            settings = ChainSettings(
                args.rounds, args.seconds, args.connections, args.rate, args.workers_only, args.bisect, args.rest
            )
            result = measure_chain(settings)
        console.print(chain_table(result))
    else:
        with console.status("sidecar pieces: starting sidecars and one Envoy per variant"):
            result = measure(args.rounds, args.seconds, sides)
        for side in sides:
            console.print(table(result, side))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    console.print(f"saved {args.json} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
