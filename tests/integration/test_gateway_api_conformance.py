"""Gateway API `Gateway`s served by `lattice gateway --gateway-class`, and the Gateway API's own
conformance cases (gateway profile) run against it: one mesh for the module (the conformance
base's gateway `same-namespace` and backends infra-backend-v1/v2/v3), each case's manifests applied
as the upstream suite applies them, its table of requests checked against who answered.

The cases live in tests/conformance/gateway-api/httproute-gateway.yaml and grpcroute-gateway.yaml
(ported, see their headers); the GRPCRoute cases' backends grpc-infra-backend-v1/v2/v3 run the gRPC
echo app (tests/apps/grpc_echo.py, which serves the conformance echo's service and methods).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import yaml
from harness import BACKEND, LATTICE, ControlPlane, Workload, die_with_parent, reset_config, running, stop, wait_for

from lattice.agent.address import free_port

pytestmark = pytest.mark.slow
INFRA = "gateway-conformance-infra"
CONFORMANCE = Path(__file__).parents[1] / "conformance" / "gateway-api"
CASES = yaml.safe_load((CONFORMANCE / "httproute-gateway.yaml").read_text())
GRPC_CASES = yaml.safe_load((CONFORMANCE / "grpcroute-gateway.yaml").read_text())
GRPC_ECHO = [sys.executable, str(Path(__file__).parents[1] / "apps" / "grpc_echo.py")]
GRPC_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
BASE = f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: lattice}}
spec: {{controllerName: lattice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {INFRA}}}
spec:
  gatewayClassName: lattice
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Same
"""


class GatewayApiProxy:
    """`lattice gateway --gateway-class lattice --gateway NAME -n INFRA` as a user runs it."""

    def __init__(self, plane: ControlPlane, gateway: str = "same-namespace") -> None:
        self.plane, self.gateway = plane, gateway
        self.local = free_port()
        self.log = plane.home / f"k8s-gateway-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> GatewayApiProxy:
        args = ["--gateway-class", "lattice", "--gateway", self.gateway, "-n", INFRA, "--name", self.gateway]
        env = self.plane.env | {"LATTICE_TOKEN": self.plane.token(f"istio-{self.gateway}", INFRA)}
        self.process = subprocess.Popen(
            [LATTICE, "gateway", *args, "--listen", f"80={self.local}", "--log-level", "info"],
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.info = wait_for(self._ready, 30, what=f"the gateway to be ready (log {self.log})")
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"lattice gateway exited with {self.process.returncode}:\n{self.log.read_text()}")
        return next((p for p in self.plane.status()["proxies"] if p["name"] == self.gateway and p["healthy"]), None)

    def request(self, method: str, path: str, host: str, headers: dict) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.info["address"], self.local, timeout=5)
        try:
            conn.request(method, path, headers={"Host": host, **headers})
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("x-served-by", "")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def infra(shared_plane):
    backends = [
        Workload(
            shared_plane,
            f"infra-backend-{v}",
            v,
            command=BACKEND,
            extra=("--namespace", INFRA, "--port", "8080"),
            token=shared_plane.token(f"infra-backend-{v}", INFRA),
        )
        for v in ("v1", "v2", "v3")
    ]
    # The GRPCRoute cases' grpc-infra-backend-v1/v2/v3 (port 8080, h2c), answering as
    # grpc-infra-backend-<version>; started with the others, before the gateway (whose config
    # running() could not wait for).
    backends += [
        Workload(
            shared_plane,
            f"grpc-infra-backend-{v}",
            v,
            command=GRPC_ECHO,
            extra=("--namespace", INFRA, "--port", "8080", "--protocol", "GRPC"),
            env={"BACKEND_SERVICE": "grpc-infra-backend"},
        )
        for v in ("v1", "v2", "v3")
    ]
    with running(shared_plane, backends, timeout=30, ready_timeout=60):
        gateway = GatewayApiProxy(shared_plane).start()
        try:
            yield gateway
        finally:
            stop(gateway.process)


def _holds_config(plane: ControlPlane) -> bool:
    """Every proxy connected and holding what it was sent; a gateway asks for routes and endpoints
    only once a listener or cluster needs them, so those may not have been sent at all."""
    optional = ("RouteConfiguration", "ClusterLoadAssignment")
    s = plane.status()
    return not s["server"]["push_pending"] and all(
        p["connected"]
        and all(t["state"] == "SYNCED" or (n in optional and t["state"] == "NOT SENT") for n, t in p["types"].items())
        for p in s["proxies"]
    )


@pytest.fixture
def gateway(shared_plane, infra):
    reset_config(shared_plane, synced=lambda: _holds_config(shared_plane))
    shared_plane.apply(BASE)
    wait_for(
        lambda: _condition(shared_plane, "gtw", "same-namespace", "Programmed"), 10, what="the Gateway to be programmed"
    )
    return infra


def _condition(plane: ControlPlane, kind: str, name: str, wanted: str) -> bool:
    item = plane.get(f"/api/v1/resources/{kind}/{INFRA}/{name}")
    return any(c["type"] == wanted and c["status"] == "True" for c in item.get("status", {}).get("conditions", []))


def _route_accepted(plane: ControlPlane, name: str, kind: str = "httproutes") -> bool:
    item = plane.get(f"/api/v1/resources/{kind}/{INFRA}/{name}")
    parents = item.get("status", {}).get("parents", [])
    return bool(parents) and all(
        c["status"] == "True" for p in parents for c in p["conditions"] if c["type"] in ("Accepted", "ResolvedRefs")
    )


def _answer(gateway: GatewayApiProxy, request: dict) -> str:
    status, served_by = gateway.request(
        request.get("method", "GET"), request["path"], request.get("host", "example.com"), request.get("headers", {})
    )
    return served_by.removesuffix(f"-{served_by.rsplit('-', 1)[-1]}") if status == 200 else f"status {status}"


def _expected(request: dict) -> str:
    return request["backend"] if "backend" in request else f"status {request['status']}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance_case(shared_plane, gateway, case):
    shared_plane.apply(case["manifests"])
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(case["manifests"])]
    wait_for(lambda: all(_route_accepted(shared_plane, n) for n in names), 10, what=f"{names} to be accepted")
    wait_for(lambda: _holds_config(shared_plane), 10, what="every proxy to hold the routes")
    # The upstream suite waits for each expected answer ("eventually consistent"); so does this,
    # briefly, then compares the whole table at once so a failure shows every row.
    wait_for(lambda: _answer(gateway, case["requests"][0]) == _expected(case["requests"][0]), 10, what="the first row")
    got = [(r, _answer(gateway, r)) for r in case["requests"]]
    wrong = [f"{r} -> {answer}" for r, answer in got if answer != _expected(r)]
    assert not wrong, "\n".join(wrong)


def test_gateway_api_and_istio_gateways_coexist(shared_plane, gateway):
    """Istio's Gateway and the Gateway API's, same namespace and name: two resources, each listed,
    got and deleted by its own name."""
    shared_plane.apply(
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {INFRA}}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
"""
    )
    istio = shared_plane.cli("get", "gateways", "-n", INFRA, "-o", "yaml").stdout
    k8s = shared_plane.cli("get", "gateways.gateway.networking.k8s.io", "-n", INFRA, "-o", "yaml").stdout
    assert [i["apiVersion"] for i in yaml.safe_load(istio)["items"]] == ["networking.istio.io/v1"]
    k8s_items = yaml.safe_load(k8s)["items"]
    assert [i["apiVersion"] for i in k8s_items] == ["gateway.networking.k8s.io/v1"]
    conditions = {c["type"]: c["status"] for c in k8s_items[0]["status"]["conditions"]}
    assert conditions == {"Accepted": "True", "Programmed": "True"}
    shared_plane.cli("delete", "gtw", "same-namespace", "-n", INFRA)
    assert yaml.safe_load(shared_plane.cli("get", "gw", "-n", INFRA, "-o", "yaml").stdout)["items"]
    assert not yaml.safe_load(shared_plane.cli("get", "gtw", "-n", INFRA, "-o", "yaml").stdout)["items"]


def test_cross_namespace_backend_needs_a_reference_grant(shared_plane, gateway):
    route = f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: elsewhere, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules: [{{backendRefs: [{{name: web, namespace: default, port: 9080}}]}}]
"""
    shared_plane.apply(route)
    wait_for(lambda: _holds_config(shared_plane), 10, what="every proxy to hold the route")
    item = shared_plane.get(f"/api/v1/resources/httproutes/{INFRA}/elsewhere")
    resolved = next(c for c in item["status"]["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
    assert (resolved["status"], resolved["reason"]) == ("False", "RefNotPermitted")
    assert gateway.request("GET", "/", "example.com", {})[0] == 500
    shared_plane.apply(
        f"""apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: from-infra, namespace: default}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]
  to: [{{group: "", kind: Service}}]
"""
    )
    wait_for(lambda: _route_accepted(shared_plane, "elsewhere"), 10, what="the route's refs to resolve")


class GrpcCaller:
    """A gRPC client of the conformance echo service, calling a gateway in plaintext HTTP/2."""

    def __init__(self, gateway: GatewayApiProxy) -> None:
        self.target = f"{gateway.info['address']}:{gateway.local}"
        self.channels: dict[str, grpc.Channel] = {}

    def call(self, row: dict) -> tuple[str, dict]:
        """("OK" or the gRPC status code's name, the reply: who answered and what it saw)."""
        authority = row.get("authority", self.target)  # the suite's default: the gateway's address
        if authority not in self.channels:
            options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
            self.channels[authority] = grpc.insecure_channel(self.target, options=options)
        stub = self.channels[authority].unary_unary(f"/{GRPC_SERVICE}/{row.get('method', 'Echo')}")
        metadata = tuple((k.lower(), v) for k, v in row.get("metadata", {}).items())
        try:
            return "OK", json.loads(stub(b"", metadata=metadata, timeout=5))
        except grpc.RpcError as e:
            return e.code().name, {}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _grpc_mismatches(caller: GrpcCaller, row: dict) -> list[str]:
    code, reply = caller.call(row)
    wrong = []
    if code != row.get("code", "OK"):
        wrong.append(f"{code}, wanted {row.get('code', 'OK')}")
    if "backend" in row and reply.get("served_by") != row["backend"]:
        wrong.append(f"answered by {reply.get('served_by') or 'no backend'}, wanted {row['backend']}")
    seen = reply.get("metadata", {})
    for name, value in row.get("request_metadata", {}).items():
        if seen.get(name.lower()) != value:
            wrong.append(f"backend saw {name}: {seen.get(name.lower())!r}, wanted {value!r}")
    wrong += [f"backend saw {n}" for n in row.get("absent_request_metadata", []) if n.lower() in seen]
    return wrong


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c["name"] for c in GRPC_CASES])
def test_grpc_conformance_case(shared_plane, gateway, case):
    manifests = case["manifests"].replace("{GATEWAY_CLASS_NAME}", "lattice")
    shared_plane.apply(manifests)
    routes = [d["metadata"]["name"] for d in yaml.safe_load_all(manifests) if d["kind"] == "GRPCRoute"]
    own = GatewayApiProxy(shared_plane, case["gateway"]).start() if "gateway" in case else None
    caller = GrpcCaller(own or gateway)
    try:
        wait_for(
            lambda: all(_route_accepted(shared_plane, n, "grpcroutes") for n in routes), 10, what=f"{routes} accepted"
        )
        wait_for(lambda: _holds_config(shared_plane), 30, what="every proxy to hold the routes")
        rows = case["requests"]
        first = rows[0]
        if "distribution" in first:
            _expect_distribution(caller, first)
            return
        try:  # the suite waits for each expected answer; so does this, for the first row
            wait_for(lambda: not _grpc_mismatches(caller, first), 30, what="the first row")
        except AssertionError:
            pass  # the table below says how
        wrong = [f"{row} -> {'; '.join(m)}" for row in rows if (m := _grpc_mismatches(caller, row))]
        assert not wrong, "\n".join(wrong)
    finally:
        caller.close()
        if own is not None:
            stop(own.process)


def _expect_distribution(caller: GrpcCaller, row: dict, n: int = 500) -> None:
    """The suite's weight check: each backend's share of the calls within 5 points of its weight."""
    wait_for(lambda: caller.call(row)[0] == "OK", 30, what="a first answer")
    for _ in range(3):  # the suite retries a distribution up to 10 times
        counts = Counter(reply.get("served_by", code) for code, reply in (caller.call(row) for _ in range(n)))
        got = {k: v / n for k, v in counts.items()}
        if all(abs(got.get(b, 0) - share) <= 0.05 for b, share in row["distribution"].items()) and set(got) <= set(
            row["distribution"]
        ):
            return
    pytest.fail(f"shares {got}, wanted {row['distribution']} within 0.05")
