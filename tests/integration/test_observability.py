"""Metrics, `lattice stat/top/tap/edges`, with real sidecars: what a user scraping the agents or
running the CLI sees after known traffic.

The test process plays the client's app: it sends requests through the client's sidecar (HTTP
proxy) and over an `--upstream` port (TCP). Both sidecars count every request once, each from its
own side: reporter="source" at the client, reporter="destination" at the server.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness import BACKEND, LATTICE, Workload, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("observability")]
APPS = Path(__file__).parents[1] / "apps"
SERVER, CLIENT, TCP = "obs-server", "obs-client", "obs-tcp"
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text format samples as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        labels = dict(LABEL.findall(match["labels"] or ""))
        out.append((match["name"], labels, float(match["value"])))
    return out


def scrape(w: Workload) -> list[tuple[str, dict, float]]:
    with urllib.request.urlopen(f"http://{w.address}:{w.info['agent_port']}/stats/prometheus", timeout=5) as response:
        return parse_prometheus(response.read().decode())


def value(samples, name: str, **labels) -> float:
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == str(x) for k, x in labels.items()))


@pytest.fixture(scope="module")
def mesh(shared_plane, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tcp_port = s.getsockname()[1]
    workloads = [
        Workload(shared_plane, SERVER, command=BACKEND),
        Workload(
            shared_plane,
            TCP,
            command=[sys.executable, str(APPS / "tcp_echo.py")],
            extra=("--port", "9000", "--protocol", "tcp"),
        ),
        Workload(shared_plane, CLIENT, command=BACKEND, extra=("--upstream", f"{TCP}:9000={tcp_port}")),
    ]
    with running(shared_plane, workloads) as (server, tcp, client):
        yield {"plane": shared_plane, "server": server, "tcp": tcp, "client": client, "tcp_port": tcp_port}


def _send(client: Workload, n_ok: int, n_not_found: int, path: str) -> None:
    for _ in range(n_ok):
        assert client.call(f"http://{SERVER}{path}")[0] == 200
    for _ in range(n_not_found):
        assert client.call(f"http://{SERVER}{path}?status=404")[0] == 404


def test_scrapes_of_both_sidecars_count_exactly_the_requests_sent(mesh):
    client, server = mesh["client"], mesh["server"]
    _send(client, 7, 3, "/counted")
    principal = {
        "source_principal": f"spiffe://cluster.local/ns/default/sa/{CLIENT}",
        "destination_principal": f"spiffe://cluster.local/ns/default/sa/{SERVER}",
    }
    ends = {
        "source_workload": f"{CLIENT}-v1",
        "source_app": CLIENT,
        "source_version": "v1",
        "destination_workload": f"{SERVER}-v1",
        "destination_app": SERVER,
        "destination_service": f"{SERVER}.default.svc.cluster.local",
        "destination_service_name": SERVER,
        "destination_service_namespace": "default",
        "request_protocol": "http",
        **principal,
    }
    for w, reporter, security in ((client, "source", "unknown"), (server, "destination", "mutual_tls")):

        def counted(w=w, reporter=reporter):
            samples = scrape(w)
            return samples if value(samples, "istio_requests_total", reporter=reporter) >= 10 else None

        samples = wait_for(counted, 10, what=f"{reporter} sidecar to count 10 requests")
        assert (
            value(
                samples,
                "istio_requests_total",
                reporter=reporter,
                response_code=200,
                connection_security_policy=security,
                **ends,
            )
            == 7
        )
        assert (
            value(
                samples,
                "istio_requests_total",
                reporter=reporter,
                response_code=404,
                connection_security_policy=security,
                **ends,
            )
            == 3
        )
        assert value(samples, "istio_requests_total", reporter=reporter) == 10  # nothing else, nothing twice
        # The histogram is whole: cumulative buckets never decrease and +Inf holds every request.
        for code, n in (("200", 7), ("404", 3)):
            buckets = [
                (got["le"], v)
                for name, got, v in samples
                if name == "istio_request_duration_milliseconds_bucket"
                and got["reporter"] == reporter
                and got["response_code"] == code
            ]
            counts = [v for _, v in buckets]
            assert counts == sorted(counts) and dict(buckets)["+Inf"] == n
            assert (
                value(samples, "istio_request_duration_milliseconds_count", reporter=reporter, response_code=code) == n
            )
            assert value(samples, "istio_request_bytes_count", reporter=reporter, response_code=code) == n
            assert value(samples, "istio_response_bytes_sum", reporter=reporter, response_code=code) > 0
        assert any(name.startswith("envoy_") for name, _, _ in samples), "Envoy's own statistics are in the same scrape"
        assert value(samples, "lattice_agent_access_log_entries_total") >= 10


def test_tcp_connections_and_bytes_are_counted_on_both_sides(mesh):
    client, tcp = mesh["client"], mesh["tcp"]
    sent = b"hello over tcp\n"
    with socket.create_connection((client.address, mesh["tcp_port"]), timeout=5) as conn:
        conn.sendall(sent)
        reply = conn.makefile("rb").readline()
    assert reply == f"{TCP}-v1 ".encode() + sent
    for w, reporter in ((client, "source"), (tcp, "destination")):
        samples = wait_for(
            lambda w=w, reporter=reporter: _when(
                scrape(w), lambda s: value(s, "istio_tcp_connections_closed_total", reporter=reporter) >= 1
            ),
            10,
            what=f"{reporter} to count the closed connection",
        )
        assert (
            value(
                samples,
                "istio_tcp_connections_opened_total",
                reporter=reporter,
                destination_workload=f"{TCP}-v1",
                request_protocol="tcp",
            )
            == 1
        )
        assert (
            value(samples, "istio_tcp_connections_closed_total", reporter=reporter, destination_workload=f"{TCP}-v1")
            == 1
        )
        assert value(samples, "istio_tcp_received_bytes_total", reporter=reporter) == len(sent)
        assert value(samples, "istio_tcp_sent_bytes_total", reporter=reporter) == len(reply)
    assert (
        value(
            scrape(tcp),
            "istio_tcp_connections_opened_total",
            reporter="destination",
            connection_security_policy="mutual_tls",
            source_principal=f"spiffe://cluster.local/ns/default/sa/{CLIENT}",
        )
        == 1
    )


def _when(answer, ready):
    """`answer` once `ready(answer)` holds, else None (for wait_for)."""
    return answer if ready(answer) else None


def _cli(plane, *args: str) -> dict:
    return json.loads(plane.cli(*args, "-o", "json").stdout)


def test_stat_matches_the_traffic_sent(mesh):
    plane, client = mesh["plane"], mesh["client"]
    before = _cli(plane, "stat", SERVER, "--window", "300s")["items"]
    already = before[0]["requests"] if before else 0
    # Other tests of this module may have sent failures within the window: count what was good.
    good = round(already * (before[0]["success_rate"] or 0)) if before else 0  # no rate without requests
    _send(client, 8, 2, "/stat")
    answer = wait_for(
        lambda: _when(
            _cli(plane, "stat", SERVER, "--window", "300s"),
            lambda a: a["items"] and a["items"][0]["requests"] >= already + 10,
        ),
        10,
        what="stat to see the requests",
    )
    row = answer["items"][0]
    assert row[("workload")] == f"{SERVER}-v1" and row["requests"] == already + 10
    assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    # 404 is not a failure (Linkerd and Istio count 5xx): every request sent here succeeded.
    assert row["success_rate"] == round((good + 10) / (already + 10), 4)
    assert _cli(plane, "stat", SERVER, "--from", CLIENT, "--window", "300s")["items"][0]["requests"] == already + 10
    assert _cli(plane, "stat", SERVER, "--from", "nobody", "--window", "300s")["items"][0]["requests"] == 0
    client.call(
        f"http://{SERVER}/stat?status=503"
    )  # retried twice by the client's sidecar (Istio's default): 3 failures served
    failing = wait_for(
        lambda: _when(
            _cli(plane, "stat", SERVER, "--window", "300s")["items"][0], lambda a: a["requests"] >= already + 13
        ),
        10,
        what="the failures",
    )
    assert failing["requests"] == already + 13 and failing["success_rate"] == round((good + 10) / (already + 13), 4)


def test_tap_shows_a_request_sent_after_it_started(mesh):
    plane, client = mesh["plane"], mesh["client"]
    path = f"/tapped-{uuid.uuid4().hex[:8]}"
    tap = subprocess.Popen(
        [LATTICE, "tap", SERVER, "--path", path, "--limit", "1", "--duration", "20s", "-o", "json"],
        env=plane.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "tapping" in tap.stderr.readline()  # connected to the sidecar's stream

        def send_both() -> bool:
            # Until the tap has its one request: the sidecar may start tapping a moment after it
            # says so. /untapped goes first each time: --path must skip it for the tapped one.
            client.call(f"http://{SERVER}/untapped")
            assert client.call(f"http://{SERVER}{path}?status=201")[0] == 201
            return tap.poll() is not None

        wait_for(send_both, 20, interval=0.1, what="tap to show the tapped request and exit (--limit 1)")
        out, err = tap.communicate(timeout=5)
    finally:
        tap.kill()
    event = json.loads(out.strip().splitlines()[-1])
    assert event["path"] == path and event["method"] == "GET" and event["status"] == 201
    assert (
        event["source"]["principal"] == f"spiffe://cluster.local/ns/default/sa/{CLIENT}"
        and event["source"]["workload"] == f"{CLIENT}-v1"
    )
    assert event["destination"]["workload"] == f"{SERVER}-v1" and event["mtls"] is True and event["duration_ms"] > 0


def test_top_lists_the_busiest_paths(mesh):
    plane, client = mesh["plane"], mesh["client"]
    _send(client, 5, 0, "/busiest")
    _send(client, 1, 0, "/quiet")
    rows = wait_for(
        lambda: _when(
            _cli(plane, "top", SERVER, "--once", "--window", "300s")["items"],
            lambda r: any(x["path"] == "/quiet" for x in r),
        ),
        10,
        what="top to list /quiet",
    )
    by_path = {r["path"]: r for r in rows if r["direction"] == "inbound"}
    assert by_path["/busiest"]["requests"] >= 5 and by_path["/busiest"]["source"] == f"{CLIENT}-v1"
    assert rows.index(next(r for r in rows if r["path"] == "/busiest")) < rows.index(
        next(r for r in rows if r["path"] == "/quiet")
    )


def test_edges_show_who_calls_whom_and_that_it_is_mutual_tls(mesh):
    plane, client = mesh["plane"], mesh["client"]
    _send(client, 1, 0, "/edge")
    edges = wait_for(
        lambda: [
            e
            for e in _cli(plane, "edges", "--window", "300s")["items"]
            if e["source"] == f"{CLIENT}-v1" and e["destination"] == f"{SERVER}-v1"
        ],
        10,
        what="the edge",
    )
    edge = edges[0]
    assert edge["secured"] is True
    assert edge["source_principal"] == f"spiffe://cluster.local/ns/default/sa/{CLIENT}"
    assert edge["destination_principal"] == f"spiffe://cluster.local/ns/default/sa/{SERVER}"


GRAFANA = Path(__file__).parents[2] / "grafana"


def _series(samples) -> dict[str, set[str]]:
    """Every metric name in a scrape, with the union of its label names."""
    out: dict[str, set[str]] = {}
    for name, labels, _ in samples:
        out.setdefault(name, set()).update(labels)
    return out


def test_every_dashboard_query_names_only_what_a_real_scrape_contains(mesh):
    from promql import queries, selectors, variable_queries

    plane, client = mesh["plane"], mesh["client"]
    _send(client, 2, 1, "/dashboards")
    with socket.create_connection((client.address, mesh["tcp_port"]), timeout=5) as conn:  # TCP series too
        conn.sendall(b"x\n")
        conn.makefile("rb").readline()
    scraped: dict[str, set[str]] = {}
    for w in (client, mesh["server"], mesh["tcp"]):
        samples = wait_for(
            lambda w=w: _when(scrape(w), lambda s: any(n.startswith("istio_") for n, _, _ in s)),
            10,
            what="Istio metrics",
        )
        for name, labels in _series(samples).items():
            scraped.setdefault(name, set()).update(labels)
    wait_for(
        lambda: "istio_tcp_connections_closed_total" in _series(scrape(mesh["tcp"])),
        10,
        what="the TCP connection's close",
    )
    scraped.setdefault("istio_tcp_connections_closed_total", set()).update(
        _series(scrape(mesh["tcp"]))["istio_tcp_connections_closed_total"]
    )
    with urllib.request.urlopen(f"{plane.api}/metrics", timeout=5) as response:
        text = response.read().decode()
    for name, labels in _series(parse_prometheus(text)).items():
        scraped.setdefault(name, set()).update(labels)
    # A counter nothing has happened to yet (NACKs, refused CSRs) has no series, but the scrape
    # declares it; its labels are the ones the control plane gives it.
    from lattice.server.metrics import exported_series

    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared = line.split()[2]
            for name, labels in exported_series().items():
                if name == declared or name.rsplit("_", 1)[0] == declared:
                    scraped.setdefault(name, set()).update(labels)
    problems = []
    for path in sorted(GRAFANA.glob("*.json")):
        dashboard = json.loads(path.read_text())
        asked = [(expr, set()) for expr in queries(dashboard)]
        asked += [
            (selector, {label} if label else set()) for selector, label in variable_queries(dashboard) if selector
        ]  # label_values(selector, label)
        for expr, extra in asked:
            for metric, labels in selectors(expr):
                labels = set(labels) | extra
                if metric is None:
                    continue
                if metric not in scraped:
                    problems.append(f"{path.name}: {metric} is not in any scrape ({expr})")
                elif missing := set(labels) - scraped[metric] - {"le"}:
                    problems.append(f"{path.name}: {metric} has no label {sorted(missing)} ({expr})")
    assert not problems, "\n".join(problems)


def test_a_scrape_keeps_istios_short_list_of_envoy_stats(mesh):
    """Istio's default inclusion list: Envoy's server, cluster and listener managers, its xDS cluster
    and the inbound listener's stats stay; no per-service upstream cluster stats (some 200 series for
    each service a sidecar knows), unless a workload asks for them (--stats-inclusion-prefixes)."""
    client = mesh["client"]
    with urllib.request.urlopen(f"http://{client.address}:{client.info['agent_port']}/stats/prometheus") as response:
        text = response.read().decode()
    names = {name for name, _, _ in parse_prometheus(text)}
    assert "envoy_server_live" in names and "envoy_cluster_manager_active_clusters" in names
    assert not [line for line in text.splitlines() if 'envoy_cluster_name="outbound|' in line]
    assert not [n for n in names if n.startswith("envoy_lattice_")], "Envoy's raw series are named as Istio's"


def test_a_scrape_is_gzipped_for_a_scraper_that_accepts_it(mesh):
    """Prometheus asks with Accept-Encoding: gzip: the sidecar answers compressed, the same series
    as a plain scrape (Istio's labels repeat on every histogram bucket; compressed they cost little)."""
    client = mesh["client"]
    url = f"http://{client.address}:{client.info['agent_port']}/stats/prometheus"
    with urllib.request.urlopen(url) as response:
        assert response.headers.get("Content-Encoding") is None
        plain = response.read().decode()
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request) as response:
        assert response.headers.get("Content-Encoding") == "gzip"
        compressed = response.read()
    text = gzip.decompress(compressed).decode()
    istio = {(n, tuple(sorted(labels.items()))) for n, labels, _ in parse_prometheus(text) if n.startswith("istio_")}
    assert istio and istio == {
        (n, tuple(sorted(labels.items()))) for n, labels, _ in parse_prometheus(plain) if n.startswith("istio_")
    }
    assert len(compressed) < len(text) / 5
