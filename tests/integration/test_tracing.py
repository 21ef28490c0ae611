"""Distributed tracing with real sidecars: a request through productpage -> reviews -> ratings
(each the BACKEND app, which calls the next hop with `?call=` and copies the trace headers) is one
trace in the control plane's embedded collector, its spans linked parent to child across the
hops, and `lattice trace` shows it.

Envoy's OpenTelemetry tracer flushes every 5 s (or every 5 spans), so each test waits for the spans.
A config change that changes the tracing config retires the listeners that held the old one: the
spans their tracer still buffers go with them. So after one, tests wait until the old listeners
have drained before they send the request they look for.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.parse

import pytest
from lattice.api import otlp

from harness import (
    BACKEND,
    Enrolled,
    LATTICE,
    Workload,
    die_with_parent,
    drained,
    http,
    reset_config,
    running,
    stop,
    wait_for,
)
from lattice.agent.address import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tracing")]
HOPS = ("productpage", "reviews", "ratings")
SAMPLE_ALL = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
"""


@pytest.fixture(scope="module")
def mesh(shared_plane):
    with running(shared_plane, [Workload(shared_plane, service, command=BACKEND) for service in HOPS]) as ready:
        yield dict(zip(HOPS, ready, strict=True))


@pytest.fixture
def ctx(shared_plane, mesh):
    reset_config(shared_plane)
    for w in mesh.values():  # no sidecar still serves connections on a listener a change replaced
        drained(w, timeout=10)
    return shared_plane, mesh


def _three_hops(productpage: Workload, headers: dict | None = None) -> dict:
    """GET productpage, which calls reviews, which calls ratings; the body productpage's app answered."""
    reviews = "http://reviews:9080/reviews/0?" + urllib.parse.urlencode({"call": "http://ratings:9080/ratings/0"})
    status, _, raw = productpage.call(
        "http://productpage:9080/productpage?" + urllib.parse.urlencode({"call": reviews}), headers, timeout=10
    )
    body = json.loads(raw)
    assert status == 200, body
    assert body["called"]["status"] == 200 and body["called"]["body"]["called"]["body"]["served_by"] == "ratings-v1", (
        body
    )
    return body


def _linked(plane, trace_id: str, required: set[str]) -> dict | None:
    """The trace once its ratings SERVER span is there and every span from it up to the root is
    too, with all `required` services on that path; else None (spans still in flight)."""
    status, trace = plane.call("GET", f"/api/v1/traces/{trace_id}")
    if status != 200:
        return None
    spans = {s["span_id"]: s for s in trace["spans"]}
    leaf = next((s for s in spans.values() if s["service"] == "ratings.default" and s["kind"] == "SERVER"), None)
    path = []
    while leaf is not None:
        path.append(leaf)
        leaf = spans.get(leaf["parent_span_id"])
    services = [s["service"] for s in reversed(path)]
    if not required <= set(services):
        return None
    return trace | {"path": path}


def _check(plane, trace_id: str, also: tuple[str, ...] = ()) -> dict:
    required = {"productpage.default", "reviews.default", "ratings.default", *also}
    trace = wait_for(
        lambda: _linked(plane, trace_id, required),
        30,
        interval=0.5,
        what=f"trace {trace_id} to link productpage -> reviews -> ratings",
    )
    path = list(reversed(trace["path"]))  # root first
    assert trace["trace_id"] == trace_id and trace["span_count"] >= 3
    # Each hop: the caller's CLIENT span is the parent of the callee's SERVER span.
    services = [(s["service"].split(".")[0], s["kind"]) for s in path]
    assert ("reviews", "SERVER") in services and ("ratings", "SERVER") in services
    for parent, child in zip(path, path[1:], strict=False):
        assert child["parent_span_id"] == parent["span_id"]
        if child["kind"] == "SERVER" and parent["service"] != child["service"]:
            assert parent["kind"] == "CLIENT", (parent, child)
    ratings = path[-1]
    assert ratings["http"].get("status_code") == "200" and not ratings["error"]
    return trace


def _listed_by_cli(plane, trace_id: str) -> bool:
    listed = json.loads(plane.cli("trace", "ratings", "-o", "json").stdout)
    return any(t["trace_id"] == trace_id for t in listed["items"])


def test_a_sampled_traceparent_is_one_trace_across_three_hops(ctx):
    plane, mesh = ctx
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    body = _three_hops(mesh["productpage"], {"traceparent": f"00-{trace_id}-{parent}-01"})
    assert body["headers"]["traceparent"].split("-")[1] == trace_id  # the app got the caller's trace
    trace = _check(plane, trace_id)
    assert trace["path"][-1]["parent_span_id"] == parent  # the client's span is the root's parent
    assert _listed_by_cli(plane, trace_id)  # as a user asks: `lattice trace ratings -o json`
    tree = plane.cli("trace", "--id", trace_id).stdout
    assert "ratings.default" in tree and "reviews.default" in tree and trace_id in tree


def test_a_telemetry_resource_samples_every_request(ctx):
    plane, mesh = ctx
    plane.apply(SAMPLE_ALL)
    wait_for(plane.all_synced, 10, what="every proxy to hold the 100% sampling")
    for w in mesh.values():  # no sidecar still serves connections on a listener a change replaced
        drained(w, timeout=10)
    body = _three_hops(mesh["productpage"])  # no trace headers: the first sidecar starts the trace
    traceparent = body["headers"].get("traceparent", "")
    assert traceparent.endswith("-01"), body["headers"]  # sampled by productpage's sidecar
    trace_id = traceparent.split("-")[1]
    _check(plane, trace_id)
    assert wait_for(lambda: _listed_by_cli(plane, trace_id), 10, what="`lattice trace ratings` to list the trace")


def test_unsampled_requests_leave_no_trace(ctx):
    plane, mesh = ctx
    trace_id = secrets.token_hex(16)
    _three_hops(mesh["productpage"], {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"})  # sampled flag off
    marker = secrets.token_hex(16)  # a sampled request after it: once its spans are in, the first one's would be too
    _three_hops(mesh["productpage"], {"traceparent": f"00-{marker}-{secrets.token_hex(8)}-01"})
    _check(plane, marker)
    assert plane.call("GET", f"/api/v1/traces/{trace_id}")[0] == 404


def test_only_workloads_post_spans_and_only_admins_read_them(ctx, tmp_path):
    plane, _ = ctx
    spans = otlp.ExportTraceServiceRequest()
    spans.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="forged"
    )
    anonymous = ssl.create_default_context()
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
    status, _, raw = http("POST", f"{plane.agent_api}/agent/v1/traces", spans.SerializeToString(), context=anonymous)
    assert status == 401 and "workload certificate" in json.loads(raw)["error"]
    workload = Enrolled(plane, "tracer", "tracer-1.default", tmp_path / "tracer")
    status, _, raw = http(
        "POST", f"{plane.agent_api}/agent/v1/traces", b"\xff not protobuf", context=workload.context()
    )
    assert status == 400 and "OTLP" in json.loads(raw)["error"]
    status, _, raw = http(
        "POST", f"{plane.agent_api}/agent/v1/traces", spans.SerializeToString(), context=workload.context()
    )
    assert status == 200 and json.loads(raw) == {"accepted": 1}
    assert http("GET", f"{plane.api}/api/v1/traces")[0] == 401  # no admin credential
    trace = plane.get(f"/api/v1/traces/{bytes(range(1, 17)).hex()}")
    assert trace["spans"][0]["reporter"] == "spiffe://cluster.local/ns/default/sa/tracer"


EDGE = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{route: [{destination: {host: productpage, port: {number: 9080}}}]}]
"""


@pytest.fixture
def gateway(ctx):
    """`lattice gateway` serving Gateway port 80 on a free local port, started after the reset."""
    plane, _ = ctx
    local = free_port()
    env = plane.env | {"LATTICE_TOKEN": plane.token("istio-ingressgateway", "istio-system")}
    log = plane.home / f"gateway-{secrets.token_hex(3)}.log"
    process = subprocess.Popen(
        [LATTICE, "gateway", "--listen", f"80={local}"],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        plane.apply(EDGE)
        proxy = wait_for(
            lambda: next(
                (
                    p
                    for p in plane.status()["proxies"]
                    if p["name"] == "ingressgateway" and p["healthy"] and p["types"]["Listener"]["state"] == "SYNCED"
                ),
                None,
            ),
            30,
            what=f"the gateway (log {log})",
        )
        yield f"http://{proxy['address']}:{local}"
    finally:
        stop(process)
        wait_for(
            lambda: all(p["name"] != "ingressgateway" for p in plane.status()["proxies"]),
            10,
            what="the gateway to deregister",
        )


def test_a_gateway_is_a_hop_of_its_own(ctx, gateway):
    plane, _ = ctx
    reviews = "http://reviews:9080/reviews/0?" + urllib.parse.urlencode({"call": "http://ratings:9080/ratings/0"})
    url = f"{gateway}/productpage?" + urllib.parse.urlencode({"call": reviews})

    def routed() -> str | None:
        """A new trace per try (the gateway may not route yet); the trace id of the one that got through."""
        trace_id = secrets.token_hex(16)
        status, _, _ = http("GET", url, headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}, timeout=10)
        return trace_id if status == 200 else None

    trace_id = wait_for(routed, 20, interval=0.5, what="the gateway to route to productpage")
    path = list(reversed(_check(plane, trace_id, also=("istio-ingressgateway.istio-system",))["path"]))
    edge = [(s["service"], s["kind"]) for s in path if s["service"].startswith("istio-ingressgateway.")]
    # Its SERVER span for the request it took, a CLIENT span for the one it sent: the parent of productpage's.
    assert edge == [("istio-ingressgateway.istio-system", "SERVER"), ("istio-ingressgateway.istio-system", "CLIENT")]
    assert (path[2]["service"], path[2]["kind"]) == ("productpage.default", "SERVER")
