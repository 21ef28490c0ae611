"""Attacks with request bodies (finding 9): an alias bomb, deep nesting, invalid UTF-8 and wrong
types get a 400 that names the problem, small, and nothing stored changes."""

from __future__ import annotations

import json
import ssl

import pytest
from harness import ControlPlane, http

pytestmark = pytest.mark.slow

# 487 bytes of YAML that expand to a billion strings: the classic "billion laughs".
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    cp = ControlPlane(tmp_path_factory.mktemp("bodies") / "home").start()
    yield cp
    cp.stop()


def _post(plane: ControlPlane, path: str, body: bytes, content_type: str) -> tuple[int, dict, int]:
    status, _, raw = http("POST", f"{plane.api}{path}", body, plane.admin | {"Content-Type": content_type})
    return status, json.loads(raw), len(raw)


def test_malformed_bodies_get_a_small_400_naming_the_problem_and_nothing_changes(plane):
    revision = plane.status()["server"]["revision"]
    assert len(ALIAS_BOMB) < 600
    status, body, size = _post(plane, "/api/v1/apply", ALIAS_BOMB.encode(), "application/yaml")
    assert status == 400 and "aliases" in body["error"] and size < 4096, (status, size, body)

    status, body, _ = _post(plane, "/api/v1/apply", b"a:" + b" [" * 5000 + b"]" * 5000, "application/yaml")
    assert status == 400 and "nested deeper than 64" in body["error"], body

    status, body, _ = _post(plane, "/api/v1/apply", b"kind: \xff\xfe VirtualService\n", "application/yaml")
    assert status == 400 and "UTF-8" in body["error"], body

    status, body, _ = _post(plane, "/api/v1/tokens", b"[" * 100_000 + b"]" * 100_000, "application/json")
    assert status == 400, body

    status, body, _ = _post(plane, "/api/v1/tokens", b'["service_account", "reviews"]', "application/json")
    assert status == 400 and "JSON object" in body["error"], body
    status, body, _ = _post(plane, "/api/v1/tokens", b'{"service_account": "reviews", "uses": "7"}', "application/json")
    assert status == 400 and "uses" in body["error"], body
    assert plane.status()["server"]["revision"] == revision
    assert plane.get("/api/v1/tokens")["items"] == []


def test_the_agents_api_answers_a_deeply_nested_body_with_400(plane):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    status, _, raw = http(
        "POST",
        f"{plane.agent_api}/agent/v1/certificate",
        b"[" * 20_000 + b"]" * 20_000,  # under the 64 KiB body bound, over Python's recursion limit
        {"Content-Type": "application/json"},
        context=context,
    )
    assert status == 400 and b"nested too deeply" in raw, raw[:300]
