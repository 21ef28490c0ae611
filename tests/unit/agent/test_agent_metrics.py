"""The agent's side of telemetry: Envoy's own counts (its admin `/stats` JSON, built here as Envoy
writes it) named as Istio's metrics in Prometheus text and filled into the live window; access log
entries (built as Envoy sends them) to tap events."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2

from lattice.agent import envoy_stats
from lattice.agent.access_log import AccessLogReceiver, Peer
from lattice.agent.live import Tap, Window
from lattice.agent.metrics import IstioMetrics
from lattice.mesh.telemetry import MetricRule, TagOverride, percentile

ME = Peer("ratings-v1", "default", "ratings", "v1", "spiffe://cluster.local/ns/default/sa/ratings", "ratings", "v1")
CALLER = "spiffe://cluster.local/ns/default/sa/reviews"
REVIEWS = "reviews-v2;default;reviews;v2;reviews;v2"
RATINGS = "ratings-v1;default;ratings;v1;ratings;v1;spiffe://cluster.local/ns/default/sa/ratings"


def inbound_entry(
    code: int = 200,
    ms: int = 12,
    principal: str = CALLER,
    peer: str = REVIEWS,
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
    assert r.source == Peer("reviews-v2", "default", "reviews", "v2", CALLER, "reviews", "v2") and r.destination == ME
    assert r.request_bytes == 100 and r.response_bytes == 100


def test_a_claimed_workload_is_believed_only_with_a_matching_certificate():
    (plain,) = run([inbound_entry(principal="")])
    assert plain.source == Peer() and not plain.mtls  # anyone can send the header
    (other,) = run([inbound_entry(peer="reviews-v2;prod;reviews;v2;reviews;v2")])
    assert (
        other.source.workload == "unknown" and other.source.principal == CALLER and other.source.namespace == "default"
    )


def test_an_outbound_entry_reads_the_callee_from_the_endpoint():
    entry = inbound_entry()
    entry.common_properties.upstream_cluster = "outbound|9080||ratings.default.svc.cluster.local"
    entry.common_properties.custom_tags["peer"] = RATINGS
    (r,) = run([entry], log_name="outbound")
    assert r.reporter == "source" and r.service == "ratings.default.svc.cluster.local"
    assert r.destination.workload == "ratings-v1" and r.destination.principal.endswith("/sa/ratings")


def labelled(text: str, metric: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(metric + "{")
    }


def inbound_tags(code: int = 200, peer: str = REVIEWS, principal: str = CALLER, **more) -> dict:
    """The tags translate/istio_stats.py gives an inbound (mTLS) series, as Envoy fills them."""
    tags = {"r": "destination", "src": peer, "sp": principal, "dst": RATINGS.rsplit(";", 1)[0] + ";" + ME.principal}
    tags |= {"svc": "ratings.default.svc.cluster.local", "tls": "mutual_tls", "code": str(code), "grpc": ""}
    return tags | {"flags": "-", "proto": "", **more}


def name(stat: str, tags: dict) -> str:
    return "lattice." + stat + "".join(f".~{k}.{v}" for k, v in tags.items())


def bins(*microseconds: int) -> list[dict]:
    """Envoy's detailed bins for these samples (two significant digits, as circllhist keeps them)."""
    out: dict[float, int] = {}
    for us in microseconds:
        width = 10 ** (len(str(us)) - 2) if us >= 10 else 1
        out[us - us % width] = out.get(us - us % width, 0) + 1
    return [
        {"lower_bound": lower, "width": 10 ** (len(str(int(lower))) - 2) or 1, "count": n} for lower, n in out.items()
    ]


def envoy_json(histograms: dict[str, list], counters: dict[str, int] | None = None) -> bytes:
    """Envoy's `/stats?format=json&histogram_buckets=detailed` holding these series."""
    details = [{"name": n, "totals": b, "intervals": [], "percentiles": []} for n, b in histograms.items()]
    stats = [{"name": n, "value": v} for n, v in (counters or {}).items()]
    return json.dumps({"stats": [*stats, {"histograms": {"supported_percentiles": [], "details": details}}]}).encode()


def test_envoy_stat_names_split_into_tags_whose_values_hold_dots():
    stat, tags = envoy_stats.split_name(name("rq", inbound_tags()))
    assert stat == "rq" and dict(tags)["svc"] == "ratings.default.svc.cluster.local" and dict(tags)["sp"] == CALLER
    assert envoy_stats.split_name("cluster.x.upstream_rq_total") is None


def test_counts_and_histograms_render_as_istio_names_them():
    reading = envoy_stats.parse(
        envoy_json(
            {
                name("rq", inbound_tags(200)): bins(3000, 30000),
                name("rq", inbound_tags(503)): bins(700000),
                name("rqb", inbound_tags(200)): bins(100, 120),
            }
        )
    )
    text = IstioMetrics().render(reading)
    assert (
        "# TYPE istio_requests_total counter" in text and "# TYPE istio_request_duration_milliseconds histogram" in text
    )
    counts = labelled(text, "istio_requests_total")
    assert sorted(counts.values()) == [1, 2]
    (ok,) = [k for k, v in counts.items() if v == 2]
    assert 'reporter="destination"' in ok and 'source_workload="reviews-v2"' in ok and 'response_code="200"' in ok
    assert 'connection_security_policy="mutual_tls"' in ok and f'source_principal="{CALLER}"' in ok
    assert 'source_canonical_service="reviews"' in ok and 'destination_canonical_revision="v1"' in ok
    assert 'grpc_response_status=""' in ok and 'request_protocol="http"' in ok
    buckets = labelled(text, "istio_request_duration_milliseconds_bucket")
    ok_buckets = {k.split('le="')[1].rstrip('"}'): v for k, v in buckets.items() if 'response_code="200"' in k}
    assert ok_buckets["1"] == 0 and ok_buckets["5"] == 1 and ok_buckets["50"] == 2 and ok_buckets["+Inf"] == 2
    assert labelled(text, "istio_request_bytes_count") and not labelled(text, "istio_response_bytes_count")


def test_a_claimed_workload_in_a_series_is_believed_only_with_a_matching_certificate():
    reading = envoy_stats.parse(
        envoy_json(
            {
                name("rq", inbound_tags(peer="reviews-v2;prod;reviews;v2;reviews;v2")): bins(1000),
                name("rq", inbound_tags(peer="other-v1;prod;other;v1;other;v1")): bins(1000),
            }
        )
    )
    (key, count), *more = labelled(IstioMetrics().render(reading), "istio_requests_total").items()
    assert not more and count == 2, "two claims not believed are one series: the caller's principal"
    assert 'source_workload="unknown"' in key and 'source_workload_namespace="default"' in key


def test_a_tcp_caller_is_named_from_its_principal_when_one_workload_holds_it():
    tcp = {k: v for k, v in inbound_tags().items() if k in ("r", "src", "sp", "dst", "svc", "tls", "flags")}
    reading = envoy_stats.parse(
        envoy_json({name("rq", inbound_tags()): bins(1000)}, {name("tcpo", tcp | {"src": "-"}): 1})
    )
    (key,) = labelled(IstioMetrics().render(reading), "istio_tcp_connections_opened_total")
    assert 'source_workload="reviews-v2"' in key and 'request_protocol="tcp"' in key and "response_code" not in key


def test_telemetry_rules_remove_labels_and_envoy_fills_upserts():
    metrics = IstioMetrics()
    upsert = TagOverride("request_path", value="request.url_path")
    metrics.set_rules(
        [
            MetricRule(
                metric=None, mode="SERVER", disabled=None, tags=(TagOverride("source_principal", remove=True), upsert)
            )
        ]
    )
    reading = envoy_stats.parse(envoy_json({name("rq", inbound_tags(ov_request_path="/ratings/0")): bins(5)}))
    (key,) = labelled(metrics.render(reading), "istio_requests_total")
    assert "source_principal" not in key and 'request_path="/ratings/0"' in key


def test_a_caller_cannot_add_a_label_by_writing_the_tag_syntax_into_a_value_it_chose():
    metrics = IstioMetrics()
    upsert = TagOverride("request_path", value="request.url_path")
    metrics.set_rules([MetricRule(metric=None, mode="SERVER", disabled=None, tags=(upsert,))])
    forged = REVIEWS + ".~ov_owner.mallory.~ov_request_path.forged"  # its peer header, as Envoy writes it in
    reading = envoy_stats.parse(
        envoy_json({name("rq", inbound_tags(peer=forged, ov_request_path="/ratings/0")): bins(5)})
    )
    (key,) = labelled(metrics.render(reading), "istio_requests_total")
    assert "owner" not in key and "mallory" not in key  # no label the Telemetry does not upsert
    assert 'request_path="/ratings/0"' in key  # and the upserted one is Envoy's, written later in the name


def test_the_window_gives_rates_percentiles_and_paths_from_what_envoy_counted_since_the_last_read():
    window = Window()
    path = {k: v for k, v in inbound_tags().items() if k in ("r", "src", "sp", "dst", "svc", "code", "grpc")}
    first = {name("rq", inbound_tags()): bins(1000, 2000)}
    window.record(envoy_stats.parse(envoy_json(first)), at=1_800_000_000)
    second = {
        name("rq", inbound_tags()): bins(1000, 2000, 3000, 4000, 100000),
        name("rq", inbound_tags(503)): bins(5000),
        name("path", path | {"method": "GET", "path": "/ratings/0"}): bins(3000, 4000, 100000),
    }
    window.record(envoy_stats.parse(envoy_json(second)), at=1_800_000_001)
    summary = window.summary(60, now=1_800_000_010)
    (peer,) = summary["peers"]
    assert peer["requests"] == 6 and peer["failures"] == 1 and peer["peer_workload"] == "reviews-v2" and peer["mtls"]
    histogram = {int(k): v for k, v in peer["latency"].items()}
    assert 2.7 <= percentile(histogram, 0.5) <= 3.3 and 90 <= percentile(histogram, 0.99) <= 110
    (row,) = summary["paths"]
    assert row["path"] == "/ratings/0" and row["requests"] == 3 and 2.7 <= row["best_ms"] <= 3.3
    assert window.summary(60, now=1_800_000_100)["peers"] == []  # out of the window


def test_a_grpc_error_answered_with_http_200_is_a_failure_in_top_as_in_stat():
    """`lattice top`'s path series carry `~proto` as Istio's do: a gRPC status counts only for a gRPC
    request (Envoy's `%GRPC_STATUS_NUMBER%` turns a plain HTTP 200 into 2, UNKNOWN)."""
    window = Window()
    window.record(envoy_stats.parse(envoy_json({})), at=1_800_000_000)
    grpc, plain = {"proto": "application/grpc", "grpc": "14"}, {"proto": "application/json", "grpc": "2"}
    path = {k: v for k, v in inbound_tags().items() if k in ("r", "src", "sp", "dst", "svc", "code")}
    read = {
        name("rq", inbound_tags(**grpc)): bins(1000, 2000),
        name("rq", inbound_tags(**plain)): bins(1000),
        name("path", path | grpc | {"method": "POST", "path": "/Ratings/Get"}): bins(1000, 2000),
        name("path", path | plain | {"method": "GET", "path": "/ratings/0"}): bins(1000),
    }
    window.record(envoy_stats.parse(envoy_json(read)), at=1_800_000_001)
    summary = window.summary(60, now=1_800_000_010)
    (peer,) = summary["peers"]
    assert peer["requests"] == 3 and peer["failures"] == 2  # what `lattice stat` shows
    rows = {row["path"]: row for row in summary["paths"]}
    assert rows["/Ratings/Get"]["failures"] == 2 and rows["/ratings/0"]["failures"] == 0  # and `lattice top`


def test_the_window_in_steps_puts_each_second_in_its_step_for_the_consoles_charts():
    window = Window()
    window.record(envoy_stats.parse(envoy_json({name("rq", inbound_tags()): bins(1000, 2000)})), at=1_800_000_000)
    later = {name("rq", inbound_tags()): bins(1000, 2000, 3000)}
    window.record(envoy_stats.parse(envoy_json(later)), at=1_800_000_007)
    steps = window.series(20, 5, now=1_800_000_010)
    assert [s["start"] for s in steps] == [1_799_999_990, 1_799_999_995, 1_800_000_000, 1_800_000_005]
    assert [sum(p["requests"] for p in s["peers"]) for s in steps] == [0, 0, 2, 1]
    assert steps[3]["peers"][0]["peer_workload"] == "reviews-v2" and steps[3]["seconds"] == 5


def test_tap_hands_watchers_events_without_query_strings():
    async def watch():
        tap = Tap()
        run([inbound_entry()], consumers=[tap.publish])  # nobody watching: nothing kept
        queue = tap.watch()
        run([inbound_entry(path="/secret?token=abc")], consumers=[tap.publish])
        return await asyncio.wait_for(queue.get(), 5)

    event = asyncio.run(watch())
    assert event["path"] == "/secret" and "token" not in str(event) and event["source"]["workload"] == "reviews-v2"


def test_the_scrape_keeps_envoys_own_stats_but_not_the_raw_series_istios_are_named_from():
    from lattice.agent.metrics import envoy_text

    text = (
        "# TYPE envoy_lattice_rq histogram\nenvoy_lattice_rq_count{_r=\"source\"} 1\n"
        "# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"
    )
    assert envoy_text(text) == "# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"


def test_the_agent_reads_its_metric_rules_from_the_listener_it_relays():
    """The control plane puts the workload's Telemetry metric rules in its inbound listener's
    metadata (translate/telemetry.py); the agent reads them from the Listener bytes it relays."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from lattice.agent.observer import Observer
    from lattice.translate import LISTENER
    from lattice.translate.agent_names import RULES_METADATA

    rule = {"metric": None, "mode": "SERVER", "disabled": None, "tags": [{"name": "source_principal", "remove": True}]}
    listener = listener_pb2.Listener(name="virtualInbound")
    config = {"rules": [rule], "service": "reviews.default.svc.cluster.local"}
    listener.metadata.filter_metadata[RULES_METADATA].update({"config": json.dumps(config)})
    response = discovery_pb2.DiscoveryResponse(type_url=LISTENER)
    response.resources.add().Pack(listener)
    observer = Observer(Peer(workload="reviews-v1"), "unknown")
    observer.on_accept(LISTENER, response)
    removed = TagOverride("source_principal", remove=True)
    assert observer.metrics.telemetry.metrics == (
        MetricRule(metric=None, mode="SERVER", disabled=None, tags=(removed,)),
    )
    assert observer.receiver.service == "reviews.default.svc.cluster.local"


def test_the_request_protocol_is_grpc_exactly_when_the_content_type_says_grpc():
    """`~proto` holds the content-type's first 16 bytes as Envoy truncates them (translate/istio_stats.py)."""
    series = {
        "application/grpc": ("grpc", "14"),  # application/grpc, +proto, -web: all begin so
        "application/json": ("http", ""),
        "-": ("http", ""),  # no content-type
    }
    reading = envoy_stats.parse(
        envoy_json({name("rq", inbound_tags(200, proto=proto, grpc="14")): bins(1000) for proto in series})
    )
    rendered = labelled(IstioMetrics().render(reading), "istio_requests_total")
    assert len(rendered) == 2, "application/json and no content-type are one http series"
    for protocol, status in series.values():
        assert any(f'request_protocol="{protocol}"' in k and f'grpc_response_status="{status}"' in k for k in rendered)


def test_a_content_type_imitating_the_tag_syntax_does_not_replace_a_later_tag():
    """A caller chooses its content-type; `~proto` comes before the tags Envoy fills itself."""
    tags = inbound_tags(200)
    ordered = {"r": tags.pop("r"), "proto": "x.~code.599", **tags}
    reading = envoy_stats.parse(envoy_json({name("rq", ordered): bins(1000)}))
    (key,) = labelled(IstioMetrics().render(reading), "istio_requests_total")
    assert 'response_code="200"' in key and 'request_protocol="http"' in key
