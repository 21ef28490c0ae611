"""Routing with real sidecars: Istio's Bookinfo routing files change what clients observe."""

from __future__ import annotations

import json
from pathlib import Path

import lattice.demo

import pytest

from harness import served_by, wait_for

pytestmark = pytest.mark.slow
DATA = Path(lattice.demo.__file__).parent / "networking"
REVIEWS = "http://reviews:9080/reviews/0"


def _file(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture
def plane(shared_plane):
    return shared_plane


def test_without_rules_every_version_gets_traffic(bookinfo):
    counts = served_by(bookinfo, REVIEWS, 30)
    assert set(counts) == {"reviews-v1", "reviews-v2", "reviews-v3"}, counts


@pytest.mark.parametrize(
    "host",
    ["reviews", "reviews:9080", "reviews.default", "reviews.default.svc.cluster.local:9080", "REVIEWS.default.svc"],
)
def test_every_host_form_reaches_the_service(bookinfo, host):
    status, headers, body = bookinfo.call(f"http://{host}/reviews/0")
    assert status == 200, body
    assert headers["x-served-by"].startswith("reviews-")


def test_a_route_change_reaches_traffic(plane, bookinfo):
    plane.apply(_file("destination-rule-all.yaml"))
    plane.apply(_file("virtual-service-reviews-v3.yaml"))
    wait_for(lambda: served_by(bookinfo, REVIEWS, 3) == {"reviews-v3": 3}, 5, what="reviews traffic to move to v3")
    assert served_by(bookinfo, REVIEWS, 30) == {"reviews-v3": 30}
    plane.cli("delete", "-f", "-", input=_file("virtual-service-reviews-v3.yaml"))
    wait_for(lambda: len(served_by(bookinfo, REVIEWS, 15)) == 3, 5, what="traffic to spread again after delete")


def test_all_v1_sends_every_review_to_v1(plane, bookinfo):
    plane.apply(_file("virtual-service-all-v1.yaml"))
    plane.apply(_file("destination-rule-all.yaml"))
    wait_for(lambda: served_by(bookinfo, REVIEWS, 3) == {"reviews-v1": 3}, 5, what="reviews traffic to move to v1")
    assert served_by(bookinfo, REVIEWS, 50) == {"reviews-v1": 50}
    # Through productpage, as Bookinfo users look at it: the page shows reviews without stars.
    status, _, body = bookinfo.call("http://productpage:9080/api/v1/products/0/reviews")
    assert status == 200 and json.loads(body)["version"] == "v1"


def test_jason_goes_to_v2_everyone_else_to_v3(plane, bookinfo):
    plane.apply(_file("destination-rule-all.yaml"))
    plane.apply(_file("virtual-service-reviews-jason-v2-v3.yaml"))
    wait_for(lambda: served_by(bookinfo, REVIEWS, 3) == {"reviews-v3": 3}, 5, what="the jason rule to apply")
    assert served_by(bookinfo, REVIEWS, 20, {"end-user": "jason"}) == {"reviews-v2": 20}
    assert served_by(bookinfo, REVIEWS, 20, {"end-user": "alice"}) == {"reviews-v3": 20}
    # The header reaches reviews through productpage too (the app propagates it, the mesh routes on it).
    status, _, body = bookinfo.call("http://productpage:9080/api/v1/products/0/reviews", {"end-user": "jason"})
    assert status == 200 and json.loads(body)["version"] == "v2"


def test_80_20_split(plane, bookinfo):
    plane.apply(_file("destination-rule-all.yaml"))
    plane.apply(_file("virtual-service-reviews-80-20.yaml"))
    wait_for(lambda: "reviews-v3" not in served_by(bookinfo, REVIEWS, 10), 5, what="the split to apply")
    counts = served_by(bookinfo, REVIEWS, 400)
    assert set(counts) <= {"reviews-v1", "reviews-v2"}, counts
    # 400 draws at p=0.8: sd is 2 points; 8 points either way is four sd.
    assert 0.72 <= counts.get("reviews-v1", 0) / 400 <= 0.88, counts
