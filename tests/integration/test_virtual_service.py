"""VirtualService HTTP features with real sidecars, observed from the calling app's side.

One mesh for the module: two clients (labels differ, for sourceLabels), `web` v1 and v2, a `mirror`
target and a `flaky` service whose every other request fails; all run tests/apps/backend.py,
which answers with what it saw (path, headers, instance) and can be slowed per request.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from harness import BACKEND, Workload, reset_config, running, wait_for

pytestmark = pytest.mark.slow


class Client:
    """Requests as a workload's app makes them: to its sidecar's outbound listener, keep-alive,
    redirects not followed (so a test sees the 30x itself)."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, url: str, method: str = "GET", headers: dict | None = None, timeout: float = 10.0
    ) -> tuple[int, dict, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the proxy closed gets one fresh retry
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.workload.address, 15001, timeout=timeout)
            self.conn.timeout = timeout
            try:
                self.conn.request(
                    method,
                    url,
                    headers={"host": urlsplit(url).netloc, **self.workload.proxy_headers, **(headers or {})},
                )
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, url: str, **kw) -> tuple[int, dict]:
        status, _, body = self.request(url, **kw)
        return status, (json.loads(body) if body.startswith(b"{") else {"raw": body.decode(errors="replace")})

    def served(self, url: str, n: int, headers: dict | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _ in range(n):
            status, h, _ = self.request(url, headers=headers)
            key = h.get("x-served-by", "?") if status == 200 else f"status {status}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def mesh(shared_plane):
    specs = {
        "client": Workload(shared_plane, "client", "v1", command=BACKEND),
        "client-v2": Workload(shared_plane, "client", "v2", command=BACKEND),
        "web-v1": Workload(shared_plane, "web", "v1", command=BACKEND),
        "web-v2": Workload(shared_plane, "web", "v2", command=BACKEND),
        "mirror": Workload(shared_plane, "mirror", "v1", command=BACKEND),
        "flaky": Workload(shared_plane, "flaky", "v1", command=BACKEND, env={"BACKEND_FAIL_EVERY_OTHER": "1"}),
    }
    with running(shared_plane, list(specs.values())):
        yield specs


@pytest.fixture
def client(shared_plane, mesh):
    reset_config(shared_plane)
    c = Client(mesh["client"])
    yield c
    c.close()


SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def apply(plane, text: str) -> None:
    plane.apply(text)
    wait_for(plane.all_synced, 10, what="proxies to hold the applied config")


def vs(http_rules: str, host: str = "web") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}}}\nspec:\n  hosts: "
        f"[{host}]\n  http:\n{http_rules}"
    )


def test_matches_pick_the_first_rule_that_fits(shared_plane, client):
    apply(shared_plane, SUBSETS)
    apply(
        shared_plane,
        vs("""
  - match: [{uri: {exact: /exact}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {regex: '/items/[0-9]+'}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {prefix: /admin}, ignoreUriCase: true}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{method: {exact: POST}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{headers: {x-canary: {prefix: "yes"}}, queryParams: {beta: {exact: "1"}}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{withoutHeaders: {x-legacy: {exact: "1"}}, uri: {prefix: /modern}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{scheme: {exact: https}}]
    route: [{destination: {host: web, subset: v2}}]
  - route: [{destination: {host: web, subset: v1}}]
"""),
    )
    v2 = {"web-v2": 3}
    assert client.served("http://web/exact", 3) == v2
    assert client.served("http://web/exact/no", 3) == {"web-v1": 3}
    assert client.served("http://web/items/42", 3) == v2
    assert client.served("http://web/items/x", 3) == {"web-v1": 3}
    assert client.served("http://web/ADMIN/users", 3) == v2
    status, h, _ = client.request("http://web/thing", method="POST")
    assert (status, h["x-served-by"]) == (200, "web-v2")
    assert client.served("http://web/q?beta=1", 3, {"x-canary": "yes-please"}) == v2
    assert client.served("http://web/q?beta=2", 3, {"x-canary": "yes-please"}) == {"web-v1": 3}
    assert client.served("http://web/q?beta=1", 3) == {"web-v1": 3}
    assert client.served("http://web/modern", 3) == v2
    assert client.served("http://web/modern", 3, {"x-legacy": "1"}) == {"web-v1": 3}


def test_source_labels_and_port_are_decided_per_client(shared_plane, mesh, client):
    apply(shared_plane, SUBSETS)
    apply(
        shared_plane,
        vs("""
  - match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{port: 1234}]
    route: [{destination: {host: web, subset: v2}}]
  - route: [{destination: {host: web, subset: v1}}]
"""),
    )
    other = Client(mesh["client-v2"])
    try:
        assert other.served("http://web/", 5) == {"web-v2": 5}
    finally:
        other.close()
    # client v1 matches neither the label nor (the service being on 9080) the port rule.
    assert client.served("http://web/", 5) == {"web-v1": 5}


def test_80_20_split_over_2000_requests(shared_plane, client):
    apply(shared_plane, SUBSETS)
    apply(
        shared_plane,
        vs("""
  - route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web, subset: v2}, weight: 20}
"""),
    )
    counts = client.served("http://web/", 2000)
    assert set(counts) == {"web-v1", "web-v2"}, counts
    # sd of the share is 0.9 points over 2,000 draws; ±3 points is more than three sd.
    assert 0.77 <= counts["web-v1"] / 2000 <= 0.83, counts


def test_redirect_answers_the_client_itself(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: web.example.com, redirectCode: 308}
  - match: [{uri: {prefix: /tls}}]
    redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
  - route: [{destination: {host: web}}]
"""),
    )
    status, h, _ = client.request("http://web/old/page")
    assert status == 308 and h["location"] == "http://web.example.com/new", h
    assert "x-served-by" not in h
    status, h, _ = client.request("http://web/tls")
    assert status == 301 and h["location"].startswith("https://web:443/tls"), h


def test_direct_response(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
  - route: [{destination: {host: web}}]
"""),
    )
    status, h, body = client.request("http://web/health")
    assert (status, body) == (503, b"down for maintenance")
    assert "x-served-by" not in h


def test_rewrite_uri_authority_and_regex(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - match: [{uri: {prefix: /v1/api}}]
    rewrite: {uri: /api, authority: backend.internal}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /users}}]
    rewrite: {uriRegexRewrite: {match: '^/users/([0-9]+)/profile$', rewrite: '/profiles?id=\\1'}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"""),
    )
    status, seen = client.json("http://web/v1/api/items")
    assert status == 200 and seen["path"] == "/api/items" and seen["headers"]["host"] == "backend.internal", seen
    status, seen = client.json("http://web/users/42/profile")
    assert status == 200 and (seen["path"], seen["query"]) == ("/profiles", {"id": "42"}), seen


def test_timeout_returns_504_after_the_timeout(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - timeout: 1s
    route: [{destination: {host: web}}]
"""),
    )
    started = time.monotonic()
    status, _, _ = client.request("http://web/slow?delay=3")
    took = time.monotonic() - started
    assert status == 504
    assert 0.9 <= took < 2.5, took
    assert client.request("http://web/fast")[0] == 200


def test_retries_turn_failures_into_successes(shared_plane, client):
    # No retries: every other request fails, as the backend does.
    apply(
        shared_plane,
        vs(
            """
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 0}
""",
            host="flaky",
        ),
    )
    statuses = [client.request("http://flaky/")[0] for _ in range(100)]
    assert 40 <= statuses.count(503) <= 60, statuses.count(503)
    apply(
        shared_plane,
        vs(
            """
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx"}
""",
            host="flaky",
        ),
    )
    statuses = [client.request("http://flaky/")[0] for _ in range(300)]
    assert statuses.count(200) / 300 > 0.99, statuses.count(503)


def test_fault_delay_and_abort(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {delay: {fixedDelay: 2s, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"""),
    )
    started = time.monotonic()
    assert client.request("http://web/", headers={"end-user": "jason"})[0] == 200
    assert time.monotonic() - started >= 1.9
    started = time.monotonic()
    assert client.request("http://web/")[0] == 200
    assert time.monotonic() - started < 1.0
    statuses = [client.request("http://web/abort")[0] for _ in range(400)]
    # 400 draws at p=0.5: sd 10; 60 either way is six sd.
    assert set(statuses) == {200, 418} and 140 <= statuses.count(418) <= 260, statuses.count(418)


def test_mirror_gets_copies_the_client_never_sees(shared_plane, mesh, client):
    apply(
        shared_plane,
        vs("""
  - route: [{destination: {host: web}}]
    mirror: {host: mirror}
    mirrorPercentage: {value: 100}
"""),
    )
    client.request("http://mirror/__reset", method="POST")
    served = client.served("http://web/mirrored", 40)
    assert set(served) <= {"web-v1", "web-v2"} and sum(served.values()) == 40, served
    # Mirrored requests are fire-and-forget: wait for the last ones to arrive.
    wait_for(lambda: client.json("http://mirror/__count")[1]["count"] == 40, 5, what="40 mirrored copies")
    # A 0% mirror sends nothing. To know when copies would have arrived, a sentinel sent after the
    # 20 requests is mirrored (another rule, 100%): once it is at the mirror, so would they be.
    apply(
        shared_plane,
        vs("""
  - match: [{uri: {exact: /sentinel}}]
    route: [{destination: {host: web}}]
    mirror: {host: mirror}
  - route: [{destination: {host: web}}]
    mirrors: [{destination: {host: mirror}, percentage: {value: 0}}]
"""),
    )
    client.request("http://mirror/__reset", method="POST")
    client.served("http://web/mirrored", 20)
    assert client.request("http://web/sentinel")[0] == 200
    wait_for(lambda: client.json("http://mirror/__count")[1]["count"] >= 1, 5, what="the sentinel's mirrored copy")
    assert client.json("http://mirror/__count")[1]["count"] == 1, "a 0% mirror sent copies"


def test_headers_set_add_remove(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - headers:
      request: {set: {x-env: prod}, add: {x-trace-tag: mesh}, remove: [x-secret]}
      response: {set: {x-frame-options: DENY}, remove: [x-instance]}
    route: [{destination: {host: web}}]
"""),
    )
    status, headers, body = client.request("http://web/", headers={"x-env": "dev", "x-secret": "s3cret"})
    seen = json.loads(body)["headers"]
    assert status == 200
    assert seen["x-env"] == "prod" and seen["x-trace-tag"] == "mesh" and "x-secret" not in seen, seen
    assert headers["x-frame-options"] == "DENY" and "x-instance" not in headers, headers


def test_cors_preflight_and_simple_requests(shared_plane, client):
    apply(
        shared_plane,
        vs("""
  - corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}, {regex: "https://.*\\\\.trusted\\\\.io"}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-custom]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: web}}]
"""),
    )
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "PUT"}
    status, h, _ = client.request("http://web/data", method="OPTIONS", headers=preflight)
    assert status == 200 and h["access-control-allow-origin"] == "https://app.example.com", h
    assert h["access-control-allow-methods"] == "GET,PUT" and h["access-control-max-age"] == "86400", h
    status, h, _ = client.request("http://web/data", headers={"origin": "https://x.trusted.io"})
    assert (
        status == 200
        and h["access-control-allow-origin"] == "https://x.trusted.io"
        and h["access-control-allow-credentials"] == "true"
    )
    status, h, _ = client.request("http://web/data", headers={"origin": "https://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in h
