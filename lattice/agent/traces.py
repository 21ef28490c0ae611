"""The agent's trace relay: OTLP spans from its Envoy in, batches to the control plane out.

Envoy's OpenTelemetry tracer exports to the agent over the telemetry socket (OTLP's
`TraceService/Export`, gRPC). `Export` only queues the request's bytes and answers at once, so a
slow or absent control plane never holds Envoy (and with it, requests) up. The queue is bounded in
exports and bytes; when it is full an export is dropped, counted, and Envoy is told how many spans
were rejected (OTLP's partial success). `forward` posts what is queued as one request to the
agents' API, `POST /agent/v1/traces`, with the workload's certificate: serialized protobuf
messages of one type concatenated are that message with the repeated fields joined, so a batch is
the queued exports end to end. A batch that fails is dropped (the spans are diagnostics, not
data), and forwarding backs off while the control plane is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import grpc
from lattice.api import otlp

from lattice.agent.identity import Identity
from lattice.agent.web_client import Client, ClientError
from lattice.identity import CONTROL_PLANE_NAME

log = logging.getLogger("lattice.agent.traces")
MAX_QUEUED = 1000  # exports waiting to be forwarded
MAX_QUEUED_BYTES = 8 << 20
MAX_BATCH_BYTES = 1 << 20  # one POST; the control plane takes up to 4 MiB (server/traces.py)
MAX_BACKOFF = 5.0


class TraceRelay:
    """OTLP TraceService on the telemetry socket, and the task that forwards what it queued."""

    def __init__(
        self,
        api: str,
        identity: Identity,
        max_queued: int = MAX_QUEUED,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.url = f"{api.rstrip('/')}/agent/v1/traces"
        self.identity = identity
        self.max_queued, self.max_queued_bytes, self.max_batch_bytes = max_queued, max_queued_bytes, max_batch_bytes
        self._queue: deque[tuple[bytes, int]] = deque()  # (serialized export, spans in it)
        self._queued_bytes = 0
        self._waiting = asyncio.Event()
        self.counts = {"received": 0, "forwarded": 0, "dropped": 0, "failed": 0}  # spans
        self._reported_drops = 0

    async def Export(
        self, request: otlp.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> otlp.ExportTraceServiceResponse:
        spans = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        if self.offer(request.SerializeToString(), spans):
            return otlp.ExportTraceServiceResponse()
        rejected = otlp.ExportTracePartialSuccess(
            rejected_spans=spans,
            error_message="the agent could not queue these spans: its queue is full (the control plane is slow or "
            "unreachable) or the export is over the batch limit",
        )
        return otlp.ExportTraceServiceResponse(partial_success=rejected)

    def offer(self, export: bytes, spans: int) -> bool:
        """Queue one export unless the queue is full (then count its spans as dropped); never waits."""
        self.counts["received"] += spans
        size = len(export)
        if (
            len(self._queue) >= self.max_queued
            or self._queued_bytes + size > self.max_queued_bytes
            or size > self.max_batch_bytes
        ):
            self.counts["dropped"] += spans
            return False
        self._queue.append((export, spans))
        self._queued_bytes += size
        self._waiting.set()
        return True

    def take(self) -> tuple[bytes, int]:
        """Everything queued that fits one batch (at least one export): the bytes and their spans."""
        parts: list[bytes] = []
        spans, size = 0, 0
        while self._queue and (not parts or size + len(self._queue[0][0]) <= self.max_batch_bytes):
            export, n = self._queue.popleft()
            parts.append(export)
            spans += n
            size += len(export)
        self._queued_bytes -= size
        if not self._queue:
            self._waiting.clear()
        return b"".join(parts), spans

    async def forward(self, session: Client) -> None:
        """Post batches to the control plane for as long as the sidecar runs."""
        backoff = 0.0
        while True:
            await self._waiting.wait()
            batch, spans = self.take()
            if await self._post(session, batch, spans):
                backoff = 0.0
                continue
            backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)  # the queue keeps (and bounds) what comes meanwhile
            await asyncio.sleep(backoff)

    async def _post(self, session: Client, batch: bytes, spans: int) -> bool:
        try:
            async with session.post(
                self.url,
                data=batch,
                headers={"Content-Type": "application/x-protobuf"},
                ssl=self.identity.ssl(),
                server_hostname=CONTROL_PLANE_NAME,
            ) as response:
                if response.status != 200:
                    self.counts["failed"] += spans
                    log.warning(
                        "the control plane refused %d spans (HTTP %d): %s",
                        spans,
                        response.status,
                        (await response.text())[:300],
                    )
                    return response.status < 500  # a refused batch is not a reason to slow down
        except (ClientError, TimeoutError) as e:
            self.counts["failed"] += spans
            log.info("cannot forward %d spans to %s (%s); dropped", spans, self.url, e)
            return False
        self.counts["forwarded"] += spans
        self._report_drops()
        return True

    def _report_drops(self) -> None:
        dropped = self.counts["dropped"]
        if dropped > self._reported_drops:
            log.warning(
                "dropped %d spans while the queue was full (%d in all)", dropped - self._reported_drops, dropped
            )
            self._reported_drops = dropped


def add_to_server(relay: TraceRelay, server: grpc.aio.Server) -> None:
    """Serve OTLP's TraceService/Export (the one method Envoy calls) from `relay`. The messages
    come with Envoy's API protos (xds-protos); only the service binding is declared here."""
    export = grpc.unary_unary_rpc_method_handler(
        relay.Export,
        request_deserializer=otlp.ExportTraceServiceRequest.FromString,
        response_serializer=otlp.ExportTraceServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(otlp.TRACE_SERVICE, {"Export": export}),))
