"""ratings v1: stars per reviewer. A leaf: it calls nothing.

Only reviews v2 and v3 call it, so whether its requests show up at all tells
which reviews version the mesh routed to.
"""

from __future__ import annotations

from lattice.demo.apps.common import AppHandler, Reply, json_reply, numeric_id, run

STARS = {"Reviewer1": 5, "Reviewer2": 4}


class RatingsHandler(AppHandler):
    service = "ratings"

    def route(self, path: str) -> Reply | None:
        if not path.startswith("/ratings/"):
            return None
        product_id = numeric_id(path, "/ratings")
        if product_id is None:
            return json_reply({"error": "please provide numeric product id"}, 400)
        return json_reply({"id": product_id, "ratings": dict(STARS)})


def main() -> int:
    return run(RatingsHandler)


if __name__ == "__main__":
    raise SystemExit(main())
