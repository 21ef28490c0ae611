"""The web console in a real browser: Debian's chromium, headless, driven through its own
chromedriver by Selenium (nothing downloaded), against a running mesh with steady traffic.

The browser logs in the way `lattice dashboard` sends it in (a one-time link), then checks what a
user would see: every workload and edge with live numbers that agree with `lattice stat`, a
VirtualService moving them, tap showing requests as they happen, and a failed request's "why"
naming the policy that refused it. With LATTICE_UPDATE_SCREENSHOT=1 the run also refreshes
docs/console.png, the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from lattice.agent.records import request_key

from harness import BACKEND, ControlPlane, Enrolled, Workload, drained, http, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("console")]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium comes with the test extras (make install)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

DOCS = Path(__file__).parents[2] / "docs"
URL = "http://backend:9080/"
WINDOW = 20  # seconds: the graph's and `lattice stat`'s, the same


class Traffic:
    """A steady caller: client -> backend, about 20 requests a second, until stopped."""

    def __init__(self, client: Workload) -> None:
        self.client, self.stopped, self.sent = client, threading.Event(), 0
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            try:
                self.client.call(URL)
                self.sent += 1
            except OSError:
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("console") / "home").start()
    try:
        workloads = [
            Workload(plane, "client", command=BACKEND),
            Workload(plane, "backend", "v1", command=BACKEND),
            Workload(plane, "backend", "v2", command=BACKEND),
        ]
        with running(plane, workloads) as ready:
            traffic = Traffic(ready[0])
            try:
                yield plane, ready, traffic
            finally:
                traffic.stop()
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, mesh):
    plane, _, _ = mesh
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "chromium and chromium-driver are installed by `make tools`"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.get(plane.cli("dashboard", "--url").stdout.strip())
        driver.get(f"{plane.api}/ui/?window={WINDOW}")  # logged in: the cookie is set
        yield driver
    finally:
        driver.quit()


def _graph(driver) -> dict:
    """What the graph shows: each node's and edge's numbers, as drawn."""
    nodes = {
        n.get_attribute("data-workload"): float(n.get_attribute("data-rps") or 0)
        for n in driver.find_elements(By.CSS_SELECTOR, "g.node")
    }
    edges = {
        (e.get_attribute("data-source"), e.get_attribute("data-destination")): {
            "rps": float(e.get_attribute("data-rps")),
            "mtls": e.get_attribute("data-mtls"),
            "text": e.text,
        }
        for e in driver.find_elements(By.CSS_SELECTOR, "g.edge")
    }
    return {"nodes": nodes, "edges": edges}


def test_login_link_works_once_and_the_page_needs_it(mesh):
    plane, _, _ = mesh
    link = plane.cli("dashboard", "--url").stdout.strip()
    assert "/ui/login?ticket=" in link and (plane.home / "admin-token").read_text().strip() not in link
    status, headers, _ = http("GET", link)  # urllib follows the redirect, without the cookie jar
    assert status in (200, 401)
    assert http("GET", link)[0] == 401  # spent
    assert http("GET", plane.api + "/ui/")[0] == 401
    assert http("GET", plane.api + "/api/v1/graph")[0] == 401


def test_graph_shows_every_workload_and_edge_with_the_numbers_stat_gives(mesh, browser):
    plane, _, traffic = mesh
    wait_for(lambda: time.monotonic() - traffic.started > WINDOW + 2, 60, what="a whole window of traffic")
    shown = wait_for(
        lambda: (g := _graph(browser))["edges"].get(("client-v1", "backend-v1")) and g,
        20,
        what="the graph to show client-v1 -> backend-v1",
    )
    assert {"client-v1", "backend-v1", "backend-v2"} <= set(shown["nodes"])
    stat = {r["workload"]: r for r in json.loads(plane.cli("stat", "-w", f"{WINDOW}s", "-o", "json").stdout)["items"]}
    for workload in ("backend-v1", "backend-v2"):
        expected = stat[workload]["rps"]
        assert abs(shown["nodes"][workload] - expected) <= 0.2 * max(expected, 0.5), (workload, shown, expected)
    edge = shown["edges"][("client-v1", "backend-v1")]
    assert edge["mtls"] == "true" and edge["text"].startswith("mTLS ·") and "rps" in edge["text"]
    both = shown["edges"][("client-v1", "backend-v1")]["rps"] + shown["edges"][("client-v1", "backend-v2")]["rps"]
    assert abs(both - (stat["backend-v1"]["rps"] + stat["backend-v2"]["rps"])) <= 0.2 * both
    if os.environ.get("LATTICE_UPDATE_SCREENSHOT"):
        browser.save_screenshot(str(DOCS / "console.png"))


def test_a_virtual_service_moves_the_numbers(mesh, browser):
    plane, (_, v1, _), _ = mesh
    plane.apply(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend, subset: v2}}]}]
"""
    )
    try:
        moved = wait_for(
            lambda: (g := _graph(browser))["nodes"].get("backend-v1", 1) == 0 and g["nodes"]["backend-v2"] > 1 and g,
            40,
            what="backend-v1's numbers to drain to 0 and v2's to take all the traffic",
        )
        assert ("client-v1", "backend-v1") not in moved["edges"]
    finally:
        plane.cli("delete", "virtualservice", "backend", check=False)
        plane.cli("delete", "destinationrule", "backend", check=False)


def test_tap_shows_requests_as_they_happen(mesh, browser):
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=tap]").click()
    browser.find_element(By.ID, "tap-name").send_keys("backend")
    browser.find_element(By.CSS_SELECTOR, "#tap-form button").click()
    first = wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "tr.tap-row")), 20, what="tapped requests")
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "tr.tap-row")) > first + 5, 20, what="more, as they come"
    )
    row = browser.find_element(By.CSS_SELECTOR, "tr.tap-row")
    assert "client-v1 → backend-v" in row.text and "GET backend:9080/" in row.text
    assert row.find_element(By.CSS_SELECTOR, "a.rid").text  # the request id, a link to its "why"
    browser.find_element(By.ID, "tap-stop").click()


def test_why_of_a_failed_request_names_the_policy_and_the_authz_form_agrees(mesh, browser):
    plane, (client, v1, v2), _ = mesh
    plane.apply(
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""
    )
    try:
        wait_for(plane.all_synced, 10, what="the policy to reach every proxy")
        drained(v1)
        drained(v2)
        request_id = str(uuid.uuid4())
        assert client.call(URL + "admin", {"x-request-id": request_id})[0] == 403
        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=why]").click()
        box = browser.find_element(By.ID, "why-id")
        box.clear()
        box.send_keys(request_id)

        def answered():
            browser.find_element(By.CSS_SELECTOR, "#why-form button").click()
            text = browser.find_element(By.ID, "why-answer").text
            return text if "no-admin" in text else None

        text = wait_for(answered, 15, interval=0.5, what="the why answer")
        assert "AuthorizationPolicy default/no-admin" in text and "what to change" in text

        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=authz]").click()
        browser.find_element(By.ID, "authz-from").send_keys("client-v1")
        browser.find_element(By.ID, "authz-to").send_keys("backend")
        path = browser.find_element(By.ID, "authz-path")
        path.clear()
        path.send_keys("/admin")
        browser.find_element(By.CSS_SELECTOR, "#authz-form button").click()
        rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.authz-row"), 10, what="the authz answer")
        assert len(rows) == 2 and all("DENY" in r.text and "no-admin" in r.text for r in rows), [r.text for r in rows]
    finally:
        plane.cli("delete", "authorizationpolicy", "no-admin", check=False)


def _page(browser, plane, hash_: str) -> None:
    """Open a console page by its address, as a user following a link would."""
    browser.get(f"{plane.api}/ui/?window={WINDOW}#/{hash_}")


def _stat(plane, *args: str) -> dict:
    return json.loads(plane.cli("stat", *args, "-w", f"{WINDOW}s", "-o", "json").stdout)["items"]


def _close(shown: float, expected: float) -> bool:
    return abs(shown - expected) <= 0.2 * max(expected, 0.5)


def _rows(browser, css: str, *attributes: str) -> list[dict]:
    """What the elements matching `css` show (their text and the named attributes), read in one
    go: the pages redraw themselves every few seconds, so an element found now may be gone next."""
    return browser.execute_script(
        """return [...document.querySelectorAll(arguments[0])].map((e) => {
             const o = {text: e.innerText ?? e.textContent};
             for (const a of arguments[1]) o[a] = e.getAttribute(a);
             return o;
           });""",
        css,
        list(attributes),
    )


def _one(browser, css: str, *attributes: str) -> dict | None:
    found = _rows(browser, css, *attributes)
    return found[0] if found else None


def _click(browser, by, what: str) -> None:
    def clicked():
        browser.find_element(by, what).click()
        return True

    wait_for(clicked, 10, interval=0.2, what=f"to click {what}")


def test_service_page_shows_its_numbers_endpoints_sync_certificates_and_config(mesh, browser):
    plane, _, traffic = mesh
    plane.apply(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend-page}
spec:
  host: backend
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-page}
spec:
  hosts: [backend]
  http:
  - route:
    - {destination: {host: backend, subset: v1}, weight: 50}
    - {destination: {host: backend, subset: v2}, weight: 50}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-no-debug}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{operation: {paths: [/debug]}}]}]
"""
    )
    try:
        wait_for(plane.all_synced, 15, what="the config to reach every proxy")
        wait_for(lambda: time.monotonic() - traffic.started > WINDOW + 2, 60, what="a whole window of traffic")
        _page(browser, plane, "service/default/backend")

        def page_agrees_with_stat():
            row = _one(browser, "#svc-summary tbody tr", "data-rps")
            expected = _stat(plane, "backend", "--by", "service")[0]
            shown = float(row["data-rps"])
            return (row, expected) if _close(shown, expected["rps"]) and expected["rps"] > 1 else None

        summary, expected = wait_for(page_agrees_with_stat, 30, interval=1, what="the service page's numbers")
        assert "%" in summary["text"] and "ms" in summary["text"], summary

        charts = wait_for(
            lambda: (
                (c := {x["data-metric"]: x for x in _rows(browser, "#svc-charts svg", "data-metric", "data-points")})
                and all(int(c[m]["data-points"]) >= 5 for m in ("rps", "success_rate", "p50_ms", "p99_ms"))
                and c
            ),
            20,
            what="charts of requests/s, success and latency with points",
        )
        assert charts["rps"]["text"].startswith("requests/s: ") and charts["p99_ms"]["text"].startswith("latency p99: ")
        line = _one(browser, "#svc-charts svg[data-metric=rps] polyline", "points")
        assert line["points"].count(",") >= 5

        status = {p["id"]: p for p in plane.status()["proxies"] if p["service"] == "backend"}

        def endpoints():
            rows = {r["data-proxy"]: r for r in _rows(browser, "#svc-proxies tr.proxy-row", "data-proxy")}
            return rows if set(rows) == set(status) and all("SYNCED" in r["text"] for r in rows.values()) else None

        rows = wait_for(endpoints, 20, interval=0.5, what="every backend proxy, SYNCED as `lattice status` says")
        certs = [r["data-expires"] for r in _rows(browser, "#svc-proxies td.cert", "data-expires")]
        assert sorted(certs) == sorted(p["certificate"]["expires"] for p in status.values()), certs
        for proxy_id, row in rows.items():
            cert = status[proxy_id]["certificate"]
            assert all(t["state"] == "SYNCED" for t in status[proxy_id]["types"].values())
            assert cert["expires"] in row["text"]
            assert cert["identity"].removeprefix("spiffe://") in row["text"] and "yes" in row["text"]
            assert f"{status[proxy_id]['address']}:{status[proxy_id]['port']}" in row["text"]

        config = [r["text"] for r in _rows(browser, "#svc-config tr.config-row")]
        assert any(t.startswith("VirtualService\tdefault/backend-page\troutes requests") for t in config), config
        assert any(t.startswith("DestinationRule\tdefault/backend-page") for t in config), config
        assert any("AuthorizationPolicy\tdefault/backend-no-debug\tauthorization: DENY" in t for t in config), config
        assert all("backend-v1" in t and "backend-v2" in t for t in config), config
    finally:
        plane.cli("delete", "virtualservice", "backend-page", check=False)
        plane.cli("delete", "destinationrule", "backend-page", check=False)
        plane.cli("delete", "authorizationpolicy", "backend-no-debug", check=False)


def test_workload_page_shows_identity_sync_traffic_and_failures_that_explain_themselves(mesh, browser):
    plane, (client, _, _), traffic = mesh
    wait_for(lambda: time.monotonic() - traffic.started > WINDOW + 2, 60, what="a whole window of traffic")
    request_id = str(uuid.uuid4())
    status, headers, _ = client.call(URL + "?status=500", {"x-request-id": request_id})
    assert status == 500
    served_by = headers["x-served-by"]

    _page(browser, plane, "service/default/backend")
    proxy_id = wait_for(
        lambda: next(
            (r["text"] for r in _rows(browser, "#svc-proxies tr.proxy-row a.go") if r["text"].startswith(served_by)),
            None,
        ),
        20,
        what=f"{served_by} on the service page",
    )
    _click(browser, By.LINK_TEXT, proxy_id)
    wait_for(lambda: _one(browser, "#wl-title")["text"] == proxy_id, 20, what="the workload page")

    proxy = plane.proxy(proxy_id)

    def fact(key: str) -> dict:
        return _one(browser, f"#wl-facts tr[data-fact={key}] td", "data-expires")

    assert fact("identity")["text"] == proxy["certificate"]["identity"]
    assert fact("cert")["data-expires"] == proxy["certificate"]["expires"]
    wait_for(lambda: fact("sync")["text"].startswith("SYNCED"), 20, what="SYNCED, as `lattice status` shows it")

    def inbound_agrees():
        shown = float(_one(browser, "#wl-inbound tr.traffic-total", "data-rps")["data-rps"])
        expected = next(r for r in _stat(plane) if r["workload"] == served_by)["rps"]
        return _close(shown, expected) and expected > 0.5

    wait_for(inbound_agrees, 30, interval=1, what=f"{served_by}'s inbound numbers to agree with `lattice stat`")
    inbound = {r["data-peer"]: r["text"] for r in _rows(browser, "#wl-inbound tr.traffic-row", "data-peer")}
    assert "client-v1" in inbound and inbound["client-v1"].startswith("client-v1\tyes"), inbound

    shown_id = wait_for(
        lambda: next(
            (
                r["text"]
                for r in _rows(browser, "tr.failure-row a.rid")
                if request_key(r["text"]) == request_key(request_id)
            ),
            None,
        ),
        20,
        what="the failed request among the workload's latest failures",
    )
    row = next(r for r in _rows(browser, "tr.failure-row") if shown_id in r["text"])
    assert "500" in row["text"] and "GET backend:9080/" in row["text"]
    _click(browser, By.LINK_TEXT, shown_id)
    answer = wait_for(lambda: "500" in (t := _one(browser, "#why-answer")["text"]) and t, 15, what="the why answer")
    assert answer.startswith(f"request {shown_id}:"), answer

    # Outbound: the client's page shows what it called, as the calls its sidecar made.
    _page(browser, plane, "workload/client-v1")

    def outbound_agrees():
        rows = _rows(browser, "#wl-outbound tr.traffic-row", "data-peer", "data-rps")
        shown = sum(float(r["data-rps"]) for r in rows if r["data-peer"].startswith("backend"))
        expected = sum(r["rps"] for r in _stat(plane, "--from", "client-v1") if r["workload"].startswith("backend"))
        return _close(shown, expected) and expected > 1

    wait_for(outbound_agrees, 30, interval=1, what="client-v1's outbound numbers to agree with `lattice stat --from`")


ANALYZED = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-weighted}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend}, weight: 80}]}]
"""


def test_config_page_shows_resources_with_analyze_warnings_and_who_may_call_whom(mesh, browser, tmp_path):
    plane, _, _ = mesh
    client_identity = next(p for p in plane.status()["proxies"] if p["service"] == "client")["certificate"]["identity"]
    only_client = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-from-client}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: [{client_identity.removeprefix("spiffe://")}]}}}}]}}]
"""
    plane.apply(ANALYZED + "---" + only_client)
    try:
        (tmp_path / "vs.yaml").write_text(ANALYZED)
        warnings = json.loads(plane.cli("analyze", "-f", str(tmp_path / "vs.yaml"), "-o", "json").stdout)["findings"]
        assert warnings, "lattice analyze warns of a lone destination's weight"

        _page(browser, plane, "service/default/backend")  # then to the config page, as a user clicks
        _click(browser, By.CSS_SELECTOR, "nav button[data-tab=config-page]")
        key = "tr.resource-row[data-key='{}']"
        row = wait_for(
            lambda: _one(browser, key.format("VirtualService/default/backend-weighted")),
            20,
            what="the VirtualService on the config page",
        )
        for w in warnings:
            assert w["message"] in row["text"] and w["field"] in row["text"], (w, row)
        assert "backend-v1, backend-v2" in row["text"]  # the traffic it decides
        policy = _one(browser, key.format("AuthorizationPolicy/default/backend-from-client"))
        assert "none" in policy["text"] and "backend-v1, backend-v2" in policy["text"]

        def reach() -> dict:
            cells = _rows(browser, "#reach tr.reach-row td", "data-destination")
            sources = [r["text"].split("\t")[0] for r in _rows(browser, "#reach tr.reach-row")]
            per_row = len(cells) // max(len(sources), 1)
            return {
                (source, c["data-destination"]): c["text"]
                for i, source in enumerate(sources)
                for c in cells[i * per_row : (i + 1) * per_row]
            }

        shown = wait_for(lambda: (r := reach()).get(("client", "backend")) == "ALLOW" and r, 20, what="the reach table")
        for source, destination, cli_source in (
            ("client", "backend", "client-v1"),
            ("backend", "backend", "backend-v1"),
            ("anonymous", "backend", "anonymous"),
            ("backend", "client", "backend-v1"),
        ):
            answer = json.loads(
                plane.cli(
                    "authz", "check", "--from", cli_source, "--to", destination, "GET", "/", "-o", "json", check=False
                ).stdout
            )
            expected = {r["decision"] for r in answer["results"]}
            assert len(expected) == 1 and shown[(source, destination)] == expected.pop(), (source, destination, shown)
        assert shown[("backend", "backend")] == "DENY" and shown[("anonymous", "backend")] == "DENY"
        assert shown[("backend", "client")] == "ALLOW"
    finally:
        plane.cli("delete", "virtualservice", "backend-weighted", check=False)
        plane.cli("delete", "authorizationpolicy", "backend-from-client", check=False)


HOSTILE = '<img src=x onerror="window.pwned=1">'


def test_hostile_names_labels_and_request_ids_are_shown_as_text_never_run(mesh, browser, tmp_path):
    """A workload may register any label value, and a caller may send any x-request-id: the
    console shows them as text. The page's CSP would block an inline handler anyway, so the test
    looks for the element an unescaped value would have created, not only for its effect."""
    plane, (client, _, _), _ = mesh
    rogue = Enrolled(plane, "hostile", "hostile-x.default", tmp_path / "hostile")
    rogue.register(
        {
            "name": "hostile-v1",
            "service": "hostile",
            "service_account": "hostile",
            "labels": {"app": "hostile", "version": HOSTILE, "team": HOSTILE},
            "address": "127.0.0.1",
            "port": 9,
            "app_port": 9,
            "outbound_port": 9,
            "agent_port": 9,
            "healthy": True,
        }
    )
    try:
        hostile_id = f'x"><img src=x onerror="window.pwned=1">{uuid.uuid4()}'
        assert client.call(URL + "?status=500", {"x-request-id": hostile_id})[0] == 500

        def no_element_made():
            return browser.execute_script("return document.querySelectorAll('img').length === 0 && !window.pwned")

        _page(browser, plane, "")
        wait_for(
            lambda: HOSTILE in browser.find_element(By.ID, "nodes").text, 20, what="the hostile version in the graph"
        )
        assert no_element_made()
        _page(browser, plane, "service/default/hostile")
        wait_for(lambda: HOSTILE in browser.find_element(By.ID, "svc-proxies").text, 20, what="the service page")
        assert no_element_made()
        _page(browser, plane, "workload/hostile-v1")
        wait_for(lambda: f"team={HOSTILE}" in browser.find_element(By.ID, "wl-facts").text, 20, what="its labels")
        assert no_element_made()
        _page(browser, plane, "workload/client-v1")
        shown = wait_for(
            lambda: [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#wl-failures a.rid") if "<img" in a.text],
            20,
            what="the hostile request id among client-v1's failures",
        )
        assert shown and no_element_made()
        _click(browser, By.XPATH, f"//a[@class='rid' and text()='{shown[0]}']")
        wait_for(lambda: "500" in browser.find_element(By.ID, "why-answer").text, 15, what="its why")
        assert no_element_made()
    finally:
        rogue.agent_call("DELETE", "/agent/v1/workloads/hostile-x.default")


SAMPLE_ALL = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: console-sample-all, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 100}]
"""


def test_trace_waterfall_shows_a_requests_hops_across_sidecars(mesh, browser):
    """A request that failed two hops deep: the client's sidecar, the backend that served it and
    called the backend again, and the backend that failed, each recorded it, and each sidecar sent
    its spans; the waterfall puts records and spans on one time axis, each hop inside the one that
    carried it, the records as `lattice why` has them."""
    plane, workloads, _ = mesh
    client = workloads[0]
    plane.apply(SAMPLE_ALL)
    try:
        wait_for(plane.all_synced, 15, what="the sampling to reach every proxy")
        for w in workloads:  # no connection left on a listener from before the tracing config
            drained(w, timeout=10)
        request_id = str(uuid.uuid4())
        outer = URL + "?" + urllib.parse.urlencode({"call": "http://backend:9080/inner?status=500"})
        assert client.call(outer, {"x-request-id": request_id}, timeout=10)[0] == 502
        _page(browser, plane, f"trace/{request_id}")
        seen: list = []

        def drawn():
            _click(browser, By.CSS_SELECTOR, "#trace-form button")  # ask again: records and spans come in batches
            rows = wait_for(
                lambda: _rows(
                    browser,
                    "#waterfall g.span-row",
                    "data-source",
                    "data-proxy",
                    "data-side",
                    "data-offset",
                    "data-duration",
                    "data-status",
                ),
                10,
                what="the waterfall",
            )
            sources = [r["data-source"] for r in rows]
            seen[:] = [(r["data-source"], r["data-proxy"], r["data-side"], r["data-status"]) for r in rows]
            return rows if sources.count("sidecar") >= 4 and sources.count("trace") >= 4 else None

        try:
            rows = wait_for(drawn, 40, interval=2, what="4 sidecar records and the trace's spans (flushed every 5 s)")
        except AssertionError as e:
            raise AssertionError(f"{e}; shown: {seen}") from None
        why = json.loads(plane.cli("why", request_id, "-o", "json").stdout)
        sidecar = [r for r in rows if r["data-source"] == "sidecar"]
        shown = sorted(int(r["data-status"]) for r in sidecar)
        assert shown == sorted(h["status"] for h in why["hops"]) == [500, 500, 502, 502], (shown, why["hops"])
        first = sidecar[0]  # the caller's sidecar, where the request entered the mesh
        assert (first["data-proxy"], first["data-side"], first["data-offset"]) == ("client-v1", "outbound", "0"), rows
        end = float(first["data-offset"]) + float(first["data-duration"])
        for r in rows[1:]:  # each hop and span inside the one that carried it
            assert float(r["data-offset"]) + float(r["data-duration"]) <= end + 1, (r, first)
        inner = [r for r in sidecar if r["data-status"] == "500"]
        assert {r["data-side"] for r in inner} == {"inbound", "outbound"} and all("/inner" in r["text"] for r in inner)
        spans = [r for r in rows if r["data-source"] == "trace"]
        assert {r["data-side"] for r in spans} == {"client", "server"} and "500" in {r["data-status"] for r in spans}
        summary = _one(browser, "#waterfall-summary")["text"]
        assert f"request {request_id}" in summary and "4 sidecar record(s)" in summary and "of trace " in summary
    finally:
        plane.cli("delete", "telemetry", "console-sample-all", "-n", "istio-system", check=False)
