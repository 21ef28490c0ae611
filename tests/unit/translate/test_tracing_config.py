"""Tracing in the generated config: the tracer on every connection manager, its sampling and tags,
and the cluster to an external collector. The last tests hand the result to `envoy --mode validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.tracers.opentelemetry.samplers.v3 import (
    parent_based_sampler_pb2,
    trace_id_ratio_based_sampler_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import json_format

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh.telemetry import Telemetry, Tracing
from lattice.translate import CLUSTER, LISTENER, names, tracing, translate
from lattice.translate.protos import pack

ENVOY = Path(sys.executable).parent / "envoy"
OTEL = Tracing(
    provider="tempo", kind="opentelemetry", service="tempo.observability.svc.cluster.local", port=4317, sampling=25.0
)
ZIPKIN = Tracing(provider="zipkin", kind="zipkin", service="zipkin.example.com", port=9411, sampling=30.0)
GATEWAY_YAML = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"""


def _workload(name: str, service: str, n: int, labels: dict | None = None, **extra) -> Workload:
    return Workload.from_record(
        {
            "id": f"{name}-00000{n}.{extra.get('namespace', 'default')}",
            "name": name,
            "namespace": "default",
            "service": service,
            "service_account": service,
            "labels": labels if labels is not None else {"app": service, "version": "v2"},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
        }
        | extra
    )


REVIEWS = _workload("reviews-v2", "reviews", 3)
RATINGS = _workload("ratings-v1", "ratings", 4)
GATEWAY = _workload(
    "ingressgateway",
    "istio-ingressgateway",
    9,
    labels={"istio": "ingressgateway", "app": "istio-ingressgateway"},
    namespace="istio-system",
    kind="gateway",
)


def _snapshot(*workloads: Workload) -> MeshSnapshot:
    gateways = tuple(r for r in parse_documents(GATEWAY_YAML) if r.kind == "Gateway")
    return MeshSnapshot("t", workloads=workloads or (REVIEWS, RATINGS, GATEWAY), gateways=gateways)


@pytest.fixture
def telemetry(monkeypatch):
    """Make every proxy's resolved telemetry the one given (the resolver is tested with the mesh)."""

    def use(value: Tracing | None) -> None:
        monkeypatch.setattr(tracing, "telemetry_for", lambda snapshot, workload: Telemetry(tracing=value))

    return use


def _managers(listener: listener_pb2.Listener) -> list[hcm.HttpConnectionManager]:
    out = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                manager = hcm.HttpConnectionManager()
                f.typed_config.Unpack(manager)
                out.append(manager)
    return out


def _listeners(proxy: Workload, snapshot: MeshSnapshot | None = None) -> dict[str, listener_pb2.Listener]:
    return dict(translate(snapshot or _snapshot(), proxy).by_type[LISTENER])


def _configured(direction: str, proxy: Workload = REVIEWS) -> hcm.HttpConnectionManager.Tracing:
    manager = hcm.HttpConnectionManager()
    tracing.configure(manager, _snapshot(), proxy, direction)
    return manager.tracing


def _otel(t: hcm.HttpConnectionManager.Tracing) -> opentelemetry_pb2.OpenTelemetryConfig:
    assert t.provider.name == "envoy.tracers.opentelemetry"
    config = opentelemetry_pb2.OpenTelemetryConfig()
    t.provider.typed_config.Unpack(config)
    return config


def _sampled_percent(t: hcm.HttpConnectionManager.Tracing) -> float:
    """The percentage of new traces the OpenTelemetry sampler keeps; it follows a caller's flag."""
    assert t.random_sampling.value == 100.0  # the connection manager hands every request to the sampler
    sampler = _otel(t).sampler
    assert sampler.name == "envoy.tracers.opentelemetry.samplers.parent_based"
    parent = parent_based_sampler_pb2.ParentBasedSamplerConfig()
    sampler.typed_config.Unpack(parent)
    assert parent.wrapped_sampler.name == "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based"
    ratio = trace_id_ratio_based_sampler_pb2.TraceIdRatioBasedSamplerConfig()
    parent.wrapped_sampler.typed_config.Unpack(ratio)
    assert ratio.sampling_percentage.denominator == ratio.sampling_percentage.MILLION
    return ratio.sampling_percentage.numerator / 10_000


def test_embedded_collector_by_default_on_every_sidecar_connection_manager():
    listeners = _listeners(REVIEWS)
    outbound, inbound = listeners[names.OUTBOUND_LISTENER], listeners[names.inbound_listener(9080)]
    managers = _managers(outbound) + _managers(inbound)
    assert len(managers) == 3 and all(
        m.HasField("tracing") for m in managers
    )  # outbound; inbound mTLS and plaintext (PERMISSIVE)
    for m in managers:
        config = _otel(m.tracing)
        assert config.service_name == "reviews.default"  # Istio's <canonical service>.<namespace>
        assert config.grpc_service.envoy_grpc.cluster_name == names.TELEMETRY_CLUSTER
        assert _sampled_percent(m.tracing) == 1.0  # Istio's default
        assert not m.tracing.spawn_upstream_span.value  # the sidecar's span is the hop's span
    # Outbound spans are the CLIENT side of a hop: Envoy takes that from the listener's direction.
    assert outbound.traffic_direction == base_pb2.OUTBOUND


def test_embedded_collector_needs_no_cluster_of_its_own():
    assert tracing.clusters(_snapshot(), REVIEWS) == []
    assert not [n for n in dict(translate(_snapshot(), REVIEWS).by_type[CLUSTER]) if n.startswith("tracing|")]


def test_istio_tags_name_the_workload():
    tags = {t.tag: t.literal.value for t in _configured(tracing.INBOUND).custom_tags}
    assert tags == {
        "istio.canonical_revision": "v2",
        "istio.canonical_service": "reviews",
        "istio.namespace": "default",
    }


def test_spans_are_named_by_host_and_port_never_path():
    assert _configured(tracing.INBOUND).operation == "reviews.default.svc.cluster.local:9080/*"  # Istio's
    assert _configured(tracing.OUTBOUND).operation == "%REQ(:AUTHORITY)%/*"
    assert _configured(tracing.GATEWAY, GATEWAY).operation == "%REQ(:AUTHORITY)%/*"


def test_canonical_service_labels_win_over_app():
    proxy = _workload(
        "reviews-v2",
        "reviews",
        3,
        labels={
            "app": "reviews",
            "service.istio.io/canonical-name": "reviews-api",
            "service.istio.io/canonical-revision": "2024",
        },
    )
    assert tracing.service_name(proxy) == "reviews-api.default"
    assert tracing.canonical_revision(proxy) == "2024"
    bare = _workload("worker", "", 5, labels={})
    assert tracing.service_name(bare) == "worker.default" and tracing.canonical_revision(bare) == "latest"


def test_gateway_spawns_a_span_per_upstream_request():
    (listener,) = _listeners(GATEWAY).values()
    (manager,) = _managers(listener)
    assert manager.tracing.spawn_upstream_span.value
    assert _otel(manager.tracing).service_name == "istio-ingressgateway.istio-system"


def test_sampling_and_custom_tags_come_from_telemetry(telemetry):
    telemetry(
        Tracing(
            sampling=100.0,
            max_tag_length=99,
            custom_tags=(
                ("team", "literal", "books"),
                ("user", "header", "x-user"),
                ("pod", "environment", "HOSTNAME"),
                ("istio.namespace", "literal", "override"),
            ),
        )
    )
    t = _configured(tracing.OUTBOUND)
    assert _sampled_percent(t) == 100.0 and t.max_path_tag_length.value == 99
    tags = {tag.tag: tag for tag in t.custom_tags}
    assert [tag.tag for tag in t.custom_tags] == sorted(tags)  # byte-identical output
    assert tags["team"].literal.value == "books"
    assert tags["user"].request_header.name == "x-user"
    assert tags["pod"].environment.name == "HOSTNAME"
    assert tags["istio.namespace"].literal.value == "override"


def test_header_and_environment_tags_take_their_defaults(telemetry):
    telemetry(
        Tracing(
            custom_tags=(("user", "header", "x-user"), ("pod", "environment", "HOSTNAME")),
            custom_tag_defaults=(("user", "anonymous"),),
        )
    )
    tags = {tag.tag: tag for tag in _configured(tracing.INBOUND).custom_tags}
    assert tags["user"].request_header.default_value == "anonymous" and tags["pod"].environment.default_value == ""


@pytest.mark.parametrize(
    ("mode", "inbound", "outbound"),
    [("CLIENT_AND_SERVER", True, True), ("SERVER", True, False), ("CLIENT", False, True)],
)
def test_span_reporting_per_side(mode, inbound, outbound, telemetry):
    """disableSpanReporting for one side leaves that side's managers untraced; a gateway reports."""
    telemetry(Tracing(mode=mode))
    assert (_configured(tracing.INBOUND).HasField("provider"), _configured(tracing.OUTBOUND).HasField("provider")) == (
        inbound,
        outbound,
    )
    assert _configured(tracing.GATEWAY, GATEWAY).HasField("provider")


def test_out_of_range_sampling_is_clamped(telemetry):
    telemetry(Tracing(sampling=250.0))
    assert _sampled_percent(_configured(tracing.INBOUND)) == 100.0
    telemetry(Tracing(sampling=0.0001))
    assert _sampled_percent(_configured(tracing.INBOUND)) == 0.0001


def test_no_tracing_leaves_the_manager_untraced(telemetry):
    telemetry(None)
    for listener in _listeners(REVIEWS).values():
        assert all(not m.HasField("tracing") for m in _managers(listener))
    assert tracing.clusters(_snapshot(), REVIEWS) == []
    manager = hcm.HttpConnectionManager()
    manager.tracing.random_sampling.value = 5
    tracing.configure(manager, _snapshot(), REVIEWS, tracing.OUTBOUND)
    assert not manager.HasField("tracing")  # cleared, not kept


def test_external_opentelemetry_collector_over_http2(telemetry):
    telemetry(OTEL)
    t = _configured(tracing.INBOUND)
    config = _otel(t)
    cluster_name = "tracing|4317||tempo.observability.svc.cluster.local"
    assert config.grpc_service.envoy_grpc.cluster_name == cluster_name
    assert config.grpc_service.envoy_grpc.authority == "tempo.observability.svc.cluster.local"
    assert _sampled_percent(t) == 25.0
    (cluster,) = tracing.clusters(_snapshot(), REVIEWS)
    assert cluster.name == cluster_name and cluster.type == cluster_pb2.Cluster.STRICT_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("tempo.observability.svc.cluster.local", 4317)
    options = hpo.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert cluster_name in dict(translate(_snapshot(), REVIEWS).by_type[CLUSTER])  # sidecars get it
    assert cluster_name in dict(translate(_snapshot(), GATEWAY).by_type[CLUSTER])  # and gateways


def test_zipkin_collector_with_b3(telemetry):
    telemetry(ZIPKIN)
    t = _configured(tracing.OUTBOUND)
    assert t.provider.name == "envoy.tracers.zipkin"
    assert t.random_sampling.value == 30.0  # Zipkin: the connection manager samples (B3's flag is followed)
    config = zipkin_pb2.ZipkinConfig()
    t.provider.typed_config.Unpack(config)
    assert config.collector_cluster == "tracing|9411||zipkin.example.com"
    assert (
        config.collector_endpoint == "/api/v2/spans"
        and config.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_JSON
    )
    assert (
        config.collector_hostname == "zipkin.example.com"
        and config.trace_id_128bit
        and not config.shared_span_context.value
    )
    (cluster,) = tracing.clusters(_snapshot(), REVIEWS)
    assert not cluster.typed_extension_protocol_options  # Zipkin JSON: HTTP/1.1


def test_zipkin_path_and_an_ip_collector(telemetry):
    telemetry(Tracing(provider="zipkin", kind="zipkin", service="10.0.0.7", port=9411, path="/zipkin/api/v2/spans"))
    config = zipkin_pb2.ZipkinConfig()
    _configured(tracing.INBOUND).provider.typed_config.Unpack(config)
    assert config.collector_endpoint == "/zipkin/api/v2/spans"
    (cluster,) = tracing.clusters(_snapshot(), REVIEWS)
    assert cluster.type == cluster_pb2.Cluster.STATIC


def test_contract_violations_are_loud(telemetry):
    with pytest.raises(ValueError, match="direction"):
        _configured("sideways")
    telemetry(Tracing(kind="skywalking"))
    with pytest.raises(ValueError, match="skywalking"):
        _configured(tracing.INBOUND)
    telemetry(Tracing(kind="zipkin"))
    with pytest.raises(ValueError, match="embedded collector"):
        _configured(tracing.INBOUND)
    telemetry(Tracing(custom_tags=(("x", "cookie", "y"),)))
    with pytest.raises(ValueError, match="cookie"):
        _configured(tracing.INBOUND)


def test_output_is_byte_identical(telemetry):
    telemetry(OTEL)
    a = [m.SerializeToString(deterministic=True) for _, m in translate(_snapshot(), REVIEWS).by_type[LISTENER]]
    b = [m.SerializeToString(deterministic=True) for _, m in translate(_snapshot(), REVIEWS).by_type[LISTENER]]
    assert a == b


def _bootstrap(value: Tracing | None, direction: str) -> dict:
    """A static listener with the generated tracing, and the clusters it names."""
    manager = hcm.HttpConnectionManager(stat_prefix="t", route_config={"name": "r"})
    manager.http_filters.add(name="router").typed_config.Pack(router_pb2.Router())
    snapshot = _snapshot()
    tracing.configure(manager, snapshot, REVIEWS, direction)
    clusters = [json_format.MessageToDict(c) for c in tracing.clusters(snapshot, REVIEWS)]
    telemetry_cluster = {
        "name": names.TELEMETRY_CLUSTER,
        "type": "STATIC",
        "loadAssignment": {
            "clusterName": names.TELEMETRY_CLUSTER,
            "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/telemetry.sock"}}}}]}],
        },
    }
    listener = {
        "name": "l",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 1}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{"name": "hcm", "typedConfig": json_format.MessageToDict(pack(manager))}]}],
    }
    return {"staticResources": {"clusters": [telemetry_cluster, *clusters], "listeners": [listener]}}


@pytest.mark.parametrize(
    ("value", "direction"),
    [(Tracing(), tracing.OUTBOUND), (Tracing(), tracing.GATEWAY), (OTEL, tracing.INBOUND), (ZIPKIN, tracing.OUTBOUND)],
    ids=["embedded", "embedded-gateway", "opentelemetry", "zipkin"],
)
def test_envoy_accepts_the_tracing_config(value, direction, telemetry, tmp_path):
    telemetry(value)
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(_bootstrap(value, direction)))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "-l", "error"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
