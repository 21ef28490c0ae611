"""The embedded collector's store: what it keeps, for how long, what it answers, what it refuses."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lattice.api import otlp

from lattice.server.traces import (
    MAX_ATTRIBUTES,
    MAX_BODY,
    MAX_VALUE,
    TraceError,
    TraceStore,
    list_response,
    receive,
    trace_response,
)

T0 = 1_700_000_000 * 10**9  # a start time, in unix nanoseconds


def _id(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


def _kv(key: str, value) -> otlp.KeyValue:
    if isinstance(value, bool):
        return otlp.KeyValue(key=key, value=otlp.AnyValue(bool_value=value))
    if isinstance(value, int):
        return otlp.KeyValue(key=key, value=otlp.AnyValue(int_value=value))
    return otlp.KeyValue(key=key, value=otlp.AnyValue(string_value=value))


def _span(
    trace: int,
    span: int,
    parent: int = 0,
    name: str = "op",
    start_ms: int = 0,
    duration_ms: int = 10,
    status: int = 0,
    **attributes,
) -> otlp.Span:
    start = T0 + start_ms * 10**6
    return otlp.Span(
        trace_id=_id(trace, 16),
        span_id=_id(span, 8),
        parent_span_id=_id(parent, 8) if parent else b"",
        name=name,
        kind=otlp.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ms * 10**6,
        status=otlp.Status(code=status),
        attributes=[
            _kv(k.replace("_", ".", 1), v) for k, v in attributes.items()
        ],  # http_status_code: http.status_code
    )


def _request(*groups: tuple[str, list[otlp.Span]]) -> bytes:
    """Spans grouped by service, as Envoy sends them (one resource per proxy)."""
    request = otlp.ExportTraceServiceRequest()
    for service, spans in groups:
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.append(_kv("service.name", service))
        resource_spans.scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


def _three_hops(store: TraceStore, trace: int = 1, start_ms: int = 0, status: int = 0) -> None:
    """productpage -> reviews -> ratings: a SERVER span per inbound hop and a CLIENT span per call."""
    store.ingest(
        _request(
            (
                "productpage.default",
                [
                    _span(
                        trace,
                        1,
                        name="productpage:9080/*",
                        start_ms=start_ms,
                        duration_ms=30,
                        http_method="GET",
                        http_status_code="200",
                    ),
                    _span(trace, 2, 1, name="reviews:9080/*", start_ms=start_ms + 2, duration_ms=20),
                ],
            ),
            (
                "reviews.default",
                [
                    _span(trace, 3, 2, name="reviews:9080/*", start_ms=start_ms + 3, duration_ms=18),
                    _span(trace, 4, 3, name="ratings:9080/*", start_ms=start_ms + 5, duration_ms=10),
                ],
            ),
            (
                "ratings.default",
                [_span(trace, 5, 4, name="ratings:9080/*", start_ms=start_ms + 6, duration_ms=8, status=status)],
            ),
        ),
        reporter="spiffe://cluster.local/ns/default/sa/x",
    )


def test_one_trace_with_its_tree():
    store = TraceStore()
    _three_hops(store)
    (summary,) = store.recent()
    assert summary["trace_id"] == _id(1, 16).hex() and summary["span_count"] == 5
    assert (summary["root_service"], summary["root_operation"]) == ("productpage.default", "productpage:9080/*")
    assert summary["services"] == ["productpage.default", "ratings.default", "reviews.default"]
    assert summary["duration_ms"] == 30.0 and summary["start"] == "2023-11-14T22:13:20.000Z" and not summary["error"]
    trace = store.trace(summary["trace_id"])
    spans = {s["span_id"]: s for s in trace["spans"]}
    assert [s["span_id"] for s in trace["spans"]] == [_id(n, 8).hex() for n in range(1, 6)]  # by start
    assert (
        spans[_id(5, 8).hex()]["parent_span_id"] == _id(4, 8).hex() and spans[_id(1, 8).hex()]["parent_span_id"] == ""
    )
    root = spans[_id(1, 8).hex()]
    assert (
        root["http"] == {"method": "GET", "status_code": "200"}
        and root["kind"] == "SERVER"
        and root["duration_ms"] == 30.0
    )
    assert root["reporter"] == "spiffe://cluster.local/ns/default/sa/x"


def test_spans_of_one_trace_join_across_requests_and_duplicates_count_once():
    store = TraceStore()
    store.ingest(_request(("reviews.default", [_span(1, 3, 2)])))
    store.ingest(_request(("productpage.default", [_span(1, 2, 1), _span(1, 1)])))
    store.ingest(_request(("productpage.default", [_span(1, 1)])))  # sent again
    assert len(store) == 1 and store.stats()["spans"] == 3
    assert store.recent()[0]["root_service"] == "productpage.default"


def test_a_root_whose_parent_never_arrived_is_still_the_root():
    store = TraceStore()
    store.ingest(_request(("reviews.default", [_span(1, 3, 99, start_ms=1), _span(1, 4, 3, start_ms=2)])))
    assert (
        store.recent()[0]["root_operation"] == "op"
        and store.trace(_id(1, 16).hex())["spans"][0]["span_id"] == _id(3, 8).hex()
    )


def test_errors_show():
    store = TraceStore()
    _three_hops(store, 1, status=otlp.Status.STATUS_CODE_ERROR)
    store.ingest(_request(("details.default", [_span(2, 1, http_status_code="503")])))
    store.ingest(_request(("details.default", [_span(3, 1, error="true")])))
    store.ingest(_request(("details.default", [_span(4, 1, http_status_code="404")])))
    errors = {t["trace_id"]: t["error"] for t in store.recent()}
    assert errors == {_id(1, 16).hex(): True, _id(2, 16).hex(): True, _id(3, 16).hex(): True, _id(4, 16).hex(): False}


def test_recent_is_newest_first_and_limited():
    store = TraceStore()
    for n in range(1, 6):
        _three_hops(store, n, start_ms=n * 1000)
    assert [t["trace_id"] for t in store.recent(limit=3)] == [_id(n, 16).hex() for n in (5, 4, 3)]


def test_service_query_matches_the_short_and_the_namespaced_name():
    store = TraceStore()
    _three_hops(store, 1)
    store.ingest(_request(("details.default", [_span(2, 1)])))
    store.ingest(_request(("ratings.other", [_span(3, 1)])))
    ids = lambda service: sorted(t["trace_id"] for t in store.recent(service))  # noqa: E731
    assert ids("ratings") == [_id(1, 16).hex(), _id(3, 16).hex()]
    assert ids("ratings.default") == [_id(1, 16).hex()]
    assert ids("details") == [_id(2, 16).hex()]
    assert ids("rat") == [] and ids("default") == []


def test_trace_lookup_is_case_insensitive_and_unknown_is_none():
    store = TraceStore()
    _three_hops(store)
    assert store.trace(_id(1, 16).hex().upper()) is not None
    assert store.trace(_id(9, 16).hex()) is None


def test_bounded_by_traces_oldest_first():
    store = TraceStore(max_traces=3)
    for n in range(1, 6):
        store.ingest(_request(("a.default", [_span(n, 1)])))
    assert sorted(t["trace_id"] for t in store.recent()) == [_id(n, 16).hex() for n in (3, 4, 5)]
    assert store.stats()["evicted_traces"] == 2


def test_a_trace_that_grows_is_recent_again():
    store = TraceStore(max_traces=2)
    store.ingest(_request(("a.default", [_span(1, 1)])))
    store.ingest(_request(("a.default", [_span(2, 1)])))
    store.ingest(_request(("a.default", [_span(1, 2, 1)])))  # trace 1 gets a span: now the newest
    store.ingest(_request(("a.default", [_span(3, 1)])))
    assert sorted(t["trace_id"] for t in store.recent()) == [_id(1, 16).hex(), _id(3, 16).hex()]


def test_bounded_by_spans_and_bytes():
    store = TraceStore(max_spans=10)
    for n in range(1, 6):
        store.ingest(_request(("a.default", [_span(n, s) for s in range(1, 5)])))  # 4 spans each
    assert store.stats()["spans"] <= 10 and len(store) == 2
    small = TraceStore(max_bytes=5000)
    for n in range(1, 50):
        small.ingest(_request(("a.default", [_span(n, 1, big="x" * 900)])))
    assert 0 < small.stats()["bytes"] <= 5000 and len(small) < 49


def test_one_trace_cannot_take_everything():
    store = TraceStore(max_spans_per_trace=3)
    kept = store.ingest(_request(("a.default", [_span(1, s) for s in range(1, 6)])))
    assert kept == 3 and store.stats()["dropped"] == 2 and store.recent()[0]["span_count"] == 3


def test_attributes_are_bounded():
    store = TraceStore()
    many = {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 10)}
    span = _span(1, 1, name="n" * (MAX_VALUE + 50))
    span.attributes.extend(_kv(k, v) for k, v in many.items())
    span.attributes.append(_kv("late", "x" * (MAX_VALUE * 3)))
    store.ingest(_request(("a.default", [span])))
    (stored,) = store.trace(_id(1, 16).hex())["spans"]
    assert len(stored["attributes"]) == MAX_ATTRIBUTES and len(stored["name"]) == MAX_VALUE


def test_attribute_values_of_every_type_become_text():
    store = TraceStore()
    span = _span(1, 1, flag=True, count=3)
    span.attributes.append(
        otlp.KeyValue(
            key="list",
            value=otlp.AnyValue(
                array_value=otlp.ArrayValue(values=[otlp.AnyValue(string_value="a"), otlp.AnyValue(int_value=2)])
            ),
        )
    )
    store.ingest(_request(("a.default", [span])))
    attributes = store.trace(_id(1, 16).hex())["spans"][0]["attributes"]
    assert attributes == {"flag": "true", "count": "3", "list": '["a", "2"]'}


def test_a_span_without_a_service_is_filed_as_unknown():
    request = otlp.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(_span(1, 1))
    store = TraceStore()
    store.ingest(request.SerializeToString())
    assert store.recent()[0]["services"] == ["unknown"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty body"),
        (b"\xff\xff\xff garbage", "not an OTLP otlp.ExportTraceServiceRequest"),
        (
            _request(("a.default", [otlp.Span(trace_id=b"\x01" * 3, span_id=_id(1, 8))])),
            r"resource_spans\[0\].scope_spans\[0\].spans\[0\].trace_id: must be 16 bytes",
        ),
        (
            _request(("a.default", [_span(1, 1), otlp.Span(trace_id=_id(1, 16), span_id=b"\x00" * 8)])),
            r"spans\[1\].span_id: must be 8 bytes, not all zero",
        ),
        (
            _request(("a.default", [otlp.Span(trace_id=_id(1, 16), span_id=_id(1, 8), parent_span_id=b"\x01")])),
            "parent_span_id: must be empty or 8 bytes",
        ),
        (
            _request(
                (
                    "a.default",
                    [otlp.Span(trace_id=_id(1, 16), span_id=_id(1, 8), start_time_unix_nano=10, end_time_unix_nano=5)],
                )
            ),
            "ends .* before it starts",
        ),
    ],
)
def test_bad_input_is_refused_whole_and_named(body, problem):
    store = TraceStore()
    with pytest.raises(TraceError, match=problem):
        store.ingest(body)
    assert len(store) == 0 and store.stats()["spans"] == 0 and store.stats()["refused_requests"] == 1


# --- over HTTP (agent_api.py and rest.py route here) -----------------------------------------------


@pytest.fixture
async def api():
    """The three routes on a bare app: POST spans, list, one trace."""
    store = TraceStore()

    async def post(request):
        return await receive(request, store, "spiffe://cluster.local/ns/default/sa/x")

    async def listing(request):
        return list_response(store, request.query)

    async def one(request):
        return trace_response(store, request.match_info["trace_id"])

    app = web.Application()
    app.router.add_post("/traces", post)
    app.router.add_get("/traces", listing)
    app.router.add_get("/traces/{trace_id}", one)
    async with TestClient(TestServer(app)) as client:
        yield client, store


async def test_http_round_trip(api):
    client, _ = api
    body = _request(("reviews.default", [_span(1, 1), _span(1, 2, 1)]))
    response = await client.post("/traces", data=body)
    assert response.status == 200 and (await response.json()) == {"accepted": 2}
    listed = await (await client.get("/traces", params={"service": "reviews", "limit": "5"})).json()
    assert [t["trace_id"] for t in listed["items"]] == [_id(1, 16).hex()] and listed["store"]["spans"] == 2
    one = await client.get(f"/traces/{_id(1, 16).hex()}")
    assert one.status == 200 and len((await one.json())["spans"]) == 2


async def test_http_refusals_say_why(api):
    client, store = api
    bad = await client.post("/traces", data=b"\xff\xff\xff")
    assert bad.status == 400 and "not an OTLP otlp.ExportTraceServiceRequest" in (await bad.json())["error"]
    huge = await client.post("/traces", data=b"\0" * (MAX_BODY + 1))
    assert huge.status == 413 and "limit" in (await huge.json())["error"]
    for limit in ("0", "1001", "ten"):
        response = await client.get("/traces", params={"limit": limit})
        assert response.status == 400 and "limit" in (await response.json())["error"]
    malformed = await client.get("/traces/xyz")
    assert malformed.status == 400 and "32 hex digits" in (await malformed.json())["error"]
    missing = await client.get(f"/traces/{'a' * 32}")
    assert missing.status == 404 and "no trace" in (await missing.json())["error"]
    assert len(store) == 0
