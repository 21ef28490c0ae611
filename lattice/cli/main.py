"""`lattice`: the command line."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn, Optional

import typer

# gRPC's fork handlers only print warnings when the agent starts Envoy and the app; we never
# use gRPC in a child, so they are off (read by gRPC at import, hence before any import of it).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from lattice.cli import authz, observe, observe_trace, proxy_config, secrets, security, why, dashboard  # noqa: E402
from lattice.cli.client import AgentServerOpt, ApiError, Client, ServerOpt, agent_url, call, server_url  # noqa: E402
from lattice.cli.client import connect as client  # noqa: E402
from lattice.cli.options import (  # noqa: E402
    H2UpgradePolicy,
    LogLevel,
    OutboundTrafficPolicy,
    at_least,
    duration_option,
)
from lattice.cli.output import Format, OutputOpt, emit, errors, fail  # noqa: E402
from lattice.server.config import lattice_home  # noqa: E402

app = typer.Typer(
    help="Lattice: a service mesh you install with pip. Istio's API, Envoy's data plane, no Kubernetes needed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(proxy_config.app, name="proxy-config")
app.add_typer(security.token_app, name="token")
app.add_typer(security.ca_app, name="ca")
app.add_typer(secrets.app, name="secret")
app.add_typer(authz.app, name="authz")
observe.register(app)
observe_trace.register(app)
why.register(app)
dashboard.register(app)

TokenOpt = typer.Option(
    None,
    "--token",
    help="Refused: a token on the command line shows in every user's `ps`. Use --token-file or LATTICE_TOKEN.",
    show_default=False,
    hidden=True,
)
TokenFileOpt = typer.Option(
    None,
    "--token-file",
    help="Read the join token (from `lattice token create`) from this file, or from stdin with '-'. "
    "Or set LATTICE_TOKEN; the app never sees it.",
)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@app.command()
def server(
    home: Optional[Path] = typer.Option(None, "--home", help="State directory (default $LATTICE_HOME or ~/.lattice)."),
    db: Optional[Path] = typer.Option(None, "--db", help="SQLite file (default <home>/lattice.db)."),
    listen: Optional[str] = typer.Option(
        None,
        "--listen",
        help="Address every control-plane port listens on (default 127.0.0.1): this host's address, or 0.0.0.0, "
        "for agents on other hosts. --api-host, --xds-host and --agent-host override it per port.",
    ),
    api_host: Optional[str] = typer.Option(
        None, help="REST API address (default: --listen); the admin API and dashboard."
    ),
    store: Optional[str] = typer.Option(
        None,
        "--store",
        help="etcd://host:2379,host:2379 (optionally /prefix): state in etcd, so several replicas (each the same "
        "command, each with the same --ca-cert/--ca-key) serve one mesh. Default: the SQLite file.",
    ),
    store_ca: Optional[Path] = typer.Option(
        None, "--store-ca", help="CA that signed the etcd members' certificates (TLS to etcd)."
    ),
    store_cert: Optional[Path] = typer.Option(None, "--store-cert", help="Client certificate for etcd (PEM)."),
    store_key: Optional[Path] = typer.Option(None, "--store-key", help="Client certificate's key for etcd (PEM)."),
    api_port: int = typer.Option(15080, help="REST API port (0: pick a free one)."),
    xds_host: Optional[str] = typer.Option(None, help="xDS gRPC address (default: --listen)."),
    xds_port: int = typer.Option(15010, help="xDS gRPC port, mTLS (0: pick a free one)."),
    agent_host: Optional[str] = typer.Option(
        None, help="Agent API address: certificates and registration (default: --listen)."
    ),
    agent_port: int = typer.Option(15012, help="Agent API port, TLS (0: pick a free one)."),
    trust_domain: str = typer.Option("cluster.local", help="SPIFFE trust domain of workload identities."),
    cert_ttl: float = duration_option(
        "24h", "--cert-ttl", help="Lifetime of workload certificates (renewed at half-life), e.g. 24h, 30m, 30s."
    ),
    ca_cert: Optional[Path] = typer.Option(
        None, help="Plug-in CA: signing certificate, then any intermediates, then the root (PEM)."
    ),
    ca_key: Optional[Path] = typer.Option(None, help="Plug-in CA: the signing certificate's private key (PEM)."),
    root_lifetime: float = duration_option(
        "87600h",
        "--root-lifetime",
        help="Lifetime of each root the server generates (not a plug-in CA's): 87600h is 10 years.",
    ),
    root_rotate_at: float = typer.Option(
        0.8,
        help="Fraction of a generated root's life after which the server rotates it itself, as "
        "`lattice ca rotate-root` does; `lattice status` warns from 0.1 before.",
    ),
    root_namespace: str = typer.Option("istio-system", help="Namespace whose selector-less policies apply mesh-wide."),
    outbound_traffic_policy: OutboundTrafficPolicy = typer.Option(
        OutboundTrafficPolicy.ALLOW_ANY,
        help="Hosts outside the registry: ALLOW_ANY passes them through, REGISTRY_ONLY answers 502 (Istio's "
        "MeshConfig outboundTrafficPolicy).",
    ),
    h2_upgrade_policy: H2UpgradePolicy = typer.Option(
        H2UpgradePolicy.DO_NOT_UPGRADE,
        help="HTTP/1.1 between sidecars: UPGRADE to HTTP/2 (one connection for many requests) or DO_NOT_UPGRADE; a "
        "DestinationRule's connectionPool.http.h2UpgradePolicy overrides it (Istio's MeshConfig h2UpgradePolicy).",
    ),
    debounce: float = duration_option(
        "100ms",
        "--debounce",
        help="How long to gather changes that follow a push into the next one, e.g. 100ms (a bare number: seconds); "
        "a change after a quiet spell is pushed at once.",
    ),
    heartbeat_timeout: float = duration_option(
        "15s",
        "--heartbeat-timeout",
        help="How long without a heartbeat before a workload counts as silent: still served, but another workload "
        "may take its address and port; e.g. 15s (a bare number: seconds).",
    ),
    endpoint_grace: float = duration_option(
        "5m",
        "--endpoint-grace",
        help="How long a silent workload keeps its endpoints before it is dropped, e.g. 5m, 30s: a host cut off "
        "from the control plane is not down for its peers, whose Envoys judge reachability themselves "
        "(outlier detection).",
    ),
    jwks_refresh: float = duration_option(
        "20m", "--jwks-refresh", help="How often to fetch the keys of RequestAuthentication jwksUris again, e.g. 20m."
    ),
    handshake_timeout: float = duration_option(
        "10s",
        "--handshake-timeout",
        help="Every sidecar's and gateway's listeners close a new connection that has not finished its TLS "
        "handshake, or sent its first bytes (plain HTTP), within this time, e.g. 10s (slowloris).",
    ),
    idle_timeout: float = duration_option(
        "1h",
        "--idle-timeout",
        help="Their HTTP connections with no request open for this long are closed, e.g. 1h (Envoy's and "
        "Istio's default); open streams (gRPC, WebSocket) are requests and are not cut.",
    ),
    mesh_config: Optional[Path] = typer.Option(
        None,
        "--mesh-config",
        help="Istio MeshConfig YAML: extensionProviders (external authorizers for CUSTOM AuthorizationPolicies; "
        "trace, access log and metrics providers for Telemetry) and telemetry defaults (accessLogFile, "
        "enableTracing, defaultProviders, defaultConfig.tracing.sampling).",
    ),
    log_level: LogLevel = typer.Option(LogLevel.info, case_sensitive=False, help="What the control plane logs."),
) -> None:
    """Run the control plane: config store, registry, CA, xDS server and REST API.

    On first start it creates a root CA under <home>/ca (or uses --ca-cert/--ca-key) and the admin
    credential <home>/admin-token that the CLI reads.
    """
    from lattice.server.config import ServerConfig, load_mesh_config
    from lattice.server.main import run_server

    _logging(log_level.value)
    home = home or lattice_home()
    if (ca_cert is None) != (ca_key is None):
        fail("give both --ca-cert and --ca-key, or neither (to use the built-in CA)")
    if store is not None and ca_cert is None:
        fail(
            "--store etcd://... runs several replicas, and each must sign with the same CA: give every replica "
            "the same --ca-cert and --ca-key files (the key stays on the replicas' disks, never in etcd); "
            "see README, 'Several control-plane replicas'"
        )
    ttl = at_least("--cert-ttl", cert_ttl, 10, ": agents renew at half-life")
    jwks_every = at_least("--jwks-refresh", jwks_refresh, 1)
    from lattice.api import ValidationError

    try:
        providers, telemetry, http = load_mesh_config(mesh_config) if mesh_config else ((), None, None)
    except (OSError, ValidationError) as e:
        fail(f"--mesh-config {mesh_config}: {e}")
    http = _with_connection_bounds(http, handshake_timeout, idle_timeout)
    config = ServerConfig(
        home=home,
        db=db or home / "lattice.db",
        store=store,
        store_tls=(store_ca, store_cert, store_key),
        api_host=api_host or listen or "127.0.0.1",
        api_port=api_port,
        xds_host=xds_host or listen or "127.0.0.1",
        xds_port=xds_port,
        agent_host=agent_host or listen or "127.0.0.1",
        agent_port=agent_port,
        debounce=debounce,
        heartbeat_timeout=heartbeat_timeout,
        endpoint_grace=at_least("--endpoint-grace", endpoint_grace, 0.5),
        trust_domain=trust_domain,
        root_namespace=root_namespace,
        cert_ttl=ttl,
        ca_cert=ca_cert,
        ca_key=ca_key,
        root_lifetime=at_least("--root-lifetime", root_lifetime, 10, ": certificates it signs cannot outlive it"),
        root_rotate_at=_fraction("--root-rotate-at", root_rotate_at),
        outbound_traffic_policy=outbound_traffic_policy.value,
        h2_upgrade_policy=h2_upgrade_policy.value,
        jwks_refresh=jwks_every,
        extension_providers=providers,
        mesh_telemetry=telemetry,
        http_policy=http,
    )
    try:
        asyncio.run(run_server(config))
    except OSError as e:  # the state directory or a file in it (a store's errors end the server with its message)
        fail(str(e))


def _with_connection_bounds(http, handshake_timeout: float, idle_timeout: float):
    """MeshConfig's HTTP policy (or the defaults) with `--handshake-timeout` and `--idle-timeout`."""
    import dataclasses

    from lattice.mesh.http_policy import HttpPolicy

    return dataclasses.replace(
        http or HttpPolicy(),
        handshake_timeout=at_least("--handshake-timeout", handshake_timeout, 0.1),
        idle_timeout=at_least("--idle-timeout", idle_timeout, 1),
    )


# The options every sidecar command takes (`run` and `agent`), declared once: `_workload_options`
# adds them to a command, which gets them back as one dict, `workload`.
_WORKLOAD_OPTIONS = {
    "service": (str, typer.Option(..., help="Service name (Kubernetes-style: lowercase, digits, '-').")),
    "port": (int, typer.Option(9080, help="Service port other workloads call.")),
    "version": (str, typer.Option("v1", help="Version label (DestinationRule subsets select on it).")),
    "namespace": (str, typer.Option("default", "-n", "--namespace", help="The workload's namespace.")),
    "service_account": (Optional[str], typer.Option(None, help="Identity (default: the service name).")),
    "label": (list[str], typer.Option([], "--label", "-l", help="Extra label KEY=VALUE (repeatable).")),
    "name": (Optional[str], typer.Option(None, help="Workload name (default <service>-<version>).")),
    "address": (
        Optional[str],
        typer.Option(
            None,
            help="Address other hosts reach this workload on, one of this host's (default: this host's address on "
            "its route to the control plane; a loopback of its own when the control plane is on this machine).",
        ),
    ),
    "protocol": (
        Optional[str],
        typer.Option(
            None,
            help="Istio protocol: HTTP, HTTP2, GRPC, GRPC-Web, HTTPS, TCP, TLS, MONGO, MYSQL, REDIS (default: from "
            "--port-name, else HTTP).",
        ),
    ),
    "port_name": (
        Optional[str],
        typer.Option(
            None,
            help="Istio-style port name, <protocol>[-<suffix>] (http-web, grpc-api, tcp-db): picks the protocol "
            "when --protocol is not given.",
        ),
    ),
    "upstream": (
        list[str],
        typer.Option(
            [],
            "--upstream",
            help="SERVICE[.NAMESPACE]:PORT[=LOCALPORT] (repeatable): the sidecar listens on this workload's address "
            "at LOCALPORT (default PORT) and forwards to that service port; the app finds it in "
            "$LATTICE_UPSTREAM_<SERVICE>_<PORT>. For TCP and clients that cannot use HTTP_PROXY.",
        ),
    ),
    "server": (Optional[str], AgentServerOpt),
    "token": (Optional[str], TokenOpt),
    "token_file": (Optional[Path], TokenFileOpt),
    "stats_inclusion_prefixes": (
        Optional[str],
        typer.Option(
            None,
            help="Envoy stats to keep besides Istio's short default list, by name prefix, comma-separated "
            "(Istio's statsInclusionPrefixes), e.g. cluster.outbound to keep every upstream cluster's stats.",
        ),
    ),
    "stats_inclusion_suffixes": (
        Optional[str],
        typer.Option(None, help="The same by name suffix (Istio's statsInclusionSuffixes), e.g. upstream_rq_timeout."),
    ),
    "stats_inclusion_regexps": (
        Optional[str],
        typer.Option(None, help="The same by RE2 regular expression (Istio's statsInclusionRegexps); .* keeps all."),
    ),
    "log_level": (
        LogLevel,
        typer.Option(LogLevel.warning, case_sensitive=False, help="Agent and Envoy log level."),
    ),
    "capture": (
        bool,
        typer.Option(
            False,
            "--capture",
            help="Root: the app in a network namespace of its own whose TCP goes through the sidecar (iptables, "
            "as Istio's istio-iptables) and whose DNS answers mesh names; no HTTP_PROXY or --upstream needed.",
        ),
    ),
    "netns": (
        Optional[str],
        typer.Option(
            None,
            "--netns",
            help="With --capture: an existing network namespace (`ip netns add`, already connected) for the app, "
            "instead of a new one with a veth pair to the host (`lattice agent`: where you run the app); `host`: "
            "the host's own namespace (VM mode, one app per machine; SSH and the control plane's ports spared).",
        ),
    ),
    "drain_timeout": (
        float,
        duration_option(
            "30s",
            "--drain-timeout",
            help="On SIGTERM/Ctrl-C, how long a graceful stop may take in all: callers stop choosing this "
            "endpoint, open requests and streams finish, then the app gets SIGTERM (and SIGKILL at the end). "
            "A second signal stops at once.",
        ),
    ),
}


def _workload_options(command):
    """`command` with the shared sidecar options after its own first parameter (the context, for
    `run`) and before the rest; it receives them as `workload`, a dict by option name."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "workload"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, (kind, option) in _WORKLOAD_OPTIONS.items()
    ]
    lead = [p for p in own if p.annotation in (typer.Context, "typer.Context")]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in lead]

    @functools.wraps(command)
    def with_options(*args, **kwargs):
        return command(*args, workload={name: kwargs.pop(name) for name in _WORKLOAD_OPTIONS}, **kwargs)

    with_options.__signature__ = inspect.Signature([*lead, *shared, *rest])  # type: ignore[attr-defined]
    with_options.__annotations__ = {
        **{p.name: typer.Context for p in lead},
        **{name: kind for name, (kind, _) in _WORKLOAD_OPTIONS.items()},
        **{p.name: command.__annotations__[p.name] for p in rest},
    }
    return with_options


def _fraction(option: str, value: float) -> float:
    if not 0.1 <= value < 1:
        fail(f"{option} {value}: give a fraction of the root's life from 0.1 to below 1, e.g. 0.8")
    return value


def _run_options(workload: dict, app_port: int | None, command: list[str]):
    from lattice.agent.options import RunOptions

    w = workload
    labels = {}
    for item in w["label"]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label {item!r} must be KEY=VALUE")
        labels[key] = value
    if w["netns"] and not w["capture"]:
        fail("--netns is for --capture: give both, or neither")
    token = _join_token(w["token"], w["token_file"], w["service_account"] or w["service"], w["namespace"])
    return RunOptions(
        service=w["service"],
        port=w["port"],
        server=call(agent_url, w["server"]),
        token=token,
        command=command,
        version=w["version"],
        namespace=w["namespace"],
        service_account=w["service_account"],
        labels=labels,
        name=w["name"],
        address=w["address"],
        app_port=app_port,
        protocol=_protocol(w["protocol"], w["port_name"], w["port"]),
        upstreams=_upstreams(w["upstream"], w["namespace"], w["port"]),
        envoy_log_level=w["log_level"].value,
        capture=w["capture"],
        netns=w["netns"],
        stats_inclusion=_stats_inclusion(w),
        drain_timeout=at_least("--drain-timeout", w["drain_timeout"], 0.5),
    )


def _stats_inclusion(w: dict) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The --stats-inclusion-* options as (prefixes, suffixes, regexps)."""
    out: list[tuple[str, ...]] = []
    for kind in ("prefixes", "suffixes", "regexps"):
        items = tuple(x.strip() for x in (w[f"stats_inclusion_{kind}"] or "").split(",") if x.strip())
        for item in items if kind == "regexps" else ():
            try:
                re.compile(item)
            except re.error as e:
                fail(f"--stats-inclusion-regexps {item!r} is not a regular expression: {e}")
        out.append(items)
    prefixes, suffixes, regexps = out
    return prefixes, suffixes, regexps


def _protocol(protocol: str | None, port_name: str | None, port: int) -> str:
    """Istio's protocol selection: --protocol, else the --port-name prefix, else HTTP (see lattice.mesh.protocol)."""
    from lattice.mesh.protocol import ProtocolError, from_port_name, parse, select

    try:
        if protocol:
            return parse(protocol, "--protocol")
        return select(protocol=from_port_name(port_name, "--port-name") if port_name else None, port=port)
    except ProtocolError as e:
        fail(str(e))


_UPSTREAM = re.compile(
    r"^(?P<service>[a-z0-9-]+)(?:\.(?P<namespace>[a-z0-9-]+))?:(?P<port>\d{1,5})(?:=(?P<local>\d{1,5}))?$"
)


def _upstreams(specs: list[str], namespace: str, port: int) -> list:
    """--upstream SERVICE[.NAMESPACE]:PORT[=LOCALPORT], each on a local port of its own."""
    from pydantic import ValidationError

    from lattice.agent.registration import Upstream as Forward
    from lattice.api.registration import Upstream

    out, taken = [], {port: "--port", 15001: "the outbound proxy"}
    for spec in specs:
        m = _UPSTREAM.match(spec)
        if m is None:
            fail(
                f"--upstream {spec!r} must be SERVICE[.NAMESPACE]:PORT[=LOCALPORT], e.g. --upstream tcp-echo:9000=19000"
            )
        local = int(m["local"] or m["port"])
        if local in taken:
            fail(
                f"--upstream {spec!r}: local port {local} is already used by {taken[local]}; pick another with "
                "=LOCALPORT"
            )
        taken[local] = f"--upstream {spec}"
        try:
            checked = Upstream(
                service=m["service"], namespace=m["namespace"] or namespace, port=int(m["port"]), local_port=local
            )
            out.append(Forward(**checked.model_dump()))
        except ValidationError as e:
            fail(
                f"--upstream {spec!r}: "
                + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            )
    return out


def _join_token(token: str | None, token_file: Path | None, service_account: str, namespace: str) -> str | None:
    """The join token from --token-file (or stdin) or LATTICE_TOKEN; none if a valid certificate of
    this identity is kept on this host (agent/kept_identity.py); else a message saying how to make
    one. LATTICE_TOKEN leaves this process's environment, so neither Envoy nor the app inherit it."""
    if token is not None:
        fail(
            "--token is refused: a token on the command line is visible to every local user (ps, /proc). "
            "Pass --token-file FILE, --token-file - (stdin), or set LATTICE_TOKEN"
        )
    token = os.environ.pop("LATTICE_TOKEN", "").strip()
    if token_file is not None:
        try:
            token = sys.stdin.readline().strip() if str(token_file) == "-" else token_file.read_text().strip()
        except OSError as e:
            fail(f"cannot read --token-file {token_file}: {e.strerror}")
    if not token:
        from lattice.agent.kept_identity import IdentityKeeper

        if IdentityKeeper(namespace, service_account).exists():
            return None  # a restart: the agent re-attests with the certificate it kept
        fail(
            "no join token: pass --token-file FILE (or - for stdin) or set LATTICE_TOKEN; create one with "
            f"`lattice token create --service-account {service_account} -n {namespace}`"
        )
    return token


_RUN_HELP = """Run COMMAND as a workload of SERVICE, under its own sidecar.

The sidecar first gets the workload a certificate for its identity
(spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), paid with a join token. The app gets
PORT (listen there on 127.0.0.1) and HTTP_PROXY (the sidecar) in its environment and starts once
the sidecar holds its config. `lattice run` exits with the app's exit code.

Without --capture (root), HTTP_PROXY carries a credential made for this sidecar
(http://lattice:<secret>@127.0.10.x:15001): the outbound listener answers 407 to any other local
user. curl, Python and Go send it by themselves; an app started apart reads it from proxy.env
(0600) in the sidecar's run directory, named at start. Still open to every local user: the
--upstream ports (a TCP port cannot carry a credential) and the app's own port on 127.0.0.1.

  lattice token create --service-account reviews > reviews.token
  lattice run --service reviews --version v1 --port 9080 --token-file reviews.token -- python reviews.py
"""


@app.command(help=_RUN_HELP, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_workload_options
def run(
    ctx: typer.Context,
    workload: dict,
    app_port: Optional[int] = typer.Option(None, help="Port the app listens on (default: a free one, given as PORT)."),
) -> None:
    command = list(ctx.args)
    if not command:
        fail(
            "give the command to run after `--`, e.g. `lattice run --service web -- python app.py`; `lattice "
            "agent` runs a sidecar alone"
        )
    raise typer.Exit(_sidecar(_run_options(workload, app_port, command), workload["log_level"].value))


@app.command()
@_workload_options
def agent(
    workload: dict,
    app_port: int = typer.Option(..., help="Port the (separately started) app listens on, on 127.0.0.1."),
) -> None:
    """Run a sidecar alone, for an app you start yourself on 127.0.0.1:APP_PORT."""
    raise typer.Exit(_sidecar(_run_options(workload, app_port, []), workload["log_level"].value))


_GATEWAY_HELP = """Run an ingress gateway: Envoy serving the Gateways whose selector matches its labels.

It has no app. Istio's Gateway and VirtualService YAML apply unchanged (labels default to
istio=ingressgateway, Istio's gateway selector). A Gateway port below 1024 is served on port + 8000
(80 on 8080, 443 on 8443, as Istio's gateway pods do; no root needed), a port from 1024 up on
itself, unless --listen PORT=LOCALPORT says otherwise. The URLs are printed at startup.

  lattice token create --service-account istio-ingressgateway -n istio-system > gw.token
  lattice gateway --token-file gw.token
  lattice apply -f bookinfo-gateway.yaml
  curl http://<address>:8080/productpage

With --gateway-class CLASS it serves the Gateway API Gateways of that class (a GatewayClass whose
controllerName is lattice.dev/gateway-controller), in every namespace; add --gateway NAME to serve
only the Gateway NAME of its --namespace (one proxy per Gateway, as Istio deploys them).
"""


@app.command(help=_GATEWAY_HELP)
def gateway(
    name: str = typer.Option("ingressgateway", help="Gateway workload name."),
    namespace: str = typer.Option("istio-system", "-n", "--namespace"),
    service_account: Optional[str] = typer.Option(None, help="Identity (default istio-<name>)."),
    label: list[str] = typer.Option(
        [],
        "--label",
        "-l",
        help="Label KEY=VALUE that Gateway selectors match (repeatable; default istio=ingressgateway).",
    ),
    listen: list[str] = typer.Option(
        [], "--listen", help="Serve Gateway port PORT on local port LOCALPORT: PORT=LOCALPORT (repeatable)."
    ),
    address: Optional[str] = typer.Option(
        None, help="Address to serve on (default: a loopback of its own, printed at startup)."
    ),
    gateway_class: Optional[str] = typer.Option(
        None, "--gateway-class", help="Serve the Gateway API Gateways of this GatewayClass."
    ),
    gateway_name: Optional[str] = typer.Option(
        None, "--gateway", help="With --gateway-class: serve only this Gateway API Gateway (in --namespace)."
    ),
    server: Optional[str] = AgentServerOpt,
    token: Optional[str] = TokenOpt,
    token_file: Optional[Path] = TokenFileOpt,
    log_level: LogLevel = typer.Option(LogLevel.warning, case_sensitive=False, help="Agent and Envoy log level."),
    drain_timeout: float = duration_option(
        "30s",
        "--drain-timeout",
        help="On SIGTERM/Ctrl-C, how long the gateway may drain: its listeners close, requests in flight "
        "through it finish. A second signal stops at once.",
    ),
) -> None:
    from lattice.agent.gateway import GatewayOptions, run_gateway
    from lattice.mesh.k8s_gateway import CLASS_LABEL, NAME_LABEL

    labels = dict(_pair(item, "--label", "KEY=VALUE") for item in label)
    if gateway_name and not gateway_class:
        fail("--gateway NAME needs --gateway-class CLASS: the class of the Gateway to serve")
    labels |= {CLASS_LABEL: gateway_class} if gateway_class else {}
    labels |= {NAME_LABEL: gateway_name} if gateway_name else {}
    ports = {}
    for item in listen:
        port, local = _pair(item, "--listen", "PORT=LOCALPORT")
        if not (port.isdigit() and local.isdigit() and 1 <= int(port) <= 65535 and 1 <= int(local) <= 65535):
            fail(f"--listen {item!r} must be PORT=LOCALPORT, two port numbers (1-65535)")
        ports[int(port)] = int(local)
    options = GatewayOptions(
        server=call(agent_url, server),
        token=_join_token(token, token_file, service_account or f"istio-{name}", namespace),
        name=name,
        namespace=namespace,
        service_account=service_account,
        labels=labels,
        listen=ports,
        address=address,
        envoy_log_level=log_level.value,
        drain_timeout=at_least("--drain-timeout", drain_timeout, 0.5),
    )
    _logging("info" if log_level in ("debug", "info") else "warning")
    try:
        code = asyncio.run(run_gateway(options))
    except (RuntimeError, OSError) as e:
        fail(str(e))
    raise typer.Exit(code)


def _pair(item: str, option: str, shape: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        fail(f"{option} {item!r} must be {shape}")
    return key, value


def _sidecar(options, log_level: str) -> NoReturn:
    """This process becomes the agent: a fresh interpreter that loads only the agent (agent/launch.py)."""
    from lattice.agent.launch import become_agent

    become_agent(options, log_level)


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(), path
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")


def _documents(files: list[str]) -> list[tuple[str, str]]:
    if not files:
        fail("give a file with -f FILE (or -f - for standard input)")
    out: list[tuple[str, str]] = []
    for f in files:
        p = Path(f)
        paths = (
            sorted(str(x) for x in p.iterdir() if x.suffix in (".yaml", ".yml", ".json"))
            if f != "-" and p.is_dir()
            else [f]
        )
        out.extend(_read(x) for x in paths)
    return out


def _explain(e: ApiError) -> str:
    details = e.body.get("details")
    return (
        str(e)
        if not details
        else f"{details['source']}: invalid resource\n"
        + "\n".join(f"  - {x['path']}: {x['message']}" for x in details["errors"])
    )


@app.command()
def apply(
    files: list[str] = typer.Option([], "-f", "--filename", help="YAML file, directory, or - for stdin (repeatable)."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Create or update resources from Istio YAML (VirtualService, DestinationRule...)."""
    c = client(server)
    results = []
    warnings = []
    for text, source in _documents(files):
        try:
            answer = c.request("POST", "/api/v1/apply", text.encode(), {"source": source})
        except ApiError as e:
            fail(_explain(e) + ("\nnothing from this file was applied" if e.status == 400 else ""))
        results += answer["results"]
        warnings += answer.get("warnings", [])
    _print_results(results, output)
    for w in warnings:  # on stderr, so -o json|yaml output stays parseable
        errors.print(f"[yellow]{w['level']}:[/] {_finding_text(w)}", highlight=False, soft_wrap=True)


_ANALYZE_HELP = """Check Istio YAML for mistakes before (or after) applying it.

Invalid resources are errors (exit status 1), named by field path as `lattice apply` names them.
Valid but suspicious config gets a warning: a subset no DestinationRule defines or no workload
matches, weights that do not add up to 100, a host that resolves to nothing, a Gateway that does
not exist, two resources claiming one host.

With a control plane running (or --server), FILE is checked against the live mesh as if it had
been applied. With --offline, or when no control plane is running, only the files are used: checks
that need the registry are skipped.

  lattice analyze -f reviews-routing.yaml
  lattice analyze --offline -f samples/ -o json
"""


@app.command(help=_ANALYZE_HELP)
def analyze(
    files: list[str] = typer.Option([], "-f", "--filename", help="YAML file, directory, or - for stdin (repeatable)."),
    offline: bool = typer.Option(False, "--offline", help="Do not consult a control plane, even if one is running."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    from lattice.api import ValidationError, parse_documents
    from lattice.mesh.analyze import analyze as find_problems
    from lattice.mesh.analyze import snapshot_of

    documents = _documents(files)
    resources, invalid = [], []
    for text, source in documents:
        try:
            resources += parse_documents(text, source)
        except ValidationError as e:
            invalid += [
                {"level": "error", "resource": e.source, "field": x.path, "message": x.message} for x in e.errors
            ]
    c = None if offline else _optional_client(server)
    if c is not None and not invalid:
        findings = []
        for text, source in documents:
            findings += call(c.request, "POST", "/api/v1/analyze", text.encode(), {"source": source})["findings"]
    else:
        findings = [f.to_dict() for f in find_problems(snapshot_of(resources), resources, registry_known=False)]
    findings = invalid + findings
    emit(
        {"findings": findings},
        output,
        ["LEVEL", "RESOURCE", "FIELD", "MESSAGE"],
        [[f["level"], f["resource"], f["field"], f["message"]] for f in findings],
    )
    if output is Format.table and not findings:
        typer.echo(f"no problems found in {len(resources)} resource(s)")
    raise typer.Exit(1 if invalid else 0)


def _optional_client(server: str | None):
    """A client when a control plane is known (--server, LATTICE_SERVER or a running one), else None."""
    try:
        return Client(server_url(server))
    except ApiError:
        if server:
            fail(f"cannot reach the control plane at {server}; use --offline to check the files alone")
        return None


def _finding_text(f: dict) -> str:
    where = " ".join(x for x in (f["resource"], f["field"]) if x)
    return f"{where}: {f['message']}" if where else f["message"]


@app.command()
def delete(
    kind: Optional[str] = typer.Argument(None, help="Resource type, e.g. virtualservices (or use -f)."),
    name: Optional[str] = typer.Argument(None),
    files: list[str] = typer.Option([], "-f", "--filename", help="Delete what these files define."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """Delete resources named in files, or one resource by type and name."""
    c = client(server)
    if files:
        results = []
        for text, source in _documents(files):
            try:
                results += c.request("POST", "/api/v1/delete", text.encode(), {"source": source})["results"]
            except ApiError as e:
                fail(_explain(e))
        return _print_results(results, output)
    if not (kind and name):
        fail("give -f FILE, or a type and a name: `lattice delete virtualservice reviews`")
    _print_results(call(c.request, "DELETE", f"/api/v1/resources/{kind}/{namespace}/{name}")["results"], output)


def _print_results(results: list[dict], output: Format) -> None:
    if output is not Format.table:
        return emit({"results": results}, output, [], [])
    for r in results:
        typer.echo(f"{r['kind'].lower()}.{r['namespace']}/{r['name']} {r['action']}")


@app.command()
def get(
    kind: str = typer.Argument(..., help="virtualservices (vs), destinationrules (dr)"),
    name: Optional[str] = typer.Argument(None),
    namespace: Optional[str] = typer.Option(None, "-n", "--namespace", help="Only this namespace (default: all)."),
    server: Optional[str] = ServerOpt,
    output: Format = OutputOpt,
) -> None:
    """List resources, or show one."""
    c = client(server)
    if name:
        item = call(c.get, f"/api/v1/resources/{kind}/{namespace or 'default'}/{name}")
        items = [item]
        data = item
    else:
        items = call(c.get, f"/api/v1/resources/{kind}", namespace=namespace)["items"]
        data = {"apiVersion": "v1", "kind": "List", "items": items}
    rows = [
        [
            i["metadata"]["namespace"],
            i["metadata"]["name"],
            i["apiVersion"],
            i["metadata"]["resourceVersion"],
            i["metadata"]["creationTimestamp"],
        ]
        for i in items
    ]
    emit(data, output, ["NAMESPACE", "NAME", "API VERSION", "REVISION", "CREATED"], rows)


@app.command()
def status(server: Optional[str] = ServerOpt, output: Format = OutputOpt) -> None:
    """Proxies, their services, and whether each holds the config it was sent (like istioctl proxy-status)."""
    data = call(client(server).get, "/api/v1/status")
    rows = []
    for p in data["proxies"]:
        sync = [p["types"][t]["state"] for t in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration")]
        # Extension configs exist only where a TrafficExtension or WasmPlugin selects the proxy.
        sync.append(p["types"].get("TypedExtensionConfig", {}).get("state", "-"))
        cert = p.get("certificate") or {}
        identity = cert.get("identity", "").removeprefix("spiffe://") or "NONE"
        rows.append(
            [
                p["id"],
                p["service"],
                p["version"],
                f"{p['address']}:{p['port']}",
                "yes" if p["healthy"] else "NO",
                "yes" if p["connected"] else "NO",
                *sync,
                identity,
                _expires_in(cert.get("expires", "")),
            ]
        )
    emit(
        data,
        output,
        [
            "PROXY",
            "SERVICE",
            "VERSION",
            "ADDRESS",
            "HEALTHY",
            "CONNECTED",
            "CDS",
            "EDS",
            "LDS",
            "RDS",
            "ECDS",
            "IDENTITY",
            "CERT EXPIRES",
        ],
        rows,
    )
    if output is Format.table:
        s = data["server"]
        typer.echo(
            f"\nconfig revision {s['revision']}, snapshot {s['snapshot']}, last push {s['last_push_ms']} ms, "
            f"outbound traffic policy {s.get('outbound_traffic_policy', '?')}"
        )
        for p in data["proxies"]:
            for t, v in p["types"].items():
                if v["error"]:
                    typer.echo(f"NACK {p['id']} {t}: {v['error']}")
        for c in data["conflicts"]:
            typer.echo(f"conflict: {c}")
        for w in s.get("expiry_warnings", []):
            typer.echo(f"WARNING {w['kind']} {w['subject']}: {w['message']}")
        from lattice.cli.replicas import print_replicas

        print_replicas(data)


def _expires_in(iso: str) -> str:
    if not iso:
        return "-"
    left = (datetime.fromisoformat(iso) - datetime.now(timezone.utc)).total_seconds()
    if left <= 0:
        return "EXPIRED"
    return f"in {left / 3600:.1f}h" if left >= 5400 else f"in {left / 60:.0f}m" if left >= 90 else f"in {left:.0f}s"


@app.command()
def demo(
    duration: Optional[float] = duration_option(
        None, "--duration", help="Stop after this long, e.g. 30s (default: until Ctrl-C; a bare number: seconds)."
    ),
    check: bool = typer.Option(False, "--check", help="Exit non-zero unless every service answered through the mesh."),
    rate: float = typer.Option(10.0, help="Requests per second the demo client sends to productpage."),
) -> None:
    """Start a control plane and a Bookinfo-shaped app, each service under its own sidecar."""
    from lattice.demo.run import run_demo

    raise typer.Exit(asyncio.run(run_demo(duration=duration, check=check, rate=rate)))


if __name__ == "__main__":
    app()
