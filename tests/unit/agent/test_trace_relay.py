"""The agent's trace relay: Envoy's exports queue without waiting, batch, and reach the control
plane; a full queue drops (and counts) rather than holding Envoy up."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from lattice.api import otlp

from lattice.agent.traces import TraceRelay
from lattice.agent.web_client import Client
from lattice.server import agent_api, limits
from lattice.server.traces import TraceStore, receive


class _Identity:
    """What the relay asks of the workload identity: a client TLS context (none over plain HTTP)."""

    def ssl(self):
        return False


def _export(service: str, *span_ids: int, trace: int = 1) -> otlp.ExportTraceServiceRequest:
    request = otlp.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    scope = resource_spans.scope_spans.add()
    for n in span_ids:
        scope.spans.append(
            otlp.Span(
                trace_id=trace.to_bytes(16, "big"),
                span_id=n.to_bytes(8, "big"),
                name="op",
                start_time_unix_nano=1,
                end_time_unix_nano=2,
            )
        )
    return request


def test_a_batch_is_the_queued_exports_joined():
    relay = TraceRelay("https://cp", _Identity())
    assert relay.offer(_export("a.default", 1, 2).SerializeToString(), 2)
    assert relay.offer(_export("b.default", 3).SerializeToString(), 1)
    batch, spans = relay.take()
    merged = otlp.ExportTraceServiceRequest.FromString(batch)
    assert spans == 3 and [rs.resource.attributes[0].value.string_value for rs in merged.resource_spans] == [
        "a.default",
        "b.default",
    ]
    assert relay.take() == (b"", 0)


def test_batches_stay_under_the_size_limit():
    one = _export("a.default", 1).SerializeToString()
    relay = TraceRelay("https://cp", _Identity(), max_batch_bytes=len(one) * 2)
    for _ in range(5):
        relay.offer(one, 1)
    sizes = []
    while True:
        batch, spans = relay.take()
        if not spans:
            break
        sizes.append(spans)
        assert len(batch) <= len(one) * 2
    assert sizes == [2, 2, 1]


def test_a_full_queue_drops_and_counts():
    one = _export("a.default", 1).SerializeToString()
    relay = TraceRelay("https://cp", _Identity(), max_queued=2)
    assert [relay.offer(one, 1) for _ in range(4)] == [True, True, False, False]
    assert relay.counts["dropped"] == 2 and relay.counts["received"] == 4
    by_bytes = TraceRelay("https://cp", _Identity(), max_queued_bytes=len(one) + 1)
    assert [by_bytes.offer(one, 1) for _ in range(2)] == [True, False]
    too_big = TraceRelay("https://cp", _Identity(), max_batch_bytes=len(one) - 1)
    assert not too_big.offer(one, 1)


async def test_export_answers_at_once_and_reports_rejected_spans():
    relay = TraceRelay("https://cp", _Identity(), max_queued=1)
    accepted = await relay.Export(_export("a.default", 1, 2), None)
    assert not accepted.HasField("partial_success")
    rejected = await relay.Export(_export("a.default", 3), None)
    assert rejected.partial_success.rejected_spans == 1 and "queue is full" in rejected.partial_success.error_message


@pytest.fixture
async def collector():
    """A control plane's trace route over plain HTTP, in an app set up as the agents' API is (its
    body limit and slow-body middleware): its URL, the store, and the statuses it answered."""
    store, answered = TraceStore(), []

    @limits.streams_body
    async def traces_in(request: web.Request) -> web.Response:
        response = await receive(request, store, "spiffe://cluster.local/ns/default/sa/a")
        answered.append(response.status)
        return response

    app = web.Application(client_max_size=agent_api.MAX_BODY, middlewares=[limits.bounded_body])
    app.router.add_post("/agent/v1/traces", traces_in)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", store, answered
    await runner.cleanup()


async def _until(condition, timeout: float = 15.0) -> None:
    """Until `condition()` holds (a generous bound: a loaded machine slows the relay's posts)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the relay's counters have no event to wait on)
            await asyncio.sleep(0.02)


async def test_forward_delivers_to_the_control_plane(collector):
    url, store, answered = collector
    relay = TraceRelay(url, _Identity())
    async with Client() as session:
        task = asyncio.create_task(relay.forward(session), name="trace-relay")
        try:
            await relay.Export(_export("a.default", 1, 2), None)
            await relay.Export(_export("b.default", 3, trace=2), None)
            await _until(lambda: store.stats()["spans"] == 3 and relay.counts["forwarded"] == 3)
        finally:
            task.cancel()
    assert store.stats()["spans"] == 3 and len(store) == 2 and relay.counts["forwarded"] == 3
    assert set(answered) == {200}


async def test_a_batch_larger_than_other_agent_requests_arrives_whole(collector):
    """Spans are bounded by the trace route's own limit, not the agents' API's 64 KiB for JSON."""
    url, store, answered = collector
    relay = TraceRelay(url, _Identity())
    big = _export("a.default", *range(1, 501))
    for span in big.resource_spans[0].scope_spans[0].spans:
        span.name = "op-" + "x" * 300
    assert big.ByteSize() > 2 * agent_api.MAX_BODY
    async with Client() as session:
        task = asyncio.create_task(relay.forward(session), name="trace-relay")
        try:
            await relay.Export(big, None)
            await _until(lambda: answered)
        finally:
            task.cancel()
    assert answered == [200] and store.stats()["spans"] == 500


async def test_an_unreachable_control_plane_costs_the_batch_not_the_relay():
    relay = TraceRelay("http://127.0.0.1:9", _Identity())  # nothing listens on the discard port
    async with Client(timeout=1) as session:
        task = asyncio.create_task(relay.forward(session), name="trace-relay")
        try:
            await relay.Export(_export("a.default", 1), None)
            await _until(lambda: relay.counts["failed"])
            assert relay.counts["failed"] == 1 and not task.done()
            await relay.Export(_export("a.default", 2), None)  # still queued and bounded meanwhile
            assert relay.counts["dropped"] == 0
        finally:
            task.cancel()
