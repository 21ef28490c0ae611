"""The agent's side of telemetry, from Envoy access log entries (built as Envoy sends them) to
Istio's metrics in Prometheus text, the live window and tap events."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2

from lattice.agent.access_log import AccessLogReceiver, Peer
from lattice.agent.live import Tap, Window
from lattice.agent.metrics import IstioMetrics
from lattice.mesh.telemetry import MetricRule, TagOverride, percentile

ME = Peer("ratings-v1", "default", "ratings", "v1", "spiffe://cluster.local/ns/default/sa/ratings")
CALLER = "spiffe://cluster.local/ns/default/sa/reviews"


def inbound_entry(
    code: int = 200,
    ms: int = 12,
    principal: str = CALLER,
    peer: str = "reviews-v2;default;reviews;v2",
    path: str = "/ratings/0?x=1",
) -> al.HTTPAccessLogEntry:
    entry = al.HTTPAccessLogEntry()
    c = entry.common_properties
    c.start_time.seconds = 1_800_000_000
    c.time_to_last_downstream_tx_byte.nanos = ms * 1_000_000
    c.upstream_cluster = "inbound|9080||"
    if principal:
        c.tls_properties.tls_version = al.TLSProperties.TLSv1_3
        c.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=principal)
    if peer:
        c.metadata.filter_metadata["lattice.peer"].update({"peer": peer})
    entry.request.request_method = 1  # GET
    entry.request.path = path
    entry.request.authority = "ratings:9080"
    entry.request.request_headers_bytes, entry.request.request_body_bytes = 100, 0
    entry.response.response_code.value = code
    entry.response.response_headers_bytes, entry.response.response_body_bytes = 80, 20
    return entry


def run(entries, log_name: str = "inbound", consumers=None) -> list:
    seen = []
    receiver = AccessLogReceiver(ME, "ratings.default.svc.cluster.local", [seen.append, *(consumers or [])])
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = log_name
    message.http_logs.log_entry.extend(entries)
    receiver.process(message, outbound=log_name != "inbound")
    return seen


def test_the_stream_is_counted_on_a_worker_thread_below_envoys_priority():
    seen = []
    receiver = AccessLogReceiver(
        ME,
        "ratings.default.svc.cluster.local",
        [
            lambda r: seen.append(
                (r, threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            )
        ],
    )
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = "inbound"
    message.http_logs.log_entry.append(inbound_entry())

    async def stream():
        yield message

    asyncio.run(receiver.StreamAccessLogs(stream(), None))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    ((request, thread, niceness),) = seen
    assert request.code == 200 and thread == "access-log" and niceness >= os.getpriority(os.PRIO_PROCESS, 0)


def test_an_inbound_entry_names_both_ends():
    (r,) = run([inbound_entry()])
    assert r.reporter == "destination" and r.mtls and r.code == 200 and r.duration_ms == 12 and r.path == "/ratings/0"
    assert r.source == Peer("reviews-v2", "default", "reviews", "v2", CALLER) and r.destination == ME
    assert r.request_bytes == 100 and r.response_bytes == 100


def test_a_claimed_workload_is_believed_only_with_a_matching_certificate():
    (plain,) = run([inbound_entry(principal="")])
    assert plain.source == Peer() and not plain.mtls  # anyone can send the header
    (other,) = run([inbound_entry(peer="reviews-v2;prod;reviews;v2")])
    assert (
        other.source.workload == "unknown" and other.source.principal == CALLER and other.source.namespace == "default"
    )


def test_an_outbound_entry_reads_the_callee_from_the_endpoint():
    entry = inbound_entry()
    entry.common_properties.upstream_cluster = "outbound|9080||ratings.default.svc.cluster.local"
    entry.common_properties.custom_tags["peer"] = (
        "ratings-v1;default;ratings;v1;spiffe://cluster.local/ns/default/sa/ratings"
    )
    (r,) = run([entry], log_name="outbound")
    assert r.reporter == "source" and r.service == "ratings.default.svc.cluster.local"
    assert r.destination.workload == "ratings-v1" and r.destination.principal.endswith("/sa/ratings")


def labelled(text: str, metric: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(metric + "{")
    }


def test_counts_and_histograms_render_as_istio_names_them():
    metrics = IstioMetrics()
    run([inbound_entry(200, 3), inbound_entry(200, 30), inbound_entry(503, 700)], consumers=[metrics.observe])
    text = metrics.render()
    assert (
        "# TYPE istio_requests_total counter" in text and "# TYPE istio_request_duration_milliseconds histogram" in text
    )
    counts = labelled(text, "istio_requests_total")
    assert sorted(counts.values()) == [1, 2]
    (ok,) = [k for k, v in counts.items() if v == 2]
    assert 'reporter="destination"' in ok and 'source_workload="reviews-v2"' in ok and 'response_code="200"' in ok
    assert 'connection_security_policy="mutual_tls"' in ok and f'source_principal="{CALLER}"' in ok
    buckets = labelled(text, "istio_request_duration_milliseconds_bucket")
    ok_buckets = {k.split('le="')[1].rstrip('"}'): v for k, v in buckets.items() if 'response_code="200"' in k}
    assert ok_buckets["1"] == 0 and ok_buckets["5"] == 1 and ok_buckets["50"] == 2 and ok_buckets["+Inf"] == 2


def test_telemetry_rules_switch_metrics_off_and_relabel():
    metrics = IstioMetrics()
    metrics.set_rules(
        [
            MetricRule(metric="istio_request_bytes", disabled=True),
            MetricRule(
                metric=None,
                mode="SERVER",
                disabled=None,
                tags=(TagOverride("source_principal", remove=True), TagOverride("request_path", value="request.path")),
            ),
        ]
    )
    run([inbound_entry()], consumers=[metrics.observe])
    text = metrics.render()
    assert "istio_request_bytes" not in text and "istio_response_bytes_count" in text
    (key,) = labelled(text, "istio_requests_total")
    assert "source_principal" not in key and 'request_path="/ratings/0"' in key


def test_the_window_gives_rates_percentiles_and_paths():
    window = Window()
    entries = [inbound_entry(200, ms) for ms in (1, 2, 3, 4, 100)] + [inbound_entry(503, 5, path="/fail")]
    run(entries, consumers=[window.observe])
    summary = window.summary(60, now=1_800_000_010)
    (peer,) = summary["peers"]
    assert peer["requests"] == 6 and peer["failures"] == 1 and peer["peer_workload"] == "reviews-v2" and peer["mtls"]
    histogram = {int(k): v for k, v in peer["latency"].items()}
    assert 2.7 <= percentile(histogram, 0.5) <= 3.3 and 90 <= percentile(histogram, 0.99) <= 110
    paths = {p["path"]: p for p in summary["paths"]}
    assert paths["/ratings/0"]["requests"] == 5 and paths["/fail"]["failures"] == 1
    assert window.summary(60, now=1_800_000_100)["peers"] == []  # out of the window


def test_tap_hands_watchers_events_without_query_strings():
    async def watch():
        tap = Tap()
        run([inbound_entry()], consumers=[tap.publish])  # nobody watching: nothing kept
        queue = tap.watch()
        run([inbound_entry(path="/secret?token=abc")], consumers=[tap.publish])
        return await asyncio.wait_for(queue.get(), 5)

    event = asyncio.run(watch())
    assert event["path"] == "/secret" and "token" not in str(event) and event["source"]["workload"] == "reviews-v2"
