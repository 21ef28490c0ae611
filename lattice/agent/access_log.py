"""Envoy's access log stream, read by the agent: one `Request` per HTTP request or TCP event.

Envoy counts Istio's metrics itself (translate/istio_stats.py); over gRPC (its AccessLogService,
batched every half second) it sends the agent only the entries of requests that failed, and all
of them while someone taps (translate/telemetry.py). The agent turns each entry into a `Request`
holding both ends in the mesh's own terms (workload, namespace, app, version, principal) and hands
it to its consumers: tap, and the ring of recent failures behind `lattice why`. That work runs on
a thread of its own at a lower CPU priority, so that on a shared core it never delays requests.
The parsers of the peer strings here (`endpoint_peer`, `caller`, `service_of`) also name the
series of Envoy's own counts (agent/envoy_stats.py).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from lattice.translate import names
from lattice.translate.agent_names import ENDPOINT_TAG, PEER_METADATA

log = logging.getLogger("lattice.access-log")
UNKNOWN = "unknown"
MAX_BEHIND = 2000  # messages (each up to 16 KB of entries) queued for the worker before new ones are dropped
WORKER_NICENESS = 10
# Envoy's short response flags (what %RESPONSE_FLAGS% prints), by ResponseFlags field.
FLAGS = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}
_TCP_EVENTS = {
    accesslog_pb2.TcpUpstreamConnected: "open",
    accesslog_pb2.TcpPeriodic: "periodic",
    accesslog_pb2.TcpConnectionEnd: "close",
}


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a request, as Istio's metric labels name it."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    principal: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN

    @property
    def service_account(self) -> str:
        return self.principal.rpartition("/sa/")[2] if "/sa/" in self.principal else UNKNOWN


@dataclass(slots=True)
class Request:
    """One request (or one TCP connection event) as one sidecar saw it."""

    reporter: str  # "source" (the caller's sidecar) or "destination" (the callee's)
    protocol: str  # http, grpc or tcp
    start: float  # unix seconds
    source: Peer
    destination: Peer
    service: str  # the destination service's host name
    mtls: bool  # destination side: the caller presented a mesh certificate
    duration_ms: float = 0.0
    method: str = ""
    path: str = ""  # without the query string
    authority: str = ""
    code: int = 0
    grpc_status: str = ""
    flags: str = "-"
    request_bytes: int = 0
    response_bytes: int = 0
    opened: bool = False  # TCP: this event is the connection's first
    closed: bool = False  # TCP: and this its last
    sent: int = 0  # TCP: bytes since the connection's previous event
    received: int = 0
    # What `lattice why` reads: which config decided the request, and how the upstream side went.
    request_id: str = ""  # x-request-id, which Envoy assigns (or keeps) for every HTTP request
    route: str = ""  # the route's name (a VirtualService rule's `name`, else `<ns>/<name>#<index>`)
    cluster: str = ""  # the upstream cluster chosen
    upstream_host: str = ""  # the endpoint address tried last
    attempts: int = 0  # upstream attempts (1 + retries)
    details: str = ""  # Envoy's response code details (`rbac_access_denied_matched_policy[...]`, ...)
    transport_failure: str = ""  # why the upstream connection failed (refused, TLS error, ...)

    @property
    def failed(self) -> bool:
        """Linkerd's and Istio's dashboards' notion: a 5xx, no response at all, or a gRPC error."""
        return self.code >= 500 or self.code == 0 or self.grpc_status not in ("", "0")

    @property
    def unusual(self) -> bool:
        """What the agent always keeps for `lattice why`: an error status or any response flag."""
        return self.code >= 400 or self.flags != "-" or (self.protocol != "tcp" and self.code == 0)

    @property
    def peer(self) -> Peer:
        """The other end, from the reporting side."""
        return self.destination if self.reporter == "source" else self.source


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    """The agent end of Envoy's access log stream; `me` is this sidecar's workload, `service` its service's host."""

    def __init__(
        self, me: Peer, service: str, consumers: list[Callable[[Request], None]], lock: threading.Lock | None = None
    ) -> None:
        self.me, self.service, self.consumers = me, service, consumers
        self.lock = lock or threading.Lock()  # held while consumers run: readers (scrapes, stat) take it too
        self._tcp_bytes: dict[int, tuple[int, int]] = {}  # TCP stream id -> (sent, received) so far
        self.received = 0
        self.dropped = 0  # messages not counted: the worker was too far behind
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    async def StreamAccessLogs(
        self, messages: AsyncIterator[als_pb2.StreamAccessLogsMessage], context
    ) -> als_pb2.StreamAccessLogsResponse:
        """Hand each message to the worker thread; the event loop (xDS, certificates) never waits on it."""
        self._start()
        outbound = False
        async for message in messages:
            if message.HasField("identifier"):
                outbound = message.identifier.log_name != "inbound"
            if self._queue.qsize() < MAX_BEHIND:
                self._queue.put((message, outbound))
            else:
                self.dropped += 1
        return als_pb2.StreamAccessLogsResponse()

    def _start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="access-log", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        """At a lower CPU priority than Envoy (Linux: niceness is per thread): on a busy core the
        proxies' requests go first and the counting catches up after, instead of the other way."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except (OSError, AttributeError):
            pass  # not Linux, or not allowed: counting at normal priority still counts
        while True:
            message, outbound = self._queue.get()
            self.process(message, outbound)

    def process(self, message: als_pb2.StreamAccessLogsMessage, outbound: bool) -> None:
        """One message's entries, to every consumer."""
        with self.lock:
            for entry in message.http_logs.log_entry:
                self._deliver(self._http(entry, outbound))
            for entry in message.tcp_logs.log_entry:
                request = self._tcp(entry, outbound)
                if request is not None:
                    self._deliver(request)

    def _deliver(self, request: Request) -> None:
        self.received += 1
        for consume in self.consumers:
            try:
                consume(request)
            except Exception:  # a consumer's bug must not stop the others or the stream
                log.exception("access log consumer failed")

    def _ends(
        self, common: accesslog_pb2.AccessLogCommon, outbound: bool, metadata_peer: str
    ) -> tuple[str, Peer, Peer, str, bool]:
        if outbound:
            return (
                "source",
                self.me,
                endpoint_peer(common.custom_tags.get(ENDPOINT_TAG, "")),
                service_of(common.upstream_cluster),
                False,
            )
        principal = next(
            (san.uri for san in common.tls_properties.peer_certificate_properties.subject_alt_name if san.uri), ""
        )
        return "destination", caller(principal, metadata_peer), self.me, self.service, bool(principal)

    def _http(self, entry: accesslog_pb2.HTTPAccessLogEntry, outbound: bool) -> Request:
        common, request, response = entry.common_properties, entry.request, entry.response
        peer_field = common.metadata.filter_metadata.get(PEER_METADATA)
        reporter, source, destination, service, mtls = self._ends(
            common,
            outbound,
            peer_field.fields["peer"].string_value if peer_field and "peer" in peer_field.fields else "",
        )
        authority = request.authority
        if outbound and service == UNKNOWN:
            service = authority.rpartition(":")[0] if ":" in authority else authority
        timing = (
            common.time_to_last_downstream_tx_byte
            if common.HasField("time_to_last_downstream_tx_byte")
            else common.duration
        )
        grpc = request.request_headers.get("content-type", "").startswith("application/grpc")
        grpc_status = (
            (response.response_trailers.get("grpc-status") or response.response_headers.get("grpc-status", ""))
            if grpc
            else ""
        )
        start, method = common.start_time, request.request_method
        return Request(
            reporter,
            "grpc" if grpc else "http",
            start.seconds + start.nanos / 1e9,
            source,
            destination,
            service,
            mtls,
            timing.seconds * 1000 + timing.nanos / 1e6,
            _METHODS[method] if 0 <= method < len(_METHODS) else "",
            request.path.partition("?")[0],
            authority,
            response.response_code.value,
            grpc_status,
            _flags(common.response_flags),
            request.request_headers_bytes + request.request_body_bytes,
            response.response_headers_bytes + response.response_body_bytes,
            request_id=request.request_id,
            route=common.route_name,
            cluster=common.upstream_cluster,
            upstream_host=_address(common.upstream_remote_address),
            attempts=common.upstream_request_attempt_count,
            details=response.response_code_details,
            transport_failure=common.upstream_transport_failure_reason,
        )

    def _tcp(self, entry: accesslog_pb2.TCPAccessLogEntry, outbound: bool) -> Request | None:
        """A connection's first entry opens it (the destination side logs none at connect: the peer
        certificate is not known yet then), its TcpConnectionEnd closes it; bytes are counted as
        they grow, every few seconds."""
        common = entry.common_properties
        event = _TCP_EVENTS.get(common.access_log_type)
        if event is None:
            return None
        reporter, source, destination, service, mtls = self._ends(common, outbound, "")
        if outbound and not common.upstream_cluster.startswith("outbound|"):
            service = UNKNOWN
        sent, received = entry.connection_properties.sent_bytes, entry.connection_properties.received_bytes
        before = (
            self._tcp_bytes.pop(common.stream_id, None) if event == "close" else self._tcp_bytes.get(common.stream_id)
        )
        if event != "close":
            self._tcp_bytes[common.stream_id] = (sent, received)
        sent_before, received_before = before or (0, 0)
        return Request(
            reporter=reporter,
            protocol="tcp",
            start=common.start_time.seconds + common.start_time.nanos / 1e9,
            source=source,
            destination=destination,
            service=service,
            mtls=mtls,
            flags=_flags(common.response_flags),
            cluster=common.upstream_cluster,
            upstream_host=_address(common.upstream_remote_address),
            transport_failure=common.upstream_transport_failure_reason,
            opened=before is None,
            closed=event == "close",
            sent=max(0, sent - sent_before),
            received=max(0, received - received_before),
        )


def _address(address) -> str:
    socket = address.socket_address
    return f"{socket.address}:{socket.port_value}" if socket.address else ""


_METHODS = ["", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


def _flags(flags: accesslog_pb2.ResponseFlags) -> str:
    """Only the flags that are set (ListFields), the way %RESPONSE_FLAGS% prints them."""
    fields = flags.ListFields()
    if not fields:
        return "-"
    return ",".join(FLAGS.get(field.name, "UAEX") for field, _ in fields)


def _peer(parts: list[str], principal: str) -> Peer:
    workload, namespace, app, version, canonical, revision = (p or UNKNOWN for p in parts)
    return Peer(workload, namespace, app, version, principal or UNKNOWN, canonical, revision)


@functools.lru_cache(maxsize=4096)
def endpoint_peer(value: str) -> Peer:
    """ENDPOINT_METADATA (and the outbound side's own): "<peer_value>;<principal>"."""
    parts = value.split(";")
    return _peer(parts[:6], parts[6]) if len(parts) == 7 else Peer()


@functools.lru_cache(maxsize=4096)
def caller(principal: str, metadata: str) -> Peer:
    """The caller: its principal (from its certificate) and the workload its sidecar named, which is
    believed only when the certificate's namespace agrees (a plaintext client can claim anything)."""
    namespace = principal.split("/ns/", 1)[1].split("/", 1)[0] if "/ns/" in principal else UNKNOWN
    parts = metadata.split(";")
    if principal and len(parts) == 6 and parts[1] == namespace:
        return _peer(parts, principal)
    return Peer(namespace=namespace, principal=principal or UNKNOWN)


@functools.lru_cache(maxsize=4096)
def service_of(cluster: str) -> str:
    return names.parse_cluster(cluster)["host"] if cluster.startswith("outbound|") else UNKNOWN
