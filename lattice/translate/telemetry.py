"""Metrics and access logs: what each Envoy reports about the requests it carries.

Istio's metrics need to know both ends of a request. Envoy knows its own side; the other side
travels with the request:
- outbound, the destination is the upstream host Envoy picked: each mesh endpoint carries its
  workload in endpoint metadata (`ENDPOINT_METADATA`);
- inbound, the source is the peer certificate (principal) plus a request header the calling
  sidecar adds to every request for a mesh service (`PEER_HEADER`, its value taken from the
  calling Envoy's environment, so one shared route table serves every caller). The destination's
  sidecar moves it into dynamic metadata and drops it: the app never sees it.
Envoy counts Istio's metrics itself, with its stats access logger (translate/istio_stats.py).
Per-request entries stream over gRPC (Envoy's access log service) to the sidecar's agent only for
requests that failed (status >= 400 or any response flag: rare, and what `lattice why` explains)
and, while someone runs `lattice tap`, for all of them: the agent turns the runtime key
`TAP_RUNTIME_KEY` on through Envoy's admin `/runtime_modify` and off again, with no config push
and no listener drain. Access logs for people (JSON lines or text) Envoy writes itself. The
metric rules of the workload's Telemetry ride on the listener's metadata (`RULES_METADATA`),
where the agent reads which labels to remove.
"""

from __future__ import annotations

import dataclasses
import json

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2 as h2m
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import struct_pb2

from lattice.mesh import MeshSnapshot, Workload, fqdn
from lattice.mesh.telemetry import METRICS, AccessLog, Telemetry, telemetry_for
from lattice.translate import istio_stats
from lattice.translate.agent_names import (
    ENDPOINT_METADATA,
    ENDPOINT_TAG,
    PEER_ENV,
    PEER_METADATA,
    RULES_METADATA,
    TAP_RUNTIME_KEY,
    peer_value,
)
from lattice.translate.names import TELEMETRY_CLUSTER
from lattice.translate.protos import duration, pack

PEER_HEADER = "x-lattice-peer"
FAILURE_STATUS_KEY = "lattice.failure_status"  # runtime key: responses from this status on stream (default 400)
LOG_NAMES = {"outbound": "outbound", "inbound": "inbound"}  # the ALS stream's name: which side reported
TCP_FLUSH_SECONDS = 5  # long TCP connections report their bytes this often, not only at the end
# Istio's default JSON access log fields (its EnvoyJSONLogFormatIstio).
JSON_FIELDS = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
}
# Istio's default text format (its EnvoyTextLogFormat).
TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    '%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% '
    '%BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
_REPORTER = {"outbound": "source", "inbound": "destination"}
_MODE = {"outbound": "CLIENT", "inbound": "SERVER"}


def add_peer_header(headers) -> None:
    """Requests to a mesh service say which workload sent them (from the calling Envoy's
    environment: the same route table serves every caller)."""
    option = headers.add()
    option.header.key = PEER_HEADER
    option.header.value = f"%ENVIRONMENT({PEER_ENV})%"
    option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def endpoint_metadata(snapshot: MeshSnapshot, endpoint) -> str | None:
    """A mesh workload's ENDPOINT_METADATA; None for endpoints that are not workloads."""
    if not isinstance(endpoint, Workload):
        return None
    return f"{_peer(endpoint)};{snapshot.identity(endpoint)}"


def _peer(w: Workload) -> str:
    return peer_value(w.name, w.namespace, w.labels, w.service)


def inbound_filters() -> list[hcm.HttpFilter]:
    """First on every inbound HTTP chain: the caller's workload into metadata, out of the headers."""
    rule = h2m.Config.Rule(
        header=PEER_HEADER,
        on_header_present=h2m.Config.KeyValuePair(metadata_namespace=PEER_METADATA, key="peer", type=h2m.Config.STRING),
        remove=True,
    )
    config = h2m.Config(request_rules=[rule])
    return [hcm.HttpFilter(name="envoy.filters.http.header_to_metadata", typed_config=pack(config))]


def reports(telemetry: Telemetry, direction: str) -> bool:
    """Whether Envoy counts any of Istio's metrics on this side."""
    return any(telemetry.metric_enabled(m, _REPORTER[direction]) for m in METRICS)


def _ends(snapshot: MeshSnapshot, proxy: Workload, direction: str, mtls: bool | None) -> istio_stats.Ends:
    service = fqdn(proxy.service, proxy.namespace, snapshot.domain)
    return istio_stats.Ends(direction, _peer(proxy), snapshot.identity(proxy), service, mtls)


def http_access_logs(
    snapshot: MeshSnapshot, proxy: Workload, direction: str, mtls: bool | None = None
) -> list[accesslog_pb2.AccessLog]:
    """File logs, Istio's metrics (counted by Envoy) and the stream of failed (or tapped) requests;
    `mtls`: whether an inbound chain is the mutual TLS one."""
    telemetry = telemetry_for(snapshot, proxy)
    out = [_file_log(log) for log in telemetry.access_logs if log.mode in (_MODE[direction], "CLIENT_AND_SERVER")]
    out += istio_stats.http_loggers(telemetry, _ends(snapshot, proxy, direction, mtls))
    config = als_pb2.HttpGrpcAccessLogConfig(
        common_config=_grpc_common(direction),
        additional_request_headers_to_log=["content-type"],
        additional_response_headers_to_log=["grpc-status"],
        additional_response_trailers_to_log=["grpc-status"],
    )
    stream = accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=pack(config))
    stream.filter.CopyFrom(_failed_or_tapped(http=True))
    return [*out, stream]


def tcp_access_logs(
    snapshot: MeshSnapshot, proxy: Workload, direction: str, mtls: bool | None = None
) -> list[accesslog_pb2.AccessLog]:
    telemetry = telemetry_for(snapshot, proxy)
    out = [_file_log(log) for log in telemetry.access_logs if log.mode in (_MODE[direction], "CLIENT_AND_SERVER")]
    out += istio_stats.tcp_loggers(telemetry, _ends(snapshot, proxy, direction, mtls))
    config = als_pb2.TcpGrpcAccessLogConfig(common_config=_grpc_common(direction))
    stream = accesslog_pb2.AccessLog(name="envoy.access_loggers.tcp_grpc", typed_config=pack(config))
    stream.filter.CopyFrom(_failed_or_tapped(http=False))
    return [*out, stream]


def _failed_or_tapped(http: bool) -> accesslog_pb2.AccessLogFilter:
    """Failures (a status from 400 on, or any response flag) always; everything while tapping."""
    tapped = accesslog_pb2.AccessLogFilter()
    tapped.runtime_filter.runtime_key = TAP_RUNTIME_KEY
    tapped.runtime_filter.percent_sampled.numerator = 0
    flagged = accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter())
    either = accesslog_pb2.AccessLogFilter()
    if http:
        status = either.or_filter.filters.add().status_code_filter.comparison
        status.op = accesslog_pb2.ComparisonFilter.GE
        status.value.default_value, status.value.runtime_key = 400, FAILURE_STATUS_KEY
    either.or_filter.filters.extend([flagged, tapped])
    return either


def tcp_log_options(tcp_proxy, direction: str) -> None:
    """A TCP proxy logs every few seconds (bytes so far) and at the end, so a tap shows long
    connections before they end; the caller's side also when the upstream connects. The
    destination's side must not: Envoy would read the peer certificate before the handshake is
    done, and remember that there was none."""
    tcp_proxy.access_log_options.flush_access_log_on_connected = direction == "outbound"
    tcp_proxy.access_log_options.access_log_flush_interval.CopyFrom(duration(TCP_FLUSH_SECONDS))


def _grpc_common(direction: str) -> als_pb2.CommonGrpcAccessLogConfig:
    common = als_pb2.CommonGrpcAccessLogConfig(
        log_name=LOG_NAMES[direction],
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TELEMETRY_CLUSTER)
        ),
        transport_api_version=config_source_pb2.V3,
    )
    common.buffer_flush_interval.CopyFrom(duration(0.5))
    if direction == "outbound":  # who answered: the upstream endpoint's workload
        key = metadata_pb2.MetadataKey(key=ENDPOINT_METADATA, path=[metadata_pb2.MetadataKey.PathSegment(key="peer")])
        kind = metadata_pb2.MetadataKind(host=metadata_pb2.MetadataKind.Host())
        common.custom_tags.append(
            custom_tag_pb2.CustomTag(
                tag=ENDPOINT_TAG, metadata=custom_tag_pb2.CustomTag.Metadata(kind=kind, metadata_key=key)
            )
        )
    return common


def _file_log(log: AccessLog) -> accesslog_pb2.AccessLog:
    config = file_pb2.FileAccessLog(path=log.path)
    if log.encoding == "JSON":
        fields = struct_pb2.Struct()
        fields.update(json.loads(log.format) if log.format else JSON_FIELDS)
        config.log_format.json_format.CopyFrom(fields)
    else:
        config.log_format.text_format_source.inline_string = log.format or TEXT_FORMAT
    out = accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=pack(config))
    if log.filter:
        cel = cel_pb2.ExpressionFilter(expression=log.filter)
        out.filter.extension_filter.CopyFrom(
            accesslog_pb2.ExtensionFilter(name="envoy.access_loggers.extension_filters.cel", typed_config=pack(cel))
        )
    return out


def rules_metadata(snapshot: MeshSnapshot, proxy: Workload) -> base_pb2.Metadata:
    """The workload's metric rules, for its agent (which counts what the access log stream says)."""
    telemetry = telemetry_for(snapshot, proxy)
    metadata = base_pb2.Metadata()
    rules = [dataclasses.asdict(rule) for rule in telemetry.metrics]
    service = fqdn(proxy.service, proxy.namespace, snapshot.domain)
    # One string, not a Struct of several fields: a Struct's field order is not stable, and the
    # listener's bytes (its version) must be the same for the same input.
    metadata.filter_metadata[RULES_METADATA].update(
        {"config": json.dumps({"rules": rules, "service": service}, sort_keys=True)}
    )
    return metadata
