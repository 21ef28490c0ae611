"""Telemetry (telemetry.istio.io) and MeshConfig's telemetry part: Istio's documented examples
parse; every field Lattice cannot honour is refused with its path and the reason."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, kind_for, parse_documents, validate_object
from lattice.api.mesh_config import parse_mesh_config

# From istio.io: "Telemetry API", "Customizing Istio Metrics", "Envoy Access Logs", "Configure
# tracing with Telemetry API", and the Telemetry reference.
ISTIO_EXAMPLES = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers:
    - name: envoy
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default-tracing, namespace: istio-system}
spec:
  tracing:
  - providers:
    - name: "zipkin"
    randomSamplingPercentage: 100.00
    customTags:
      "provider":
        literal:
          value: "zipkin"
      "cluster_id":
        environment:
          name: ISTIO_META_CLUSTER_ID
          defaultValue: Kubernetes
      "user":
        header:
          name: x-user
          defaultValue: anonymous
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: remove-all-metrics, namespace: istio-system}
spec:
  metrics:
    - providers:
        - name: prometheus
      overrides:
        - disabled: true
          match:
            mode: CLIENT_AND_SERVER
            metric: ALL_METRICS
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace-metrics}
spec:
  metrics:
  - providers:
    - name: prometheus
    overrides:
    - match:
        metric: REQUEST_COUNT
      tagOverrides:
        destination_port:
          value: "string(destination.port)"
        request_host:
          value: "request.host"
    - match:
        metric: REQUEST_COUNT
        mode: CLIENT_AND_SERVER
      tagOverrides:
        grpc_response_status:
          operation: REMOVE
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: default-exception-logging, namespace: istio-system}
spec:
  accessLogging:
    - providers:
        - name: otel
      filter:
        expression: "response.code >= 400 || xds.cluster_name == 'BlackHoleCluster'"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: disable-sleep-logging, namespace: default}
spec:
  selector:
    matchLabels:
      app: sleep
  accessLogging:
  - providers:
    - name: envoy
    disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-tracing, namespace: default}
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: reviews
  tracing:
  - match:
      mode: SERVER
    disableSpanReporting: true
  - useRequestIdForTraceSampling: true
    randomSamplingPercentage: 0.5
"""


def test_istio_examples_parse():
    resources = parse_documents(ISTIO_EXAMPLES)
    assert [r.kind for r in resources] == ["Telemetry"] * 7
    tracing = resources[1].spec.tracing[0]
    assert tracing.random_sampling_percentage == 100 and tracing.providers[0].name == "zipkin"
    assert {name: tag.kind for name, tag in tracing.custom_tags.items()} == {
        "provider": "literal",
        "cluster_id": "environment",
        "user": "header",
    }
    overrides = resources[3].spec.metrics[0].overrides
    assert overrides[0].tag_overrides["destination_port"].value == "string(destination.port)"
    assert overrides[1].tag_overrides["grpc_response_status"].operation == "REMOVE"
    assert resources[5].spec.match_labels == {"app": "sleep"} and resources[5].spec.scoped
    assert resources[6].spec.services == {"reviews"} and resources[6].spec.tracing[0].mode == "SERVER"
    assert not resources[0].spec.scoped


def test_kind_names_and_round_trip():
    assert kind_for("telemetries").kind == kind_for("Telemetry").kind == "Telemetry"
    original = parse_documents(ISTIO_EXAMPLES)[3]
    assert validate_object(original.to_dict()).spec == original.spec


def _doc(spec: dict, namespace: str = "default") -> dict:
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "t", "namespace": namespace},
        "spec": spec,
    }


def _override(**fields) -> dict:
    return {"metrics": [{"overrides": [fields]}]}


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (
            {"metrics": [{"providers": [{"name": "stackdriver"}]}]},
            "spec.metrics[0].providers",
            "'stackdriver' is not supported",
        ),
        ({"metrics": [{"reportingInterval": "5s"}]}, "spec.metrics[0].reportingInterval", "no reporting period"),
        (
            _override(match={"customMetric": "foo"}),
            "spec.metrics[0].overrides[0].match.customMetric",
            "custom metrics are not supported",
        ),
        (
            _override(match={"metric": "GRPC_REQUEST_MESSAGES"}),
            "spec.metrics[0].overrides[0].match.metric",
            "do not count gRPC messages",
        ),
        (
            _override(match={"metric": "GRPC_RESPONSE_MESSAGES"}),
            "spec.metrics[0].overrides[0].match.metric",
            "do not count gRPC messages",
        ),
        (
            _override(match={"metric": "REQUESTS"}),
            "spec.metrics[0].overrides[0].match.metric",
            "unknown metric 'REQUESTS'",
        ),
        (_override(match={"mode": "BOTH"}), "spec.metrics[0].overrides[0].match.mode", "CLIENT_AND_SERVER"),
        (
            _override(tagOverrides={"foo": {"operation": "UPSERT"}}),
            "spec.metrics[0].overrides[0].tagOverrides.foo",
            "value must be set when operation is UPSERT",
        ),
        (
            _override(tagOverrides={"response_code": {"operation": "REMOVE", "value": "oops"}}),
            "spec.metrics[0].overrides[0].tagOverrides.response_code",
            "must not be set when operation is REMOVE",
        ),
        (
            _override(tagOverrides={"app": {"value": "upstream_peer.labels['app'].value"}}),
            "spec.metrics[0].overrides[0].tagOverrides.app",
            "unsupported expression \"upstream_peer.labels['app'].value\"",
        ),
        (
            _override(tagOverrides={"slow": {"value": "response.duration > 500 ? 'y' : 'n'"}}),
            "spec.metrics[0].overrides[0].tagOverrides.slow",
            "unsupported expression",
        ),
        (
            _override(tagOverrides={"my-label": {"value": "'x'"}}),
            "spec.metrics[0].overrides[0].tagOverrides",
            "'my-label' is not a Prometheus label name",
        ),
        (
            _override(tagOverrides={"__name__": {"value": "'x'"}}),
            "spec.metrics[0].overrides[0].tagOverrides",
            "not a Prometheus label name",
        ),
        (
            _override(tagOverrides={"team": {"operation": "REMOVE"}}),
            "spec.metrics[0].overrides[0].tagOverrides",
            "cannot REMOVE 'team'",
        ),
        (
            {"tracing": [{"randomSamplingPercentage": 101}]},
            "spec.tracing[0].randomSamplingPercentage",
            "less than or equal to 100",
        ),
        (
            {"tracing": [{"randomSamplingPercentage": -1}]},
            "spec.tracing[0].randomSamplingPercentage",
            "greater than or equal to 0",
        ),
        (
            {"tracing": [{"providers": [{"name": "a"}, {"name": "b"}]}]},
            "spec.tracing[0].providers",
            "at most one provider",
        ),
        ({"tracing": [{"providers": [{"name": ""}]}]}, "spec.tracing[0].providers[0].name", "at least 1 character"),
        (
            {"tracing": [{"useRequestIdForTraceSampling": False}]},
            "spec.tracing[0].useRequestIdForTraceSampling",
            "always sample on x-request-id",
        ),
        (
            {"tracing": [{"customTags": {"x": {"literal": {"value": "a"}, "header": {"name": "b"}}}}]},
            "spec.tracing[0].customTags.x",
            "exactly one of literal, environment or header",
        ),
        (
            {"tracing": [{"customTags": {"x": {"header": {"name": "a b"}}}}]},
            "spec.tracing[0].customTags.x.header.name",
            "not a header name",
        ),
        (
            {"tracing": [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 5}]},
            "spec.tracing[0]",
            "may only set disableSpanReporting",
        ),
        ({"tracing": [{"enableIstioTags": True}]}, "spec.tracing[0].enableIstioTags", "unknown field"),
        (
            {"accessLogging": [{"filter": {"expression": "response.code >= 400 && (request.method == 'GET'"}}]},
            "spec.accessLogging[0].filter.expression",
            "unclosed '('",
        ),
        (
            {"accessLogging": [{"filter": {"expression": "response.code >= 400)"}}]},
            "spec.accessLogging[0].filter.expression",
            "unmatched ')'",
        ),
        (
            {"accessLogging": [{"filter": {"expression": "request.headers['x] == 'a'"}}]},
            "spec.accessLogging[0].filter.expression",
            "unclosed string",
        ),
        (
            {"accessLogging": [{"filter": {"expression": ""}}]},
            "spec.accessLogging[0].filter.expression",
            "at least 1 character",
        ),
        (
            {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]},
            "spec.targetRefs[0]",
            "gateway.networking.k8s.io/Gateway is not supported",
        ),
        (
            {"targetRef": {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ext"}},
            "spec.targetRef",
            "networking.istio.io/ServiceEntry is not supported",
        ),
        (
            {"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Service", "name": "a"}]},
            "spec",
            "set selector or targetRef(s), not both",
        ),
        (
            {"targetRef": {"kind": "Service", "name": "a"}, "targetRefs": [{"kind": "Service", "name": "b"}]},
            "spec",
            "set targetRef or targetRefs, not both",
        ),
        (
            {"targetRefs": [{"kind": "Service", "name": "a", "namespace": "other"}]},
            "spec.targetRefs[0].namespace",
            "own namespace 'default'",
        ),
    ],
)
def test_refusals_name_the_field(spec, path, reason):
    with pytest.raises(ValidationError) as e:
        validate_object(_doc(spec))
    assert any(f.path == path and reason in f.message for f in e.value.errors), e.value.errors


def test_target_ref_in_own_namespace_is_accepted():
    resource = validate_object(_doc({"targetRef": {"kind": "Service", "name": "reviews", "namespace": "default"}}))
    assert resource.spec.services == {"reviews"}


def test_cel_filter_quotes_and_escapes():
    expression = "request.headers['x-msg'] == 'it\\'s (not) a bracket ]'"
    assert (
        validate_object(_doc({"accessLogging": [{"filter": {"expression": expression}}]}))
        .spec.access_logging[0]
        .filter.expression
        == expression
    )


# --- MeshConfig --------------------------------------------------------------------------------

MESH_CONFIG = """
accessLogFile: /dev/stdout
accessLogEncoding: TEXT
accessLogFormat: "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\\n"
enableTracing: true
defaultProviders:
  tracing: [otel-tracing]
  metrics: [prometheus]
  accessLogging: [json-file]
defaultConfig:
  tracing:
    sampling: 25.5
extensionProviders:
- name: otel-tracing
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
- name: zipkin
  zipkin:
    service: istio-system/zipkin.istio-system.svc.cluster.local
    port: 9411
    maxTagLength: 64
- name: json-file
  envoyFileAccessLog:
    path: /var/log/lattice/access.json
    logFormat:
      labels:
        path: "%REQ(:PATH)%"
        code: "%RESPONSE_CODE%"
- name: prometheus
  prometheus: {}
- name: authz
  envoyExtAuthzGrpc: {service: authz.foo.svc.cluster.local, port: 9000}
"""


def test_mesh_config_telemetry_fields():
    config = parse_mesh_config(MESH_CONFIG, "mesh.yaml")
    assert (config.access_log_file, config.access_log_encoding, config.enable_tracing, config.sampling) == (
        "/dev/stdout",
        "TEXT",
        True,
        25.5,
    )
    assert config.default_providers.tracing == ["otel-tracing"] and config.default_providers.access_logging == [
        "json-file"
    ]
    otel, zipkin, json_file, prometheus, authz = config.extension_providers
    assert otel.opentelemetry.port == 4317 and otel.authorizer is None
    assert (
        zipkin.zipkin.host == "zipkin.istio-system.svc.cluster.local"
        and zipkin.zipkin.path == "/api/v2/spans"
        and zipkin.zipkin.max_tag_length == 64
    )
    assert json_file.envoy_file_access_log.log_format.labels == {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"}
    assert prometheus.prometheus is not None and authz.authorizer.port == 9000


def test_mesh_config_defaults():
    config = parse_mesh_config("", "mesh.yaml")
    assert (
        config.access_log_file,
        config.access_log_encoding,
        config.enable_tracing,
        config.sampling,
        config.default_providers,
    ) == ("", "TEXT", True, None, None)
    assert parse_mesh_config(
        "accessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n", "m"
    ).access_log_labels == {"code": "%RESPONSE_CODE%"}


def _provider(body: str) -> str:
    return f"extensionProviders:\n- name: p\n  {body}\n"


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("accessLogFile: access.log\n", "accessLogFile", "not an absolute path"),
        ("accessLogEncoding: YAML\n", "accessLogEncoding", "'TEXT' or 'JSON'"),
        (
            "accessLogEncoding: JSON\naccessLogFormat: '%START_TIME% %RESPONSE_CODE%'\n",
            "accessLogFormat",
            "must be a JSON object",
        ),
        ("defaultProviders: {metrics: [stackdriver]}\n", "defaultProviders.metrics", "'stackdriver' is not supported"),
        ("defaultProviders: {tracing: [a, b]}\n", "defaultProviders.tracing", "at most one tracing provider"),
        ("defaultConfig: {tracing: {sampling: 200}}\n", "defaultConfig.tracing.sampling", "less than or equal to 100"),
        (
            "defaultConfig: {tracing: {zipkin: {address: 'z:9411'}}}\n",
            "defaultConfig.tracing.zipkin",
            "unknown field, or one Lattice does not support",
        ),
        ("defaultConfig: {discoveryAddress: 'istiod:15012'}\n", "defaultConfig.discoveryAddress", "unknown field"),
        (
            _provider("opentelemetry: {service: otel, port: 4317, http: {path: /v1/traces}}"),
            "extensionProviders[0].opentelemetry.http",
            "OTLP over HTTP is not supported",
        ),
        (
            _provider("opentelemetry: {service: otel, port: 4317, resourceDetectors: {environment: {}}}"),
            "extensionProviders[0].opentelemetry.resourceDetectors",
            "not supported",
        ),
        (
            _provider("opentelemetry: {service: 'a b', port: 4317}"),
            "extensionProviders[0].opentelemetry.service",
            "not a host name",
        ),
        (
            _provider("zipkin: {service: zipkin, port: 0}"),
            "extensionProviders[0].zipkin.port",
            "greater than or equal to 1",
        ),
        (
            _provider("zipkin: {service: zipkin, port: 9411, path: api/v2/spans}"),
            "extensionProviders[0].zipkin.path",
            "must begin with '/'",
        ),
        (
            _provider("zipkin: {service: zipkin, port: 9411, enable64bitTraceId: true}"),
            "extensionProviders[0].zipkin.enable64bitTraceId",
            "unknown field",
        ),
        (
            _provider("envoyFileAccessLog: {path: /dev/stdout, logFormat: {}}"),
            "extensionProviders[0].envoyFileAccessLog.logFormat",
            "exactly one of text",
        ),
        (
            _provider("envoyFileAccessLog: {path: out.log}"),
            "extensionProviders[0].envoyFileAccessLog.path",
            "not an absolute path",
        ),
        (
            _provider("envoyOtelAls: {service: otel, port: 4317}"),
            "extensionProviders[0].envoyOtelAls",
            "provider kind is not supported",
        ),
        (
            _provider("datadog: {service: dd, port: 8126}"),
            "extensionProviders[0].datadog",
            "provider kind is not supported",
        ),
        (_provider("prometheus: {}"), "extensionProviders[0]", "must be named 'prometheus'"),
        (
            "extensionProviders:\n- name: lattice\n  zipkin: {service: z, port: 9411}\n",
            "extensionProviders[0].name",
            "control plane's own trace collector",
        ),
        (
            _provider("zipkin: {service: z, port: 9411}\n  opentelemetry: {service: o, port: 4317}"),
            "extensionProviders[0]",
            "exactly one of envoyExtAuthzHttp or envoyExtAuthzGrpc",
        ),
        (
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            "outboundTrafficPolicy",
            "MeshConfig field Lattice does not read",
        ),
    ],
)
def test_mesh_config_telemetry_refusals(text, path, reason):
    with pytest.raises(ValidationError) as e:
        parse_mesh_config(text, "mesh.yaml")
    assert any(f.path == path and reason in f.message for f in e.value.errors), e.value.errors
