"""The agent's request records behind `lattice why`: failures always, the rest only while tapped."""

from __future__ import annotations

from lattice.agent.access_log import Peer, Request
from lattice.agent.records import RequestRecords, request_key


def _request(request_id: str, code: int = 200, flags: str = "-") -> Request:
    return Request(
        "source",
        "http",
        1.0,
        Peer("client-v1"),
        Peer("backend-v1"),
        "backend",
        False,
        code=code,
        flags=flags,
        request_id=request_id,
        route="default/backend#0",
        cluster="outbound|9080||backend",
        attempts=3,
    )


def test_failures_are_kept_and_successes_only_while_tapped():
    tapping = [False]
    records = RequestRecords(lambda: tapping[0])
    for r in (_request("a"), _request("b", 503), _request("c", 200, "DI"), _request("d", 404)):
        records.observe(r)
    assert [r["request_id"] for r in records.recent_failures()] == ["b", "c", "d"]
    assert records.find("a") == []
    tapping[0] = True
    records.observe(_request("a"))
    found = records.find("a")
    assert [(r["request_id"], r["route"], r["attempts"]) for r in found] == [("a", "default/backend#0", 3)]


def test_rings_are_bounded():
    records = RequestRecords(lambda: True, failures=3, tapped=2)
    for i in range(10):
        records.observe(_request(f"f{i}", 500))
        records.observe(_request(f"s{i}"))
    assert [r["request_id"] for r in records.recent_failures()] == ["f7", "f8", "f9"]
    assert records.find("s0") == [] and len(records.find("s9")) == 1


def test_an_id_matches_whatever_trace_digit_envoy_wrote_into_it():
    sent, logged = "b5435320-6624-4f74-aa9d-86231d2b6851", "b5435320-6624-9f74-aa9d-86231d2b6851"
    assert request_key(sent) == request_key(logged)
    assert request_key("my-own-id") == "my-own-id" != request_key("my-own-iD")
    records = RequestRecords(lambda: False)
    records.observe(_request(logged, 503))
    assert len(records.find(sent)) == 1
