"""details v1: the book's bibliographic facts. A leaf: it calls nothing."""

from __future__ import annotations

from lattice.demo.apps.common import AppHandler, Reply, json_reply, numeric_id, run


def book_details(product_id: int) -> dict:
    # Bookinfo serves one fixed book whatever the id; only the id echoes back.
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


class DetailsHandler(AppHandler):
    service = "details"

    def route(self, path: str) -> Reply | None:
        if not path.startswith("/details/"):
            return None
        product_id = numeric_id(path, "/details")
        if product_id is None:
            return json_reply({"error": "please provide numeric product id"}, 400)
        return json_reply(book_details(product_id))


def main() -> int:
    return run(DetailsHandler)


if __name__ == "__main__":
    raise SystemExit(main())
