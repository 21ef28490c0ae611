"""reviews v1/v2/v3: the three versions a mesh demo shifts traffic between.

One module, version from `SERVICE_VERSION`: v1 shows no stars and calls
nothing; v2 (black stars) and v3 (red stars) call ratings. The version is in
every reply's JSON so a client can see where the mesh sent it.
"""

from __future__ import annotations

import json
import os
import socket

from lattice.demo.apps.common import (
    AppHandler,
    Reply,
    fetch,
    json_reply,
    numeric_id,
    propagated_headers,
    run,
    service_version,
)

RATINGS_URL = "http://ratings:9080/ratings/{id}"
STAR_COLORS = {"v2": "black", "v3": "red"}
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

REVIEWS = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
)


def pod_name() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


def fetch_stars(product_id: int, headers: dict[str, str]) -> dict[str, int] | None:
    """Stars by reviewer, or None when ratings cannot be had."""
    status, body = fetch(RATINGS_URL.format(id=product_id), headers)
    if status != 200:
        return None
    try:
        ratings = json.loads(body)["ratings"]
    except (ValueError, KeyError, TypeError):
        return None
    return ratings if isinstance(ratings, dict) else None


def rating(reviewer: str, stars: dict[str, int] | None, color: str) -> dict:
    if stars is None or not isinstance(stars.get(reviewer), int):
        return {"error": RATINGS_UNAVAILABLE}
    return {"stars": stars[reviewer], "color": color}


def product_reviews(product_id: int, version: str, headers: dict[str, str]) -> dict:
    color = STAR_COLORS.get(version)
    stars = fetch_stars(product_id, headers) if color else None
    reviews = []
    for reviewer, text in REVIEWS:
        review: dict[str, object] = {"reviewer": reviewer, "text": text}
        if color:
            review["rating"] = rating(reviewer, stars, color)
        reviews.append(review)
    return {
        "id": product_id,
        "version": version,
        "podname": pod_name(),
        "clustername": "null",
        "reviews": reviews,
    }


class ReviewsHandler(AppHandler):
    service = "reviews"

    def route(self, path: str) -> Reply | None:
        if not path.startswith("/reviews/"):
            return None
        product_id = numeric_id(path, "/reviews")
        if product_id is None:
            return json_reply({"error": "please provide numeric product id"}, 400)
        headers = propagated_headers(self.headers)
        return json_reply(product_reviews(product_id, service_version(), headers))


def main() -> int:
    return run(ReviewsHandler)


if __name__ == "__main__":
    raise SystemExit(main())
