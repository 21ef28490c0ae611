"""Istio's own Bookinfo routing files, unmodified (tests/conformance/istio-bookinfo, copied from
Istio's samples/bookinfo/networking), applied to the Bookinfo mesh: each is accepted as it is and
does what Istio's tasks (request routing, traffic shifting, fault injection, mutual TLS) describe."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import served_by, wait_for

pytestmark = pytest.mark.slow
CORPUS = Path(__file__).parent.parent / "conformance" / "istio-bookinfo"
REVIEWS = "http://reviews:9080/reviews/0"
RATINGS = "http://ratings:9080/ratings/0"
JASON = {"end-user": "jason"}


@pytest.fixture
def plane(shared_plane):
    return shared_plane


def _apply(plane, *names: str) -> None:
    for name in names:
        plane.cli("apply", "-f", str(CORPUS / name))
    wait_for(plane.all_synced, 10, what=f"proxies to hold {', '.join(names)}")


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.yaml")))
def test_every_file_applies_unchanged(plane, bookinfo, name):
    result = plane.cli("apply", "-f", str(CORPUS / name), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(plane.all_synced, 10, what="proxies to accept it (no NACK)")
    assert all(not t.get("error") for p in plane.status()["proxies"] for t in p["types"].values())


def test_request_routing_all_v1_then_jason_to_v2(plane, bookinfo):
    _apply(plane, "destination-rule-all.yaml", "virtual-service-all-v1.yaml")
    assert served_by(bookinfo, REVIEWS, 20) == {"reviews-v1": 20}
    _apply(plane, "virtual-service-reviews-test-v2.yaml")
    assert served_by(bookinfo, REVIEWS, 10, JASON) == {"reviews-v2": 10}
    assert served_by(bookinfo, REVIEWS, 10) == {"reviews-v1": 10}


@pytest.mark.parametrize(
    "name, shares",
    [
        ("virtual-service-reviews-50-v3.yaml", {"reviews-v1": 0.5, "reviews-v3": 0.5}),
        ("virtual-service-reviews-90-10.yaml", {"reviews-v1": 0.9, "reviews-v2": 0.1}),
        ("virtual-service-reviews-v2-v3.yaml", {"reviews-v2": 0.5, "reviews-v3": 0.5}),
        ("virtual-service-reviews-v3.yaml", {"reviews-v3": 1.0}),
    ],
)
def test_traffic_shifting(plane, bookinfo, name, shares):
    _apply(plane, "destination-rule-all.yaml", name)
    n = 400
    counts = served_by(bookinfo, REVIEWS, n)
    assert set(counts) == set(shares), counts
    for version, share in shares.items():
        # 400 draws: sd at most 2.5 points; 10 points is four sd.
        assert abs(counts[version] / n - share) <= 0.10, counts


def test_ratings_delay_for_jason_is_seven_seconds(plane, bookinfo):
    _apply(plane, "destination-rule-all.yaml", "virtual-service-ratings-test-delay.yaml")
    started = time.monotonic()
    status, _, _ = bookinfo.call(RATINGS, JASON, timeout=15)
    took = time.monotonic() - started
    assert status == 200 and 6.9 <= took < 9.0, (status, took)
    started = time.monotonic()
    assert bookinfo.call(RATINGS)[0] == 200
    assert time.monotonic() - started < 1.0


def test_ratings_abort_for_jason(plane, bookinfo):
    _apply(plane, "destination-rule-all.yaml", "virtual-service-ratings-test-abort.yaml")
    assert {bookinfo.call(RATINGS, JASON)[0] for _ in range(10)} == {500}
    assert {bookinfo.call(RATINGS)[0] for _ in range(10)} == {200}


def test_details_abort_with_new_percentage_field(plane, bookinfo):
    _apply(plane, "fault-injection-details-v1.yaml")
    assert {bookinfo.call("http://details:9080/details/0")[0] for _ in range(10)} == {555}


def test_all_mtls_rules_keep_traffic_flowing(plane, bookinfo):
    _apply(plane, "destination-rule-all-mtls.yaml", "virtual-service-all-v1.yaml")
    assert served_by(bookinfo, REVIEWS, 10) == {"reviews-v1": 10}
    status, _, _ = bookinfo.call("http://ratings:9080/ratings/0")
    assert status == 200
