"""Gateway API `Gateway`s served by `lattice gateway --gateway-class`, and the Gateway API's own
conformance cases (gateway profile) run against it: one mesh for the module (the conformance
base's gateway `same-namespace` and backends infra-backend-v1/v2/v3), each case's manifests applied
as the upstream suite applies them, its table of requests checked against who answered.

The cases live in tests/conformance/gateway-api/httproute-gateway.yaml (ported, see its header).
"""

from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from harness import BACKEND, LATTICE, ControlPlane, Workload, die_with_parent, reset_config, running, stop, wait_for

from lattice.agent.address import free_port

pytestmark = pytest.mark.slow
INFRA = "gateway-conformance-infra"
CASES = yaml.safe_load(
    (Path(__file__).parents[1] / "conformance" / "gateway-api" / "httproute-gateway.yaml").read_text()
)
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
    """`lattice gateway --gateway-class lattice --gateway same-namespace -n INFRA` as a user runs it."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.local = free_port()
        self.log = plane.home / f"k8s-gateway-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> GatewayApiProxy:
        args = ["--gateway-class", "lattice", "--gateway", "same-namespace", "-n", INFRA, "--name", "same-namespace"]
        env = self.plane.env | {"LATTICE_TOKEN": self.plane.token("istio-same-namespace", INFRA)}
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
        return next((p for p in self.plane.status()["proxies"] if p["name"] == "same-namespace" and p["healthy"]), None)

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
    with running(shared_plane, backends):
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


def _route_accepted(plane: ControlPlane, name: str) -> bool:
    item = plane.get(f"/api/v1/resources/httproutes/{INFRA}/{name}")
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
