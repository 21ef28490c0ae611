"""Tracing: the span each connection manager records, and where the spans go.

Every HTTP connection manager of a proxy (sidecar inbound and outbound, gateway) records one span
per sampled request, with the tracer the workload's `Telemetry.tracing` names:
- the embedded collector (provider EMBEDDED): Envoy's OpenTelemetry tracer exports OTLP/gRPC over
  the bootstrap's `lattice-telemetry` cluster to the sidecar's agent, which forwards the spans to
  the control plane (agent/traces.py, server/traces.py; `lattice trace` shows them);
- an external OpenTelemetry collector (Jaeger, Tempo, the OpenTelemetry Collector): the same
  tracer, exporting OTLP/gRPC over HTTP/2 to `service:port` through a cluster `clusters` adds;
- a Zipkin collector: Envoy's Zipkin tracer, Zipkin v2 JSON over HTTP to `service:port` + `path`.

Propagation comes with the tracer: W3C trace context (`traceparent`, `tracestate`) with
OpenTelemetry, B3 (`x-b3-*`) with Zipkin; Envoy 1.40's OpenTelemetry tracer has no B3 propagator.
Either way the app must copy the trace headers from the request it serves to the requests it
makes, or every hop starts a trace of its own.

Which requests are traced: the first proxy of a request decides, every later hop follows the
trace context it receives. With OpenTelemetry that context is the W3C `traceparent` and its sampled
flag: the connection manager passes every request to the tracer (`random_sampling` 100%) and the
tracer's sampler decides, parent-based (a request with a traceparent is traced if its sampled
flag says so; Envoy 1.40's connection manager would otherwise overrule the flag with its own
x-request-id-based decision) over trace-id-ratio-based at the Telemetry's percentage for requests
that start a trace. So a client can ask for a trace with `traceparent: 00-<trace>-<span>-01`, and
hops agree even when an app forwards only `traceparent`. The Zipkin tracer follows an incoming
`x-b3-sampled` itself; the connection manager samples at the Telemetry's percentage. (A Zipkin
proxy called by an OpenTelemetry one without B3 headers follows the x-request-id, which says traced.)

How the hops link, as Istio builds them: a sidecar's connection manager span *is* the hop's span
(no extra span per upstream request), and the context it sends on names it as the parent. So the
caller's outbound span (CLIENT, the listener's direction is OUTBOUND) is the parent of the
callee's inbound span (SERVER). A gateway is a hop of its own: its span is the SERVER span of the
request it accepted, and a CLIENT span per upstream request (`spawn_upstream_span`) is the parent
of the destination's inbound span.

Every span carries Istio's service name `<canonical service>.<namespace>` (the OpenTelemetry
resource's `service.name`; Zipkin takes the node's cluster, `<service>.<namespace>`) and Istio's
`istio.canonical_service`, `istio.canonical_revision` and `istio.namespace` tags, then the
Telemetry's custom tags. Its name is Istio's `<host>:<port>/*`, never the path.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2, grpc_service_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.tracers.opentelemetry.samplers.v3 import (
    parent_based_sampler_pb2,
    trace_id_ratio_based_sampler_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from lattice.mesh import MeshSnapshot, Workload, fqdn
from lattice.mesh.telemetry import EMBEDDED, Tracing, telemetry_for
from lattice.translate.names import TELEMETRY_CLUSTER
from lattice.translate.protos import external_cluster, pack

INBOUND, OUTBOUND, GATEWAY = "inbound", "outbound", "gateway"
_REPORTERS = {INBOUND: "destination", OUTBOUND: "source", GATEWAY: None}  # Istio's reporter of each side
OPENTELEMETRY = "envoy.tracers.opentelemetry"
ZIPKIN = "envoy.tracers.zipkin"
PARENT_SAMPLER = "envoy.tracers.opentelemetry.samplers.parent_based"
RATIO_SAMPLER = "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based"
ZIPKIN_PATH = "/api/v2/spans"  # Zipkin's v2 API, where a provider names no path
CONNECT_TIMEOUT = 10.0
# Istio's labels for a workload's canonical service and revision, most specific first.
_SERVICE_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def configure(manager: hcm.HttpConnectionManager, snapshot: MeshSnapshot, proxy: Workload, direction: str) -> None:
    """Set `manager.tracing` for `direction` (INBOUND, OUTBOUND or GATEWAY), or clear it when the
    workload's Telemetry turns tracing off, or turns off span reporting on this side
    (`disableSpanReporting`: the trace headers then pass this hop untouched). A gateway's one
    connection manager is both sides: it reports unless tracing is off altogether."""
    if direction not in _REPORTERS:
        raise ValueError(f"unknown traffic direction {direction!r}: use {INBOUND!r}, {OUTBOUND!r} or {GATEWAY!r}")
    manager.ClearField("tracing")
    settings = telemetry_for(snapshot, proxy).tracing
    reporter = _REPORTERS[direction]
    if settings is not None and (reporter is None or settings.applies(reporter)):
        manager.tracing.CopyFrom(_tracing(settings, proxy, direction))
        manager.tracing.operation = _operation(snapshot, proxy, direction)


def clusters(snapshot: MeshSnapshot, proxy: Workload) -> list[cluster_pb2.Cluster]:
    """The cluster to an external collector, if the workload's spans go to one (else none)."""
    settings = telemetry_for(snapshot, proxy).tracing
    if settings is None or settings.provider == EMBEDDED:
        return []
    return [_collector(settings)]


def service_name(proxy: Workload) -> str:
    """Istio's name for the workload in traces: `<canonical service>.<namespace>`."""
    return f"{canonical_service(proxy)}.{proxy.namespace}"


def canonical_service(proxy: Workload) -> str:
    return next((proxy.labels[k] for k in _SERVICE_LABELS if proxy.labels.get(k)), proxy.service or proxy.name)


def canonical_revision(proxy: Workload) -> str:
    return next((proxy.labels[k] for k in _REVISION_LABELS if proxy.labels.get(k)), "latest")


def collector_cluster(settings: Tracing) -> str:
    """The name of an external collector's cluster: never a mesh service's outbound cluster, whose
    protocol (HTTP/1.1, mTLS) may not be what the collector speaks."""
    return f"tracing|{settings.port}||{settings.service.lower()}"


# --- the connection manager's tracing ---------------------------------------------------------


def _tracing(settings: Tracing, proxy: Workload, direction: str) -> hcm.HttpConnectionManager.Tracing:
    # OpenTelemetry: the tracer's sampler decides (see the module docstring), so every request reaches it.
    sampling = 100.0 if settings.kind == "opentelemetry" else _percent(settings)
    return hcm.HttpConnectionManager.Tracing(
        provider=_provider(settings, proxy),
        random_sampling=percent_pb2.Percent(value=sampling),
        max_path_tag_length=UInt32Value(value=settings.max_tag_length),
        custom_tags=_custom_tags(settings, proxy),
        # Only a gateway is a hop of its own (see the module docstring).
        spawn_upstream_span=BoolValue(value=direction == GATEWAY),
    )


def _operation(snapshot: MeshSnapshot, proxy: Workload, direction: str) -> str:
    """The span's name, Istio's `<host>:<port>/*`: the workload's service inbound, the host the
    client named outbound and at a gateway. Never the path: one name per operation, not per request."""
    if direction == INBOUND:
        return f"{fqdn(proxy.service or proxy.name, proxy.namespace, snapshot.domain)}:{proxy.port}/*"
    return "%REQ(:AUTHORITY)%/*"


def _provider(settings: Tracing, proxy: Workload) -> http_tracer_pb2.Tracing.Http:
    if settings.kind == "zipkin":
        if settings.provider == EMBEDDED:
            raise ValueError(
                "the embedded collector takes OpenTelemetry spans only; Zipkin needs an external collector"
            )
        config = zipkin_pb2.ZipkinConfig(
            collector_cluster=collector_cluster(settings),
            collector_endpoint=settings.path or ZIPKIN_PATH,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=settings.service.lower(),
            trace_id_128bit=True,
            shared_span_context=BoolValue(value=False),  # a span per hop, as Istio configures it
        )
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN, typed_config=pack(config))
    if settings.kind != "opentelemetry":
        raise ValueError(f"unknown tracing provider kind {settings.kind!r}: use 'opentelemetry' or 'zipkin'")
    config = opentelemetry_pb2.OpenTelemetryConfig(
        service_name=service_name(proxy), grpc_service=_otlp_service(settings), sampler=_sampler(settings)
    )
    return http_tracer_pb2.Tracing.Http(name=OPENTELEMETRY, typed_config=pack(config))


def _sampler(settings: Tracing) -> extension_pb2.TypedExtensionConfig:
    """Follow the caller's sampled flag; a new trace is sampled at the Telemetry's percentage,
    by its trace id (so every proxy that sees the id alone decides alike)."""
    ratio = trace_id_ratio_based_sampler_pb2.TraceIdRatioBasedSamplerConfig(
        sampling_percentage=percent_pb2.FractionalPercent(
            numerator=round(_percent(settings) * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
        )
    )
    root = extension_pb2.TypedExtensionConfig(name=RATIO_SAMPLER, typed_config=pack(ratio))
    parent = parent_based_sampler_pb2.ParentBasedSamplerConfig(wrapped_sampler=root)
    return extension_pb2.TypedExtensionConfig(name=PARENT_SAMPLER, typed_config=pack(parent))


def _percent(settings: Tracing) -> float:
    return min(max(settings.sampling, 0.0), 100.0)


def _otlp_service(settings: Tracing) -> grpc_service_pb2.GrpcService:
    if settings.provider == EMBEDDED:
        return grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TELEMETRY_CLUSTER)
        )
    # The collector sees its own host name as the authority, not the cluster's name (as Istio sets it).
    grpc = grpc_service_pb2.GrpcService.EnvoyGrpc(
        cluster_name=collector_cluster(settings), authority=settings.service.lower()
    )
    return grpc_service_pb2.GrpcService(envoy_grpc=grpc)


def _custom_tags(settings: Tracing, proxy: Workload) -> list[custom_tag_pb2.CustomTag]:
    """Istio's tags of the workload, then the Telemetry's (one of the same name replaces it)."""
    tags = {
        "istio.canonical_revision": custom_tag_pb2.CustomTag(
            tag="istio.canonical_revision", literal=custom_tag_pb2.CustomTag.Literal(value=canonical_revision(proxy))
        ),
        "istio.canonical_service": custom_tag_pb2.CustomTag(
            tag="istio.canonical_service", literal=custom_tag_pb2.CustomTag.Literal(value=canonical_service(proxy))
        ),
        "istio.namespace": custom_tag_pb2.CustomTag(
            tag="istio.namespace", literal=custom_tag_pb2.CustomTag.Literal(value=proxy.namespace)
        ),
    }
    defaults = dict(settings.custom_tag_defaults)
    for name, kind, value in settings.custom_tags:
        tags[name] = _custom_tag(name, kind, value, defaults.get(name, ""))
    return [tags[name] for name in sorted(tags)]


def _custom_tag(name: str, kind: str, value: str, default: str) -> custom_tag_pb2.CustomTag:
    """A literal, or a request header's or Envoy's environment variable's value (`default` when unset)."""
    if kind == "literal":
        return custom_tag_pb2.CustomTag(tag=name, literal=custom_tag_pb2.CustomTag.Literal(value=value))
    if kind == "header":
        return custom_tag_pb2.CustomTag(
            tag=name, request_header=custom_tag_pb2.CustomTag.Header(name=value, default_value=default)
        )
    if kind == "environment":
        return custom_tag_pb2.CustomTag(
            tag=name, environment=custom_tag_pb2.CustomTag.Environment(name=value, default_value=default)
        )
    raise ValueError(f"custom tag {name!r}: unknown kind {kind!r}: use 'literal', 'header' or 'environment'")


# --- an external collector ---------------------------------------------------------------------


def _collector(settings: Tracing) -> cluster_pb2.Cluster:
    # OTLP/gRPC needs HTTP/2; Zipkin's JSON goes over HTTP/1.1
    return external_cluster(
        collector_cluster(settings),
        settings.service,
        settings.port,
        http2=settings.kind == "opentelemetry",
        connect_timeout=CONNECT_TIMEOUT,
    )
