"""The control plane's `/metrics` with real sidecars: what Prometheus scrapes from the REST port,
without the admin token, as config changes reach proxies, proxies reject config and agents enrol.

A control plane of its own (not `shared_plane`): every count here is this module's doing.
"""

from __future__ import annotations

import json
import re
import ssl
import time

import pytest

from harness import BACKEND, ControlPlane, Workload, http, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cpmetrics")]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _vs(name: str, host: str, match: str = "") -> str:
    rules = (
        f"  - match: [{{uri: {{regex: '{match}'}}}}]\n    route: [{{destination: {{host: {host}}}}}]\n" if match else ""
    )
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  hosts: [{host}]\n  http:\n{rules}  - route: [{{destination: {{host: {host}}}}}]\n"
    )


class Scrape:
    """One scrape of /metrics, parsed: value by (name, labels)."""

    def __init__(self, plane: ControlPlane) -> None:
        status, headers, body = http("GET", f"{plane.api}/metrics")  # no Authorization header
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
        self.text = body.decode()
        self.samples: dict[tuple[str, frozenset], float] = {}
        for line in self.text.splitlines():
            if line and not line.startswith("#"):
                name, labels, value = _SAMPLE.match(line).groups()
                self.samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("cpmetrics") / "home").start()
    workloads = [Workload(plane, "alpha", command=BACKEND), Workload(plane, "beta", command=BACKEND)]
    try:
        with running(plane, workloads) as ready:
            yield plane, ready
    finally:
        plane.stop()


def test_scrape_needs_no_token_and_reveals_no_secret(mesh):
    plane, _ = mesh
    scrape = Scrape(plane)
    admin = (plane.home / "admin-token").read_text().strip()
    assert admin not in scrape.text
    assert "BEGIN" not in scrape.text and "Bearer" not in scrape.text
    assert "# TYPE pilot_proxy_convergence_time histogram" in scrape.text
    assert http("GET", f"{plane.api}/api/v1/status")[0] == 401  # the rest of the API still needs it


def test_connected_proxies_workloads_and_root_expiry(mesh):
    plane, workloads = mesh
    scrape = Scrape(plane)
    assert scrape("pilot_xds") == len(workloads) == 2
    assert scrape("lattice_registry_workloads", healthy="true") == 2
    assert scrape("lattice_registry_workloads", healthy="false") == 0
    assert scrape("citadel_server_root_cert_expiry_timestamp") > time.time() + 86400


def test_a_virtual_service_is_pushed_and_converges_on_every_proxy(mesh):
    plane, workloads = mesh
    before = Scrape(plane)
    plane.apply(_vs("beta-routes", "beta"))
    after = wait_for(lambda: _converged(plane, before, len(workloads)), 15, what="every proxy to ACK the push")
    assert after("pilot_xds_pushes", type="rds") >= before("pilot_xds_pushes", type="rds") + len(workloads)
    assert after("pilot_xds_push_time_count") > before("pilot_xds_push_time_count")
    assert after("pilot_xds_config_size_bytes_count", type="rds") > before(
        "pilot_xds_config_size_bytes_count", type="rds"
    )
    assert after("lattice_config_resources", kind="VirtualService") == 1
    # Convergence here is a debounce, a push and a round trip to Envoy: seconds at worst, not tens.
    assert after("pilot_proxy_convergence_time_bucket", le="5") - before(
        "pilot_proxy_convergence_time_bucket", le="5"
    ) >= len(workloads)
    apply_calls = {"method": "POST", "route": "/api/v1/apply", "code": "200"}
    assert after("lattice_api_requests_total", **apply_calls) == before("lattice_api_requests_total", **apply_calls) + 1
    assert after("lattice_api_request_duration_seconds_count", method="POST", route="/api/v1/apply") >= 1
    plane.call("DELETE", "/api/v1/resources/virtualservices/default/beta-routes")
    wait_for(plane.all_synced, 10, what="proxies to sync after the delete")


def _converged(plane: ControlPlane, before: Scrape, proxies: int) -> Scrape | None:
    now = Scrape(plane)
    grown = now("pilot_proxy_convergence_time_count") - before("pilot_proxy_convergence_time_count")
    return now if grown >= proxies else None


def test_a_config_envoy_rejects_is_counted_per_type_and_per_proxy(mesh):
    # Validation refuses what RE2 cannot do, but not RE2's program size: Envoy refuses programs
    # over re2.max_program_size.error_level (Istio's 32768, set in the bootstrap), and this one
    # compiles to about 40,000 instructions, so every proxy NACKs these routes.
    plane, workloads = mesh
    before = Scrape(plane)
    plane.apply(_vs("huge-regex", "alpha", match="/" + "[a-h]{1,1000}" * 20))
    rejecting = wait_for(
        lambda: (s := Scrape(plane))("pilot_xds_rds_reject") == len(workloads) and s,
        15,
        what="every proxy to NACK the routes",
    )
    assert rejecting("pilot_total_xds_rejects", type="rds") >= before("pilot_total_xds_rejects", type="rds") + len(
        workloads
    )
    assert rejecting("pilot_xds_lds_reject") == rejecting("pilot_xds_cds_reject") == 0
    status = plane.proxy(workloads[0].id)["types"]["RouteConfiguration"]
    assert status["state"] == "NACKED" and "program size" in status["error"], status
    plane.call("DELETE", "/api/v1/resources/virtualservices/default/huge-regex")
    wait_for(lambda: Scrape(plane)("pilot_xds_rds_reject") == 0, 15, what="proxies to accept routes again")


def test_csr_counters_after_enrolment_and_refusals(mesh):
    plane, workloads = mesh
    before = Scrape(plane)
    assert before("citadel_server_csr_count") >= len(workloads)
    assert before("citadel_server_success_cert_issuance_count") >= len(workloads)
    assert _csr(plane, "Bearer not-a-token", "-----BEGIN CERTIFICATE REQUEST-----")[0] == 401
    assert _csr(plane, f"Bearer {plane.token('gamma')}", "not a CSR")[0] == 403
    after = Scrape(plane)
    assert after("citadel_server_csr_count") == before("citadel_server_csr_count") + 2
    assert (
        after("citadel_server_authentication_failure_count")
        == before("citadel_server_authentication_failure_count") + 1
    )
    assert after("citadel_server_csr_parsing_err_count") == before("citadel_server_csr_parsing_err_count") + 1
    assert after("citadel_server_success_cert_issuance_count") == before("citadel_server_success_cert_issuance_count")


def _csr(plane: ControlPlane, authorization: str, csr: str) -> tuple[int, dict]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only counting refusals here
    body = json.dumps({"csr": csr, "proxy_id": "gamma-1.default"}).encode()
    status, _, raw = http(
        "POST",
        f"{plane.agent_api}/agent/v1/certificate",
        body,
        {"Authorization": authorization, "Content-Type": "application/json"},
        context=context,
    )
    return status, json.loads(raw or b"{}")


def test_api_requests_are_counted_by_route_pattern_not_path(mesh):
    plane, _ = mesh
    before = Scrape(plane)
    for kind in ("virtualservices", "destinationrules", "gateways"):
        plane.get(f"/api/v1/resources/{kind}")
    http("GET", f"{plane.api}/no/such/{time.monotonic_ns()}")
    after = Scrape(plane)
    listed = {"method": "GET", "route": "/api/v1/resources/{kind}", "code": "200"}
    assert after("lattice_api_requests_total", **listed) == before("lattice_api_requests_total", **listed) + 3
    assert (
        after("lattice_api_requests_total", method="GET", route="unmatched", code="401")
        == before("lattice_api_requests_total", method="GET", route="unmatched", code="401") + 1
    )
    assert not [key for key in after.samples if "virtualservices" in str(key) or "/no/such" in str(key)]
