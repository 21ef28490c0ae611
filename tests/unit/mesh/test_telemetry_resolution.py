"""telemetry_for: Istio's scopes (mesh, namespace, workload by selector or targetRef), oldest at a
scope, per-section precedence, MeshConfig defaults and providers; tag override expressions."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from lattice.api import parse_documents
from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh import telemetry as t
from lattice.api import telemetry_expr
from lattice.mesh.analyze import analyze
from lattice.mesh.model import MeshSnapshot, SharedPieces, Workload
from lattice.mesh.telemetry import (
    AccessLog,
    MeshTelemetry,
    MetricRule,
    TagOverride,
    Tracing,
    mesh_telemetry,
    telemetry_for,
)


def workload(name: str, namespace: str = "default", service: str = "", **labels: str) -> Workload:
    service = service or name.rsplit("-", 1)[0]
    labels = {"app": service, **labels}
    return Workload(
        f"{name}-1.{namespace}",
        name,
        namespace,
        service,
        service,
        MappingProxyType(labels),
        "127.0.0.1",
        9080,
        9080,
        "http",
        15001,
        15020,
    )


REVIEWS = workload("reviews-v1", version="v1")
RATINGS = workload("ratings-v1", version="v1")
OTHER = workload("shop-v1", namespace="shop")
ROOT = workload("gateway-v1", namespace="istio-system")


def telemetries(text: str) -> tuple:
    return tuple(parse_documents(text))


def resource(name: str, namespace: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: "
        f"{{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"
    )


def snapshot(text: str = "", mesh: str = "", workloads=(REVIEWS, RATINGS, OTHER, ROOT)) -> MeshSnapshot:
    config = mesh_telemetry(parse_mesh_config(mesh, "mesh.yaml"))
    return MeshSnapshot("t", tuple(workloads), telemetries=telemetries(text) if text else (), mesh_telemetry=config)


MESH_CONFIG = """
accessLogFile: /var/log/mesh.log
accessLogEncoding: TEXT
accessLogFormat: "%REQ(:METHOD)% %RESPONSE_CODE%\\n"
defaultConfig: {tracing: {sampling: 25}}
extensionProviders:
- name: zipkin
  zipkin: {service: istio-system/zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 64}
- name: otel
  opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317}
- name: audit
  envoyFileAccessLog: {path: /var/log/audit.log, logFormat: {labels: {who: "%DOWNSTREAM_PEER_URI_SAN%"}}}
- name: plain
  envoyFileAccessLog: {path: /var/log/plain.log, logFormat: {text: "%RESPONSE_CODE%\\n"}}
"""


def sampling(snap: MeshSnapshot, w: Workload) -> float | None:
    tracing = telemetry_for(snap, w).tracing
    return None if tracing is None else tracing.sampling


# --- defaults ----------------------------------------------------------------------------------


def test_no_resources_no_mesh_config_is_istios_default():
    result = telemetry_for(snapshot(), REVIEWS)
    assert result == t.Telemetry(metrics=(), access_logs=(), tracing=Tracing())
    assert all(result.metric_enabled(m, r) for m in t.METRICS for r in ("source", "destination"))


def test_mesh_config_defaults_apply_without_resources():
    result = telemetry_for(snapshot(mesh=MESH_CONFIG), REVIEWS)
    assert result.access_logs == (
        AccessLog("/var/log/mesh.log", "TEXT", "%REQ(:METHOD)% %RESPONSE_CODE%\n", provider="envoy"),
    )
    assert result.tracing == Tracing(sampling=25)


def test_default_providers():
    mesh = MESH_CONFIG + "defaultProviders: {tracing: [zipkin], accessLogging: [audit]}\n"
    result = telemetry_for(snapshot(mesh=mesh), REVIEWS)
    assert result.tracing == Tracing(
        provider="zipkin",
        kind="zipkin",
        service="zipkin.istio-system.svc.cluster.local",
        port=9411,
        path="/api/v2/spans",
        sampling=25,
        max_tag_length=64,
    )
    assert [(log.provider, log.path, log.encoding, log.format) for log in result.access_logs] == [
        ("envoy", "/var/log/mesh.log", "TEXT", "%REQ(:METHOD)% %RESPONSE_CODE%\n"),
        ("audit", "/var/log/audit.log", "JSON", '{"who": "%DOWNSTREAM_PEER_URI_SAN%"}'),
    ]


def test_enable_tracing_false_turns_tracing_off_everywhere():
    text = resource("mesh", "istio-system", "tracing: [{randomSamplingPercentage: 50}]")
    assert telemetry_for(snapshot(text, mesh="enableTracing: false\n"), REVIEWS).tracing is None


def test_metrics_off_by_default_providers_and_back_on_by_a_telemetry():
    off = snapshot(mesh="defaultProviders: {metrics: []}\n")
    assert not any(telemetry_for(off, REVIEWS).metric_enabled(m, "destination") for m in t.METRICS)
    text = resource(
        "reviews", "default", "selector: {matchLabels: {app: reviews}}\nmetrics: [{providers: [{name: prometheus}]}]"
    )
    back = snapshot(text, mesh="defaultProviders: {metrics: []}\n")
    assert telemetry_for(back, REVIEWS).metric_enabled(t.REQUEST_COUNT, "destination")
    assert not telemetry_for(back, RATINGS).metric_enabled(t.REQUEST_COUNT, "destination")


# --- scopes ------------------------------------------------------------------------------------

SCOPED = (
    resource("mesh", "istio-system", "tracing: [{randomSamplingPercentage: 10}]")
    + resource("default", "default", "tracing: [{randomSamplingPercentage: 20}]")
    + resource(
        "reviews", "default", "selector: {matchLabels: {app: reviews}}\ntracing: [{randomSamplingPercentage: 30}]"
    )
)


def test_workload_over_namespace_over_mesh():
    snap = snapshot(SCOPED)
    assert (sampling(snap, REVIEWS), sampling(snap, RATINGS), sampling(snap, OTHER), sampling(snap, ROOT)) == (
        30,
        20,
        10,
        10,
    )


def test_oldest_at_one_scope_wins():
    newer = resource("default-newer", "default", "tracing: [{randomSamplingPercentage: 90}]")
    newer += resource(
        "reviews-newer", "default", "selector: {matchLabels: {version: v1}}\ntracing: [{randomSamplingPercentage: 95}]"
    )
    snap = snapshot(SCOPED + newer)
    assert (sampling(snap, REVIEWS), sampling(snap, RATINGS)) == (30, 95)  # ratings: only the newer selects it


def test_target_ref_selects_the_service_workloads():
    text = SCOPED + resource(
        "ratings",
        "default",
        "targetRefs: [{kind: Service, group: '', name: ratings}]\ntracing: [{randomSamplingPercentage: 40}]",
    )
    snap = snapshot(text, workloads=(REVIEWS, RATINGS, workload("ratings-v2", version="v2")))
    assert [sampling(snap, w) for w in snap.workloads] == [30, 40, 40]


def test_selector_in_root_namespace_selects_only_root_workloads():
    text = resource(
        "root-selector",
        "istio-system",
        "selector: {matchLabels: {app: reviews}}\ntracing: [{randomSamplingPercentage: 70}]",
    )
    root_reviews = workload("reviews-v9", namespace="istio-system")
    snap = snapshot(text, workloads=(REVIEWS, root_reviews))
    assert (sampling(snap, REVIEWS), sampling(snap, root_reviews)) == (1.0, 70)


def test_root_namespace_workload_does_not_count_the_mesh_resource_twice():
    text = resource("mesh", "istio-system", "metrics: [{overrides: [{tagOverrides: {team: {value: \"'core'\"}}}]}]")
    assert len(telemetry_for(snapshot(text), ROOT).metrics) == 1


def test_workloads_with_the_same_scopes_share_one_result():
    snap = SharedPieces(snapshot(SCOPED, workloads=(RATINGS, workload("details-v1"))))  # as the pusher translates
    assert telemetry_for(snap, snap.workloads[0]) is telemetry_for(snap, snap.workloads[1])


# --- tracing -----------------------------------------------------------------------------------


def test_tracing_fields_inherit_from_less_specific_scopes():
    text = resource(
        "mesh",
        "istio-system",
        "tracing: [{providers: [{name: otel}], randomSamplingPercentage: 5, customTags: {env: {literal: {value: "
        "prod}}}}]",
    ) + resource(
        "reviews",
        "default",
        "selector: {matchLabels: {app: reviews}}\ntracing: [{customTags: {user: {header: {name: x-user, "
        "defaultValue: anon}}}}]",
    )
    tracing = telemetry_for(snapshot(text, MESH_CONFIG), REVIEWS).tracing
    assert (tracing.provider, tracing.kind, tracing.service, tracing.port, tracing.sampling) == (
        "otel",
        "opentelemetry",
        "collector.observability.svc.cluster.local",
        4317,
        5,
    )
    assert tracing.custom_tags == (("env", "literal", "prod"), ("user", "header", "x-user"))
    assert tracing.custom_tag_defaults == (("user", "anon"),)


def test_sampling_falls_back_to_mesh_config_then_istio_default():
    text = resource(
        "reviews", "default", "selector: {matchLabels: {app: reviews}}\ntracing: [{providers: [{name: lattice}]}]"
    )
    assert sampling(snapshot(text, MESH_CONFIG), REVIEWS) == 25
    assert sampling(snapshot(text), REVIEWS) == t.DEFAULT_SAMPLING


def test_disable_span_reporting_whole_or_one_side():
    whole = resource("mesh", "istio-system", "tracing: [{disableSpanReporting: true}]")
    assert telemetry_for(snapshot(whole), REVIEWS).tracing is None
    one_side = whole + resource(
        "reviews",
        "default",
        "selector: {matchLabels: {app: reviews}}\ntracing: [{match: {mode: SERVER}, disableSpanReporting: false}]",
    )
    tracing = telemetry_for(snapshot(one_side), REVIEWS).tracing
    assert tracing.mode == "SERVER" and tracing.applies("destination") and not tracing.applies("source")
    assert telemetry_for(snapshot(one_side), RATINGS).tracing is None


def test_unknown_tracing_provider_turns_tracing_off():
    text = resource("mesh", "istio-system", "tracing: [{providers: [{name: jaeger}]}]")
    assert telemetry_for(snapshot(text, MESH_CONFIG), REVIEWS).tracing is None


# --- access logs -------------------------------------------------------------------------------


def logs(snap: MeshSnapshot, w: Workload) -> list[tuple[str, str, str]]:
    return [(log.provider, log.mode, log.filter) for log in telemetry_for(snap, w).access_logs]


def test_access_log_disabled_for_one_workload():
    text = resource(
        "sleep",
        "default",
        "selector: {matchLabels: {app: reviews}}\naccessLogging: [{providers: [{name: envoy}], disabled: true}]",
    )
    snap = snapshot(text, MESH_CONFIG)
    assert logs(snap, REVIEWS) == []
    assert logs(snap, RATINGS) == [("envoy", "CLIENT_AND_SERVER", "")]


def test_access_log_disabled_on_one_side_keeps_the_other():
    text = resource(
        "reviews",
        "default",
        "selector: {matchLabels: {app: reviews}}\naccessLogging: [{match: {mode: SERVER}, disabled: true}]",
    )
    assert logs(snapshot(text, MESH_CONFIG), REVIEWS) == [("envoy", "CLIENT", "")]


def test_access_log_filter_and_provider_inheritance():
    text = resource("mesh", "istio-system", "accessLogging: [{providers: [{name: audit}]}]") + resource(
        "default", "default", "accessLogging: [{filter: {expression: 'response.code >= 400'}}]"
    )
    snap = snapshot(text, MESH_CONFIG)
    assert logs(snap, REVIEWS) == [("audit", "CLIENT_AND_SERVER", "response.code >= 400")]
    assert logs(snap, OTHER) == [("audit", "CLIENT_AND_SERVER", "")]


def test_access_log_per_side_filters_and_text_provider():
    text = resource(
        "default",
        "default",
        """
accessLogging:
- {providers: [{name: plain}], match: {mode: CLIENT}}
- {providers: [{name: plain}], match: {mode: SERVER}, filter: {expression: 'response.code >= 500'}}
""",
    )
    result = telemetry_for(snapshot(text, MESH_CONFIG), REVIEWS).access_logs
    assert [(log.mode, log.filter, log.encoding, log.format) for log in result] == [
        ("CLIENT", "", "TEXT", "%RESPONSE_CODE%\n"),
        ("SERVER", "response.code >= 500", "TEXT", "%RESPONSE_CODE%\n"),
    ]
    assert result[0].applies("source") and not result[0].applies("destination")


def test_envoy_provider_without_access_log_file_writes_stdout_and_unknown_is_skipped():
    text = resource("mesh", "istio-system", "accessLogging: [{providers: [{name: envoy}, {name: nowhere}]}]")
    assert telemetry_for(snapshot(text), REVIEWS).access_logs == (AccessLog("/dev/stdout", provider="envoy"),)


# --- metrics -----------------------------------------------------------------------------------

METRICS = (
    resource(
        "mesh",
        "istio-system",
        """
metrics:
- overrides:
  - {match: {metric: REQUEST_COUNT}, disabled: true}
  - {match: {metric: ALL_METRICS}, tagOverrides: {team: {value: "'platform'"}}}
""",
    )
    + resource(
        "default",
        "default",
        """
metrics:
- providers: [{name: prometheus}]
  overrides:
  - {match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {team: {value: "'reviews'"}, grpc_response_status:
  {operation: REMOVE}}}
""",
    )
    + resource(
        "reviews",
        "default",
        """
selector: {matchLabels: {app: reviews}}
metrics:
- overrides:
  - {match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: false}
  - {match: {metric: TCP_SENT_BYTES, mode: CLIENT}, disabled: true}
""",
    )
)


def test_metric_overrides_accumulate_mesh_then_namespace_then_workload():
    result = telemetry_for(snapshot(METRICS), REVIEWS)
    assert result.metrics == (
        MetricRule(t.REQUEST_COUNT, disabled=True),
        MetricRule(None, disabled=None, tags=(TagOverride("team", value="'platform'"),)),
        MetricRule(
            t.REQUEST_COUNT,
            "SERVER",
            None,
            (TagOverride("grpc_response_status", remove=True), TagOverride("team", value="'reviews'")),
        ),
        MetricRule(t.REQUEST_COUNT, "SERVER", False),
        MetricRule(t.TCP_SENT, "CLIENT", True),
    )
    assert result.metric_enabled(t.REQUEST_COUNT, "destination") and not result.metric_enabled(
        t.REQUEST_COUNT, "source"
    )
    assert not result.metric_enabled(t.TCP_SENT, "source") and result.metric_enabled(t.TCP_SENT, "destination")
    assert result.tag_overrides(t.REQUEST_COUNT, "destination")["team"].value == "'reviews'"
    assert result.tag_overrides(t.REQUEST_COUNT, "source")["team"].value == "'platform'"


def test_an_override_without_disabled_does_not_re_enable():
    result = telemetry_for(snapshot(METRICS), RATINGS)  # mesh disables REQUEST_COUNT; the namespace only relabels it
    assert not result.metric_enabled(t.REQUEST_COUNT, "destination")
    assert result.metric_enabled(t.REQUEST_DURATION, "destination")


# --- analyze -----------------------------------------------------------------------------------


def test_analyze_warns_about_providers_the_mesh_config_lacks():
    text = resource(
        "mesh",
        "istio-system",
        "tracing: [{providers: [{name: jaeger}]}]\naccessLogging: [{providers: [{name: audit}, {name: otel-als}]}]",
    )
    snap = snapshot(text, MESH_CONFIG)
    findings = analyze(snap, snap.telemetries, registry_known=True)
    assert [(f.field, f.message.split(" in the mesh")[0]) for f in findings] == [
        ("spec.tracing[0].providers[0].name", "no tracing provider 'jaeger'"),
        ("spec.accessLogging[0].providers[1].name", "no access log provider 'otel-als'"),
    ]
    assert analyze(snap, snap.telemetries, registry_known=False) == []


def test_mesh_telemetry_of_an_empty_config_is_the_default():
    assert mesh_telemetry(parse_mesh_config("", "m")) == MeshTelemetry()


# --- expressions -------------------------------------------------------------------------------

RECORD = {
    "method": "GET",
    "path": "/reviews/1?full=yes",
    "host": "reviews:9080",
    "scheme": "http",
    "protocol": "HTTP/1.1",
    "response_code": 503,
    "source_principal": "spiffe://cluster.local/ns/default/sa/productpage",
    "destination_principal": "",
    "upstream_address": "127.0.0.1:9080",
    "source_address": "127.0.0.9:40000",
    "destination_port": 9080,
    "headers": {"x-user": "jason"},
}


@pytest.mark.parametrize(
    ("expr", "parsed", "value"),
    [
        ("'canary'", ("literal", "canary"), "canary"),
        ('"it\\"s"', ("literal", 'it"s'), 'it"s'),
        ("request.headers['X-User']", ("header", "x-user"), "jason"),
        ('request.headers["x-missing"]', ("header", "x-missing"), "unknown"),
        ("request.method", ("attribute", "request.method"), "GET"),
        ("request.path", ("attribute", "request.path"), "/reviews/1?full=yes"),
        ("request.url_path", ("attribute", "request.url_path"), "/reviews/1"),
        ("request.host", ("attribute", "request.host"), "reviews:9080"),
        ("request.scheme", ("attribute", "request.scheme"), "http"),
        ("request.protocol", ("attribute", "request.protocol"), "HTTP/1.1"),
        ("response.code", ("attribute", "response.code"), "503"),
        ("source.principal", ("attribute", "source.principal"), "spiffe://cluster.local/ns/default/sa/productpage"),
        ("destination.principal", ("attribute", "destination.principal"), "unknown"),
        ("upstream.address", ("attribute", "upstream.address"), "127.0.0.1:9080"),
        ("source.address", ("attribute", "source.address"), "127.0.0.9:40000"),
        (" string(destination.port) ", ("attribute", "destination.port"), "9080"),
    ],
)
def test_expressions_parse_and_evaluate(expr, parsed, value):
    e = telemetry_expr.parse(expr)
    assert (e.kind, e.value) == parsed
    assert telemetry_expr.evaluate(e, RECORD) == value


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "canary",
        "request.headers",
        "request.headers['a b']",
        "response.code + 1",
        "string(request.method) + 'x'",
        "'unclosed",
        "filter_state['x']",
    ],
)
def test_other_expressions_are_refused_by_name(expr):
    with pytest.raises(ValueError, match="expression"):
        telemetry_expr.parse(expr)
