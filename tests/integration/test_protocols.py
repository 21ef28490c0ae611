"""Protocols through two sidecars with mutual TLS (mesh-wide STRICT, so nothing passes in plaintext):
gRPC (unary and streaming), h2c, WebSocket (also over an HTTP/2 hop), and opaque TCP and TLS on
`--upstream` ports, routed by VirtualService `tcp` and `tls` rules. The test process plays the
client app: it dials the client workload's sidecar as that workload's app would."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import sys
import queue
from pathlib import Path

import aiohttp
import grpc
import pytest

from harness import ControlPlane, Workload, http, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("protocols")]
APPS = Path(__file__).parents[1] / "apps"
CLIENT_IDENTITY = "spiffe://cluster.local/ns/default/sa/proto-client"
STRICT = json.dumps(
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
)
# TLS terminated by the app itself: the mesh carries its bytes untouched (inside its own mTLS).
TLS_APP = """
import os, socket, ssl, threading
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
served_by = os.environ["LATTICE_SERVICE"] + "-" + os.environ["SERVICE_VERSION"]
listener = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))

def serve(raw):
    try:
        with context.wrap_socket(raw, server_side=True) as conn:
            conn.sendall(served_by.encode() + b"\\n")
    except (OSError, ssl.SSLError):
        pass

while True:
    raw, _ = listener.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"""
SNI = {name: f"{name}.default.svc.cluster.local" for name in ("tls-a", "tls-b", "nobody")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for the TLS apps' names, made here: the client trusts exactly this one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls test app")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in SNI.values()]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "app.crt", directory / "app.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Servers of every protocol and one client whose `--upstream` ports lead to them."""
    plane = ControlPlane(tmp_path_factory.mktemp("protocols") / "home").start()
    plane.apply(STRICT)
    cert, key = _self_signed(tmp_path_factory.mktemp("tls-app"))
    local = {name: _free_port() for name in ("tcp", "grpc", "ws", "tls")}
    py = sys.executable
    specs = [
        ("grpc-echo", "v1", [py, str(APPS / "grpc_echo.py")], ("--protocol", "GRPC"), {}),
        ("h2-echo", "v1", [py, str(APPS / "grpc_echo.py")], ("--port-name", "http2-api"), {}),
        ("ws-echo", "v1", [py, str(APPS / "ws_echo.py")], (), {}),
        ("tcp-echo", "v1", [py, str(APPS / "tcp_echo.py")], ("--port", "9000", "--protocol", "tcp"), {}),
        ("tcp-echo", "v2", [py, str(APPS / "tcp_echo.py")], ("--port", "9000", "--port-name", "tcp-echo"), {}),
        (
            "tls-a",
            "v1",
            [py, "-c", TLS_APP],
            ("--port", "9443", "--protocol", "TLS"),
            {"TLS_CERT": str(cert), "TLS_KEY": str(key)},
        ),
        (
            "tls-b",
            "v1",
            [py, "-c", TLS_APP],
            ("--port", "9443", "--protocol", "TLS"),
            {"TLS_CERT": str(cert), "TLS_KEY": str(key)},
        ),
        (
            "proto-client",
            "v1",
            [py, str(APPS / "tcp_echo.py")],
            (
                "--upstream",
                f"tcp-echo:9000={local['tcp']}",
                "--upstream",
                f"grpc-echo:9080={local['grpc']}",
                "--upstream",
                f"ws-echo.default:9080={local['ws']}",
                "--upstream",
                f"tls-a:9443={local['tls']}",
                "--stats-inclusion-prefixes",  # its upstream clusters' stats, read below
                "cluster.outbound",
            ),
            {},
        ),
    ]
    try:
        with running(plane, [Workload(plane, s, v, command=c, extra=x, env=e) for s, v, c, x, e in specs]) as started:
            ready = {f"{w.service}-{w.version}": w for w in started}
            yield {"plane": plane, "client": ready["proto-client-v1"], "local": local, "cert": cert, "workloads": ready}
    finally:
        plane.stop()


def _upstream(mesh, name: str) -> str:
    return f"{mesh['client'].address}:{mesh['local'][name]}"


# --- gRPC and h2c ----------------------------------------------------------------------------------


def test_grpc_unary_and_streaming_reach_the_server_over_mtls(mesh):
    with grpc.insecure_channel(_upstream(mesh, "grpc")) as channel:
        unary = json.loads(
            channel.unary_unary("/lattice.test.Echo/Unary")(b"hello", metadata=(("x-trace", "t1"),), timeout=5)
        )
        streamed = [
            json.loads(m)
            for m in channel.unary_stream("/lattice.test.Echo/ServerStream")(
                b"s", metadata=(("x-echo-count", "5"),), timeout=5
            )
        ]
        gathered = json.loads(
            channel.stream_unary("/lattice.test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=5)
        )
        bidi = [
            json.loads(m) for m in channel.stream_stream("/lattice.test.Echo/Bidi")(iter([b"x", b"y", b"z"]), timeout=5)
        ]
    assert unary["served_by"] == "grpc-echo-v1" and unary["message"] == "hello" and unary["metadata"]["x-trace"] == "t1"
    # The server's sidecar vouches for the caller: only a verified client certificate puts it there.
    assert CLIENT_IDENTITY in unary["metadata"]["x-forwarded-client-cert"]
    assert [m["index"] for m in streamed] == [0, 1, 2, 3, 4] and {m["served_by"] for m in streamed} == {"grpc-echo-v1"}
    assert gathered["messages"] == ["a", "b", "c"]
    assert [m["message"] for m in bidi] == ["x", "y", "z"]


def test_grpc_bidi_replies_arrive_while_the_call_is_open(mesh):
    """Each reply comes back before the next request is sent: nothing buffers the stream."""
    outgoing: queue.Queue = queue.Queue()
    with grpc.insecure_channel(_upstream(mesh, "grpc")) as channel:
        call = channel.stream_stream("/lattice.test.Echo/Bidi")(iter(outgoing.get, None), timeout=10)
        seen = []
        for word in ("one", "two", "three"):
            outgoing.put(word.encode())
            seen.append(json.loads(next(call))["message"])
        outgoing.put(None)
        assert seen == ["one", "two", "three"] and list(call) == []


def test_grpc_status_from_the_server_reaches_the_client(mesh):
    with grpc.insecure_channel(_upstream(mesh, "grpc")) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            channel.unary_unary("/lattice.test.Echo/Unary")(b"", metadata=(("x-echo-status", "7"),), timeout=5)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_h2c_through_the_outbound_proxy_reaches_an_http2_only_app(mesh):
    """Prior-knowledge HTTP/2 to the sidecar's HTTP proxy port, routed by :authority; the service
    is HTTP/2 only because its port name says so (`--port-name http2-api`)."""
    client = mesh["client"]
    options = [("grpc.default_authority", "h2-echo:9080"), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"{client.address}:15001", options=options) as channel:
        call = channel.unary_unary("/lattice.test.Echo/Unary")
        reply = json.loads(call(b"h2c", timeout=5, metadata=tuple(client.proxy_headers.items())))
    assert reply["served_by"] == "h2-echo-v1" and reply["message"] == "h2c"
    assert "proxy-authorization" not in reply["metadata"]  # the sidecar's credential stops at the sidecar
    assert CLIENT_IDENTITY in reply["metadata"]["x-forwarded-client-cert"]


def test_the_registry_shows_each_protocol_as_selected(mesh):
    protocols = {p["name"]: p["protocol"] for p in mesh["plane"].status()["proxies"]}
    assert protocols == {
        "grpc-echo-v1": "grpc",
        "h2-echo-v1": "http2",
        "ws-echo-v1": "http",
        "tcp-echo-v1": "tcp",
        "tcp-echo-v2": "tcp",
        "tls-a-v1": "tls",
        "tls-b-v1": "tls",
        "proto-client-v1": "http",
    }


# --- WebSocket -------------------------------------------------------------------------------------


async def _websocket_round_trips(url: str, messages: list[str]) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.ws_connect(url) as ws:
            replies = []
            for m in messages:
                await ws.send_str(m)
                replies.append((await ws.receive(timeout=5)).data)
            return replies


def _stat(workload: Workload, name: str) -> int:
    status, _, body = http("GET", f"http://{workload.address}:{workload.info['agent_port']}/stats?filter={name}")
    assert status == 200, body
    return sum(int(line.rsplit(":", 1)[1]) for line in body.decode().splitlines() if line.split(":", 1)[0] == name)


def test_websocket_echo_round_trips(mesh):
    url = f"http://{_upstream(mesh, 'ws')}/ws"
    replies = asyncio.run(_websocket_round_trips(url, ["one", "two", "three", "four"]))
    assert replies == [f"ws-echo-v1: {m}" for m in ("one", "two", "three", "four")]


def test_h2_upgrade_policy_upgrades_the_hop_and_websockets_still_work(mesh):
    """DestinationRule `h2UpgradePolicy: UPGRADE`: the client sidecar speaks HTTP/2 to the server's
    (WebSocket as extended CONNECT), while the HTTP/1.1 app still sees HTTP/1.1."""
    plane, client = mesh["plane"], mesh["client"]
    h2_connections = "cluster.outbound|9080||ws-echo.default.svc.cluster.local.upstream_cx_http2_total"
    before = _stat(client, h2_connections)
    plane.apply(
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "ws-echo", "namespace": "default"},
                "spec": {
                    "host": "ws-echo",
                    "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}},
                },
            }
        )
    )
    try:
        wait_for(plane.all_synced, 10, what="the DestinationRule to reach the sidecars")
        status, _, body = wait_for(
            lambda: _h2_get(client, h2_connections, before), 10, what="an HTTP/2 connection between the sidecars"
        )
        assert status == 200 and body == b"ws-echo-v1 HTTP/1.1"
        replies = asyncio.run(_websocket_round_trips(f"http://{_upstream(mesh, 'ws')}/ws", ["a", "b", "c"]))
        assert replies == ["ws-echo-v1: a", "ws-echo-v1: b", "ws-echo-v1: c"]
    finally:
        plane.cli("delete", "destinationrule", "ws-echo", check=False)
        wait_for(plane.all_synced, 10, what="the DestinationRule's removal to reach the sidecars")


def _h2_get(client: Workload, stat: str, before: int):
    answer = http("GET", "http://ws-echo:9080/", proxy=client.outbound)
    return answer if _stat(client, stat) > before else None


# --- TCP -------------------------------------------------------------------------------------------


def _tcp_served_by(address: str, n: int) -> dict[str, int]:
    host, port = address.rsplit(":", 1)
    counts: dict[str, int] = {}
    for i in range(n):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"hello {i}\n".encode())
            reply = s.makefile("rb").readline().decode()
        who = reply.split(" ", 1)[0] if reply.endswith(f"hello {i}\n") else f"bad reply {reply!r}"
        counts[who] = counts.get(who, 0) + 1
    return counts


def test_raw_tcp_echo_round_trips_through_an_upstream_port(mesh):
    host, port = _upstream(mesh, "tcp").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        lines = s.makefile("rb")
        for word in ("alpha", "beta", "gamma"):
            s.sendall(word.encode() + b"\n")
            assert lines.readline().decode().split(" ", 1)[1] == f"{word}\n"


def _vs(name: str, spec: dict) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


TCP_SUBSETS = json.dumps(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "tcp-echo", "namespace": "default"},
        "spec": {
            "host": "tcp-echo",
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
        },
    }
)


def test_tcp_route_weights_split_connections(mesh):
    plane = mesh["plane"]
    plane.apply(TCP_SUBSETS)
    split = [
        {"destination": {"host": "tcp-echo", "subset": "v1"}, "weight": 50},
        {"destination": {"host": "tcp-echo", "subset": "v2"}, "weight": 50},
    ]
    plane.apply(
        _vs(
            "tcp-echo",
            {
                "hosts": ["tcp-echo"],
                "tcp": [
                    # Not for this client (its labels differ): the next rule applies.
                    {
                        "match": [{"sourceLabels": {"app": "someone-else"}}],
                        "route": [{"destination": {"host": "tcp-echo", "subset": "v1"}}],
                    },
                    {"match": [{"port": 9000}], "route": split},
                ],
            },
        )
    )
    try:
        wait_for(plane.all_synced, 10, what="the tcp route to reach the sidecars")
        counts = _tcp_served_by(_upstream(mesh, "tcp"), 100)
        assert set(counts) == {"tcp-echo-v1", "tcp-echo-v2"}, counts
        # 100 draws at p=0.5: sd is 5 points; 15 points either way is three sd.
        assert 35 <= counts["tcp-echo-v1"] <= 65, counts
        plane.apply(
            _vs(
                "tcp-echo",
                {
                    "hosts": ["tcp-echo"],
                    "tcp": [{"route": [{"destination": {"host": "tcp-echo", "subset": "v2"}, "weight": 100}]}],
                },
            )
        )
        wait_for(plane.all_synced, 10, what="the single-destination route to reach the sidecars")
        wait_for(
            lambda: _tcp_served_by(_upstream(mesh, "tcp"), 3) == {"tcp-echo-v2": 3}, 5, what="connections to move to v2"
        )
        assert _tcp_served_by(_upstream(mesh, "tcp"), 50) == {"tcp-echo-v2": 50}
    finally:
        plane.cli("delete", "virtualservice", "tcp-echo", check=False)
        plane.cli("delete", "destinationrule", "tcp-echo", check=False)
        wait_for(plane.all_synced, 10, what="the removal to reach the sidecars")


# --- TLS -------------------------------------------------------------------------------------------


def _tls_served_by(mesh, sni: str) -> str:
    context = ssl.create_default_context(cafile=str(mesh["cert"]))
    host, port = _upstream(mesh, "tls").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as conn:
            return conn.makefile("rb").readline().decode().strip()


def test_tls_route_by_sni_picks_the_service(mesh):
    plane = mesh["plane"]
    plane.apply(
        _vs(
            "tls-by-sni",
            {
                "hosts": ["tls-a", "tls-b"],
                "tls": [
                    {
                        "match": [{"sniHosts": [SNI["tls-b"]], "port": 9443}],
                        "route": [{"destination": {"host": "tls-b"}}],
                    },
                    {"match": [{"sniHosts": [SNI["tls-a"]]}], "route": [{"destination": {"host": "tls-a"}}]},
                ],
            },
        )
    )
    try:
        wait_for(plane.all_synced, 10, what="the tls route to reach the sidecars")
        # The client dials tls-a's upstream port; the name it asks for decides, end to end verified.
        wait_for(lambda: _tls_served_by(mesh, SNI["tls-b"]) == "tls-b-v1", 5, what="SNI tls-b to reach tls-b")
        assert [_tls_served_by(mesh, SNI["tls-b"]) for _ in range(5)] == ["tls-b-v1"] * 5
        assert [_tls_served_by(mesh, SNI["tls-a"]) for _ in range(5)] == ["tls-a-v1"] * 5
        # A name no rule claims goes to the service whose port was dialed.
        assert _tls_served_by(mesh, SNI["nobody"]) == "tls-a-v1"
    finally:
        plane.cli("delete", "virtualservice", "tls-by-sni", check=False)
        wait_for(plane.all_synced, 10, what="the removal to reach the sidecars")


def test_run_refuses_bad_protocol_and_upstream_options(mesh):
    plane = mesh["plane"]
    cases = [
        (("--protocol", "UDP"), "--protocol: UDP is not proxied"),
        (("--protocol", "thrift"), "--protocol: unknown protocol 'thrift'"),
        (("--port-name", "udp-dns"), "--port-name: UDP is not proxied"),
        (("--upstream", "tcp-echo"), "--upstream 'tcp-echo' must be SERVICE[.NAMESPACE]:PORT[=LOCALPORT]"),
        (
            ("--upstream", "a:9000=7000", "--upstream", "b:9001=7000"),
            "local port 7000 is already used by --upstream a:9000=7000",
        ),
        (("--upstream", "a:9000=9080"), "local port 9080 is already used by --port"),
    ]
    for extra, message in cases:
        result = plane.cli(
            "run", "--service", "bad", "--token-file", "-", *extra, "--", "true", input="x\n", check=False
        )
        assert result.returncode != 0 and message in result.stderr + result.stdout, (extra, result.stderr)
    result = plane.cli("server", "--home", str(plane.home / "unused"), "--h2-upgrade-policy", "SIDEWAYS", check=False)
    said = " ".join((result.stderr + result.stdout).replace("│", " ").split())  # rich wraps it in a box
    assert result.returncode != 0 and "Invalid value for '--h2-upgrade-policy'" in said
    assert "'SIDEWAYS' is not one of 'DO_NOT_UPGRADE', 'UPGRADE'" in said
