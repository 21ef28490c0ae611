"""Metrics and access log config in the generated listeners: Istio's metrics counted by Envoy's
stats logger, the stream of failed (or tapped) requests to the agent on both sides, peer identity
carried by endpoint metadata and a request header, file logs and their Telemetry filters, and
metrics switched off."""

from __future__ import annotations

import json

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import json_format
from xds.type.v3 import typed_struct_pb2

from lattice.api import parse_documents
from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh import MeshSnapshot
from lattice.mesh.telemetry import mesh_telemetry
from lattice.translate import ENDPOINT, LISTENER, ROUTE, translate
from lattice.translate import istio_stats
from lattice.translate import telemetry as t
from test_golden import WORKLOADS

PRODUCTPAGE, RATINGS = WORKLOADS[0], WORKLOADS[4]


def snapshot(*docs: dict, mesh: str = "") -> MeshSnapshot:
    resources = tuple(r for d in docs for r in parse_documents(json.dumps(d)))
    return MeshSnapshot(
        "t",
        WORKLOADS,
        telemetries=resources,
        mesh_telemetry=mesh_telemetry(parse_mesh_config(mesh or "{}", "mesh.yaml")),
    )


def telemetry(spec: dict, namespace: str = "default") -> dict:
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "t", "namespace": namespace},
        "spec": spec,
    }


def managers(snap: MeshSnapshot, proxy, prefix: str) -> list[hcm.HttpConnectionManager]:
    out = []
    for name, listener in translate(snap, proxy).by_type[LISTENER]:
        if name.startswith(prefix):
            for chain in listener.filter_chains:
                manager = hcm.HttpConnectionManager()
                chain.filters[-1].typed_config.Unpack(manager)
                out.append(manager)
    return out


def logs(manager: hcm.HttpConnectionManager, kind: str) -> list:
    out = []
    for log in manager.access_log:
        if log.name == kind:
            config = als_pb2.HttpGrpcAccessLogConfig() if kind.endswith("http_grpc") else file_pb2.FileAccessLog()
            log.typed_config.Unpack(config)
            out.append((config, log))
    return out


def stats_configs(manager: hcm.HttpConnectionManager) -> list[dict]:
    out = []
    for log in manager.access_log:
        if log.name == istio_stats.STATS_LOGGER:
            typed = typed_struct_pb2.TypedStruct()
            log.typed_config.Unpack(typed)
            assert typed.type_url == istio_stats.STATS_TYPE
            out.append(json_format.MessageToDict(typed.value))
    return out


def test_both_sides_count_in_envoy_stream_failures_to_the_agent_and_write_no_file():
    snap = snapshot()
    (outbound,) = managers(snap, PRODUCTPAGE, "outbound_http")
    inbound = managers(snap, RATINGS, "inbound|")
    for manager, name in [(outbound, "outbound"), *((m, "inbound") for m in inbound)]:
        ((config, log),) = logs(manager, "envoy.access_loggers.http_grpc")
        assert config.common_config.log_name == name
        assert config.common_config.grpc_service.envoy_grpc.cluster_name == "lattice-telemetry"
        assert list(config.additional_response_trailers_to_log) == ["grpc-status"]
        either = log.filter.or_filter.filters
        assert either[0].status_code_filter.comparison.value.default_value == 400
        assert either[2].runtime_filter.runtime_key == t.TAP_RUNTIME_KEY
        assert not logs(manager, "envoy.access_loggers.file")
        istio, paths = stats_configs(manager)
        assert [h["stat"]["name"] for h in istio["histograms"]] == ["rq", "rqb", "rsb"]
        assert [h["stat"]["name"] for h in paths["histograms"]] == ["path"]
        # `lattice top` tells a gRPC request from a plain one as `lattice stat` does, before any
        # tag a caller could imitate in the content-type
        (path_tags,) = ([t["name"] for t in h["stat"]["tags"]] for h in paths["histograms"])
        assert path_tags[:2] == ["~r", "~proto"] and "~grpc" in path_tags
    ((config, _),) = logs(outbound, "envoy.access_loggers.http_grpc")
    assert [tag.tag for tag in config.common_config.custom_tags] == [t.ENDPOINT_TAG]  # who answered, from the endpoint
    tags = {tag["name"]: tag["value_format"] for tag in stats_configs(outbound)[0]["histograms"][0]["stat"]["tags"]}
    assert tags["~dst"] == "%UPSTREAM_METADATA(lattice:peer)%" and tags["~src"].startswith("productpage-v1;default;")


def test_the_caller_is_named_by_header_and_the_callee_by_endpoint_metadata():
    snap = snapshot()
    routes = dict(translate(snap, PRODUCTPAGE).by_type[ROUTE])
    host = next(h for h in routes["http_proxy"].virtual_hosts if h.name.startswith("ratings."))
    (header,) = [h for h in host.request_headers_to_add if h.header.key == t.PEER_HEADER]
    assert header.header.value == "%ENVIRONMENT(LATTICE_PEER)%"  # one shared table, each Envoy's own value
    passthrough = next(h for h in routes["http_proxy"].virtual_hosts if h.name == "allow_any")
    assert not passthrough.request_headers_to_add, "the workload's name must not leave the mesh"
    endpoints = dict(translate(snap, PRODUCTPAGE).by_type[ENDPOINT])
    peers = {
        e.metadata.filter_metadata[t.ENDPOINT_METADATA]["peer"]
        for loc in endpoints["outbound|9080||ratings.default.svc.cluster.local"].endpoints
        for e in loc.lb_endpoints
    }
    assert "ratings-v1;default;ratings;v1;ratings;v1;spiffe://cluster.local/ns/default/sa/ratings" in peers
    (manager, *_) = managers(snap, RATINGS, "inbound|")
    names = [f.name for f in manager.http_filters]
    # out of the headers before anything reads them (only the path policy, which reads the path alone, runs earlier)
    assert names[names.index("envoy.filters.http.header_to_metadata") - 1] == "lattice.path_policy.utf8"


def test_mesh_access_log_file_and_a_telemetry_filter_for_one_workload():
    snap = snapshot(
        telemetry(
            {
                "selector": {"matchLabels": {"app": "ratings"}},
                "accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}],
            }
        ),
        mesh="accessLogFile: /dev/stdout\n",
    )
    (outbound,) = managers(snap, PRODUCTPAGE, "outbound_http")
    ((config, log),) = logs(outbound, "envoy.access_loggers.file")
    # Istio's default: TEXT in its default format (JSON is `accessLogEncoding: JSON` away).
    assert config.path == "/dev/stdout" and config.log_format.text_format_source.inline_string == t.TEXT_FORMAT
    assert not log.HasField("filter")
    (manager, *_) = managers(snap, RATINGS, "inbound|")
    ((config, log),) = logs(manager, "envoy.access_loggers.file")
    cel = cel_pb2.ExpressionFilter()
    log.filter.extension_filter.typed_config.Unpack(cel)
    assert cel.expression == "response.code >= 400"


def test_json_access_logs_are_one_setting_away():
    snap = snapshot(
        telemetry({"accessLogging": [{"providers": [{"name": "envoy"}]}]}), mesh="accessLogEncoding: JSON\n"
    )
    (outbound,) = managers(snap, PRODUCTPAGE, "outbound_http")
    ((config, _),) = logs(outbound, "envoy.access_loggers.file")
    assert config.log_format.json_format.fields["response_code"].string_value == "%RESPONSE_CODE%"


def test_metrics_off_means_nothing_counted_and_the_rules_reach_the_agent():
    off = telemetry(
        {
            "metrics": [
                {
                    "providers": [{"name": "prometheus"}],
                    "overrides": [{"match": {"metric": "ALL_METRICS"}, "disabled": True}],
                }
            ]
        },
        namespace="istio-system",
    )
    snap = snapshot(off)
    (outbound,) = managers(snap, PRODUCTPAGE, "outbound_http")
    assert not stats_configs(outbound)
    listener: listener_pb2.Listener = dict(translate(snap, PRODUCTPAGE).by_type[LISTENER])["outbound_http"]
    config = json.loads(listener.metadata.filter_metadata[t.RULES_METADATA]["config"])
    assert config["rules"][0]["disabled"] is True
    assert config["service"] == "productpage.default.svc.cluster.local"
