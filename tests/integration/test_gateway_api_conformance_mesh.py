"""The Gateway API's conformance cases for the GAMMA (mesh) profile, run on one mesh for the module.

The upstream mesh base (conformance/mesh/manifests.yaml) is echo pods behind three Services in
gateway-conformance-mesh: `echo` (both versions), `echo-v1` and `echo-v2` (one each), on ports 80
and 8080. A Lattice workload serves one service port, so the base is six `lattice run` workloads of
the echo backend (tests/apps/backend.py, which reports what it saw as the conformance echo server
does), each answering as the pod it stands for (`echo-v1` / `echo-v2`):

    echo      v1 :80, v2 :80          the Service `echo`, both versions
    echo-v1   :80, :8080              the Service `echo-v1`
    echo-v2   :80, :8080              the Service `echo-v2`

and, as upstream, an echo in gateway-conformance-mesh-consumer. The gRPC cases add the gRPC echo
(tests/apps/grpc_echo.py) on the base's `grpc` port 7070: `echo` v1, `echo-v1`, `echo-v2`. The client is, as upstream
(`ConnectToApp(MeshAppEchoV1)`), the app of the echo v1 workload: its requests go through its own
sidecar. Each case's manifests are applied with `lattice apply` as the suite applies them, and its
table (tests/conformance/gateway-api/mesh.yaml, see its header) is checked row by row.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from harness import BACKEND, Workload, reset_config, running, wait_for

pytestmark = pytest.mark.slow
MESH = "gateway-conformance-mesh"
CONSUMER = "gateway-conformance-mesh-consumer"
ALL_CASES = yaml.safe_load((Path(__file__).parents[1] / "conformance" / "gateway-api" / "mesh.yaml").read_text())
CASES = [c for c in ALL_CASES if c.get("protocol") != "grpc"]
GRPC_CASES = [c for c in ALL_CASES if c.get("protocol") == "grpc"]
GRPC_ECHO = [sys.executable, str(Path(__file__).parents[1] / "apps" / "grpc_echo.py")]
GRPC_ECHO_METHOD = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo"
# Cases Lattice answers differently from the suite, each with the reason (kept failing, strictly).
DIFFERENCES: dict[str, str] = {}


class Client:
    """An app in the mesh making requests through its sidecar's outbound HTTP proxy."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, host: str, path: str, headers: dict) -> tuple[int, dict, dict]:
        """(status, response headers lower-cased, what the backend saw or {})."""
        for attempt in (1, 2):  # a kept-alive connection the sidecar closed meanwhile: once more
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.workload.address, 15001, timeout=5)
            try:
                self.conn.request(method, f"http://{host}{path}", headers={**self.workload.proxy_headers, **headers})
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        got = {k.lower(): v for k, v in response.getheaders()}
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            seen = json.loads(body) if got.get("x-served-by") else {}
        except ValueError:
            seen = {}
        return response.status, got, seen

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="module")
def mesh(shared_plane):
    def echo(service: str, version: str, port: int, namespace: str = MESH) -> Workload:
        return Workload(
            shared_plane,
            service,
            version,
            command=BACKEND,
            extra=("--namespace", namespace, "--port", str(port)),
            env={"BACKEND_SERVICE": "echo"},  # answers as the pod it stands for: echo-v1 or echo-v2
        )

    workloads = [
        echo("echo", "v1", 80),
        echo("echo", "v2", 80),
        echo("echo-v1", "v1", 80),
        echo("echo-v1", "v1", 8080),
        echo("echo-v2", "v2", 80),
        echo("echo-v2", "v2", 8080),
        echo("echo", "v1", 80, CONSUMER),
    ]
    # Seven sidecars start at once: on a loaded machine that takes a while.
    with running(shared_plane, workloads, timeout=60, ready_timeout=120):
        clients = {"mesh": Client(workloads[0]), "consumer": Client(workloads[-1])}
        try:
            yield {"clients": clients, "pods": {"echo-v1": workloads[0], "echo-v2": workloads[1]}}
        finally:
            for c in clients.values():
                c.close()


def _host(mesh: dict, row: dict) -> str:
    host = row.get("host", "echo")  # the suite's default
    if host.startswith("{pod:"):  # the pod's own address and port, past every Service
        pod = mesh["pods"][host[5:-1]]
        return f"{pod.address}:{pod.info['port']}"
    return host


def _mismatches(mesh: dict, row: dict) -> list[str]:
    """What in `row`'s answer differs from its expectations ([] when it all holds)."""
    client = mesh["clients"][row.get("client", "mesh")]
    status, headers, seen = client.request(
        row.get("method", "GET"), _host(mesh, row), row.get("path", "/"), row.get("headers", {})
    )
    wrong = []
    want_status = row.get("status", 200)
    if status != want_status:
        wrong.append(f"status {status}, wanted {want_status}")
    if "backend" in row and seen.get("served_by") != row["backend"]:
        wrong.append(f"answered by {seen.get('served_by') or 'no backend'}, wanted {row['backend']}")
    for name, value in row.get("response_headers", {}).items():
        if headers.get(name.lower()) != value:
            wrong.append(f"response header {name}: {headers.get(name.lower())!r}, wanted {value!r}")
    wrong += [f"response header {n} present" for n in row.get("absent_response_headers", []) if n.lower() in headers]
    request_headers = seen.get("headers", {})
    for name, value in row.get("request_headers", {}).items():
        if request_headers.get(name.lower()) != value:
            wrong.append(f"backend saw {name}: {request_headers.get(name.lower())!r}, wanted {value!r}")
    wrong += [f"backend saw {n}" for n in row.get("absent_request_headers", []) if n.lower() in request_headers]
    if "request_path" in row and seen.get("path") != row["request_path"]:
        wrong.append(f"backend saw path {seen.get('path')!r}, wanted {row['request_path']!r}")
    if "redirect" in row:
        location = urlsplit(headers.get("location", ""))
        got = {"scheme": location.scheme, "host": location.hostname, "port": location.port, "path": location.path}
        wrong += [
            f"Location {headers.get('location')!r}: {part} {got[part]!r}, wanted {value!r}"
            for part, value in row["redirect"].items()
            if got[part] != value
        ]
    return wrong


def _distribution(mesh: dict, row: dict, n: int = 500) -> dict[str, float]:
    client = mesh["clients"]["mesh"]
    counts = Counter(
        seen.get("served_by", f"status {status}")
        for status, _, seen in (client.request("GET", _host(mesh, row), row.get("path", "/"), {}) for _ in range(n))
    )
    return {k: v / n for k, v in counts.items()}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=DIFFERENCES[c["name"]]))
        if c["name"] in DIFFERENCES
        else c
        for c in CASES
    ],
    ids=[c["name"] for c in CASES],
)
def test_mesh_conformance_case(shared_plane, mesh, case):
    reset_config(shared_plane)
    if case["manifests"]:
        shared_plane.apply(case["manifests"])
    wait_for(shared_plane.all_synced, 30, what="every proxy to hold the routes")
    rows = case["requests"]
    # The suite waits for each expected answer ("eventually consistent"); so does this, briefly,
    # for the first row, then checks the whole table at once so a failure shows every row.
    first = rows[0]
    if "distribution" in first:
        wait_for(lambda: not _mismatches(mesh, {"host": first.get("host"), "path": "/"}), 30, what="an answer")
        for _ in range(3):  # the suite retries a distribution up to 10 times
            got = _distribution(mesh, first)
            off = {b: got.get(b, 0) for b, share in first["distribution"].items() if abs(got.get(b, 0) - share) > 0.05}
            if not off and set(got) == set(first["distribution"]):
                return
        pytest.fail(f"shares {got}, wanted {first['distribution']} within 0.05")
    try:
        wait_for(lambda: not _mismatches(mesh, first), 30, what="the first row to be answered as expected")
    except AssertionError:
        pass  # the table below says how
    wrong = [f"{row} -> {'; '.join(m)}" for row in rows if (m := _mismatches(mesh, row))]
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def grpc_echoes(shared_plane, mesh):
    """The mesh base's `grpc` port (7070, h2c) of echo, echo-v1 and echo-v2, for the gRPC cases only."""
    workloads = [
        Workload(
            shared_plane,
            service,
            version,
            command=GRPC_ECHO,
            extra=("--namespace", MESH, "--port", "7070", "--protocol", "GRPC"),
            env={"BACKEND_SERVICE": "echo"},
        )
        for service, version in (("echo", "v1"), ("echo-v1", "v1"), ("echo-v2", "v2"))
    ]
    with running(shared_plane, workloads, timeout=60, ready_timeout=120):
        # A sidecar is ready before its app listens: on a loaded machine the gRPC app takes a while.
        reset_config(shared_plane)
        client = GrpcClient(mesh["clients"]["mesh"].workload)
        try:
            for host in ("echo:7070", "echo-v1:7070", "echo-v2:7070"):
                wait_for(
                    lambda h=host: client.call({"host": h})[0] == "OK", 120, what=f"the gRPC echo of {host} to answer"
                )
        finally:
            client.close()
        yield


class GrpcClient:
    """The mesh client's app calling over HTTP/2 (prior knowledge) through its sidecar, routed by :authority."""

    def __init__(self, workload: Workload) -> None:
        self.target = f"{workload.address}:15001"
        self.credential = tuple(workload.proxy_headers.items())  # what the app's HTTP_PROXY holds
        self.channels: dict[str, grpc.Channel] = {}

    def call(self, row: dict) -> tuple[str, dict]:
        authority = row["host"]
        if authority not in self.channels:
            options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
            self.channels[authority] = grpc.insecure_channel(self.target, options=options)
        metadata = self.credential + tuple((k.lower(), v) for k, v in row.get("metadata", {}).items())
        try:
            return "OK", json.loads(
                self.channels[authority].unary_unary(GRPC_ECHO_METHOD)(b"", metadata=metadata, timeout=5)
            )
        except grpc.RpcError as e:
            return f"{e.code().name} {e.details()}", {}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _grpc_mismatches(client: GrpcClient, row: dict) -> list[str]:
    code, reply = client.call(row)
    wrong = [] if code == "OK" else [f"{code}, wanted OK"]
    if "backend" in row and reply.get("served_by") != row["backend"]:
        wrong.append(f"answered by {reply.get('served_by') or 'no backend'}, wanted {row['backend']}")
    seen = reply.get("metadata", {})
    for name, value in row.get("request_metadata", {}).items():
        if seen.get(name.lower()) != value:
            wrong.append(f"backend saw {name}: {seen.get(name.lower())!r}, wanted {value!r}")
    wrong += [f"backend saw {n}" for n in row.get("absent_request_metadata", []) if n.lower() in seen]
    return wrong


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c["name"] for c in GRPC_CASES])
def test_mesh_grpc_conformance_case(shared_plane, mesh, grpc_echoes, case):
    reset_config(shared_plane)
    shared_plane.apply(case["manifests"])
    wait_for(shared_plane.all_synced, 30, what="every proxy to hold the routes")
    client = GrpcClient(mesh["clients"]["mesh"].workload)
    try:
        rows, first = case["requests"], case["requests"][0]
        if "distribution" in first:
            wait_for(lambda: client.call(first)[0] == "OK", 30, what="a first answer")
            for _ in range(3):  # the suite retries a distribution up to 10 times
                n = 500
                counts = Counter(reply.get("served_by", code) for code, reply in (client.call(first) for _ in range(n)))
                got = {k: v / n for k, v in counts.items()}
                if set(got) == set(first["distribution"]) and all(
                    abs(got[b] - share) <= 0.05 for b, share in first["distribution"].items()
                ):
                    return
            pytest.fail(f"shares {got}, wanted {first['distribution']} within 0.05")
        try:  # the suite waits for each expected answer; so does this, for the first row
            wait_for(lambda: not _grpc_mismatches(client, first), 30, what="the first row")
        except AssertionError:
            pass  # the table below says how
        wrong = [f"{row} -> {'; '.join(m)}" for row in rows if (m := _grpc_mismatches(client, row))]
        assert not wrong, "\n".join(wrong)
    finally:
        client.close()
