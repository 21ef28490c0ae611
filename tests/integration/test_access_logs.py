"""Access logs with real sidecars: MeshConfig `accessLogFile: /dev/stdout` with
`accessLogEncoding: JSON` gives JSON lines with Istio's default fields on `lattice run`'s output;
Telemetry resources turn them off or filter them, as an Istio user would do it; a file log left to
Istio's defaults writes Istio's TEXT format (observability/logs/access-log's line)."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from harness import BACKEND, ControlPlane, Workload, drained, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("access-logs")]
FIELDS = {
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    home = tmp_path_factory.mktemp("logs") / "home"
    home.mkdir()
    config = home / "mesh.yaml"
    config.write_text(
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"
        "extensionProviders:\n- name: text-log\n  envoyFileAccessLog: {path: /dev/stdout}\n"
    )
    plane = ControlPlane(home, "--mesh-config", str(config)).start()
    try:
        with running(
            plane, [Workload(plane, "logged", command=BACKEND), Workload(plane, "logger", command=BACKEND)]
        ) as (server, client):
            yield plane, server, client
    finally:
        plane.stop()


def _lines(w: Workload, marker: str) -> list[dict]:
    out = []
    for line in w.log.read_text(errors="replace").splitlines():
        if marker in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


def _telemetry(spec: dict) -> str:
    return json.dumps(
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": "logs", "namespace": "default"},
            "spec": spec,
        }
    )


def test_both_sidecars_write_istios_json_fields(mesh):
    plane, server, client = mesh
    path = f"/logged-{uuid.uuid4().hex[:8]}"
    assert client.call(f"http://logged{path}", headers={"user-agent": "log-test"})[0] == 200
    for w, cluster in ((client, "outbound|8080||logged.default.svc.cluster.local"), (server, "inbound|")):
        entries = wait_for(lambda w=w: _lines(w, path), 10, what=f"{w.service}'s access log line")
        entry = entries[0]
        assert FIELDS <= set(entry), FIELDS - set(entry)
        assert (
            entry["path"] == path
            and entry["method"] == "GET"
            and entry["response_code"] == 200
            and entry["user_agent"] == "log-test"
        )
        assert entry["upstream_cluster"].startswith(cluster.rsplit("|", 3)[0] if w is server else "outbound|")
    # The request id ties the two ends' lines together.
    assert _lines(client, path)[0]["request_id"] == _lines(server, path)[0]["request_id"]


def test_telemetry_filter_and_disable(mesh):
    plane, server, client = mesh
    plane.apply(
        _telemetry(
            {
                "selector": {"matchLabels": {"app": "logged"}},
                "accessLogging": [{"providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}],
            }
        )
    )
    wait_for(plane.all_synced, 10, what="the filter to reach the sidecars")
    drained(server)
    ok, bad = f"/ok-{uuid.uuid4().hex[:8]}", f"/bad-{uuid.uuid4().hex[:8]}"
    assert client.call(f"http://logged{ok}")[0] == 200
    assert client.call(f"http://logged{bad}?status=404")[0] == 404
    wait_for(lambda: _lines(server, bad), 10, what="the 404 to be logged")
    wait_for(lambda: _lines(client, ok), 10, what="the caller (not selected) to log the 200")
    assert not _lines(server, ok), "a 200 passed the filter `response.code >= 400`"

    plane.apply(_telemetry({"selector": {"matchLabels": {"app": "logged"}}, "accessLogging": [{"disabled": True}]}))
    wait_for(plane.all_synced, 10, what="the change to reach the sidecars")
    drained(server)
    off = f"/off-{uuid.uuid4().hex[:8]}"
    assert client.call(f"http://logged{off}?status=500")[0] == 500
    wait_for(lambda: _lines(client, off), 10, what="the caller to log it")
    assert not _lines(server, off), "logging was disabled for the selected workload"


# Istio's default TEXT line, as its access-log task shows it:
# [2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 "-" "curl/7.73.0-DEV"
# "84961386-..." "httpbin:8000" "10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652
# 10.0.9.16:8000 10.44.1.23:46520 - default
TEXT_LINE = re.compile(
    r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET (?P<path>\S+) HTTP/1\.1" (?P<code>\d{3}) (?P<flags>\S+) '
    r'(?P<details>\S+) \S+ "[^"]*" \d+ \d+ \d+ \S+ "[^"]*" "(?P<agent>[^"]*)" "(?P<id>[^"]*)" "(?P<authority>[^"]*)" '
    r'"(?P<upstream>[^"]*)" (?P<cluster>\S+) \S+ \S+ \S+ \S+ (?P<route>\S+)$'
)


def test_a_file_log_with_istios_defaults_writes_istios_text_format(mesh):
    plane, server, client = mesh
    plane.apply(_telemetry({"accessLogging": [{"providers": [{"name": "text-log"}]}]}))
    wait_for(plane.all_synced, 10, what="the text log to reach the sidecars")
    drained(server)
    path = f"/status-{uuid.uuid4().hex[:8]}?status=418"
    assert client.call(f"http://logged{path}", headers={"user-agent": "curl/8.0"})[0] == 418
    line = wait_for(
        lambda: next((x for x in client.log.read_text(errors="replace").splitlines() if path in x), None),
        10,
        what="the caller's text line",
    )
    match = TEXT_LINE.match(line)
    assert match, line
    assert (match["path"], match["code"], match["details"], match["agent"]) == (path, "418", "via_upstream", "curl/8.0")
    assert match["authority"] == "logged" and match["cluster"].startswith("outbound|")
