"""productpage v1: the front end; calls details and reviews and renders both.

It is the one service a user hits, so it is where a login becomes the
`end-user` header (Bookinfo's `user=<name>` cookie) that the mesh routes on.
"""

from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie
from typing import Any

from lattice.demo.apps.common import (
    Headers,
    AppHandler,
    Reply,
    fetch,
    html_reply,
    json_reply,
    numeric_id,
    propagated_headers,
    run,
)
from lattice.demo.apps.productpage_html import (
    DETAILS_UNAVAILABLE,
    REVIEWS_UNAVAILABLE,
    index_page,
    product_page,
)

DETAILS_URL = "http://details:9080/details/{id}"
REVIEWS_URL = "http://reviews:9080/reviews/{id}"

PRODUCT: dict[str, Any] = {
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": (
        '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">'
        "Wikipedia Summary</a>: The Comedy of Errors is one of "
        "<b>William Shakespeare's</b> early plays. It is his shortest and one "
        "of his most farcical comedies, with a major part of the humour coming "
        "from slapstick and mistaken identity, in addition to puns and word play."
    ),
}


def login_user(cookie_header: str | None) -> str | None:
    """The user named by a `user=<name>` cookie, if any."""
    cookies = SimpleCookie()
    try:
        cookies.load(cookie_header or "")
    except CookieError:
        return None
    morsel = cookies.get("user")
    return morsel.value if morsel is not None and morsel.value else None


def outbound_headers(incoming: Headers) -> dict[str, str]:
    """Headers to propagate, plus `end-user` from the login cookie if not sent."""
    headers = propagated_headers(incoming)
    user = login_user(incoming.get("cookie"))
    if user and "end-user" not in headers:
        headers["end-user"] = user
    return headers


def upstream_json(status: int, body: bytes) -> dict | None:
    """The decoded upstream body, or None when it failed or is not JSON."""
    if status != 200:
        return None
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def proxied(status: int, body: bytes, unavailable: str) -> Reply:
    """Pass an upstream JSON answer through; a failure becomes Bookinfo's apology."""
    if upstream_json(status, body) is None:
        return json_reply({"error": unavailable}, status if status >= 400 else 502)
    return Reply(200, body, "application/json")


class ProductPageHandler(AppHandler):
    service = "productpage"

    def route(self, path: str) -> Reply | None:
        if path == "/":
            return html_reply(index_page())
        if path == "/productpage":
            return self.product_page()
        if path == "/api/v1/products":
            return json_reply([PRODUCT])
        if path.endswith("/reviews"):
            product_id = numeric_id(path.removesuffix("/reviews"), "/api/v1/products")
            return None if product_id is None else self.api_reviews(product_id)
        product_id = numeric_id(path, "/api/v1/products")
        return None if product_id is None else self.api_details(product_id)

    def call(self, url: str, product_id: int) -> tuple[int, bytes]:
        return fetch(url.format(id=product_id), outbound_headers(self.headers))

    def api_details(self, product_id: int) -> Reply:
        status, body = self.call(DETAILS_URL, product_id)
        return proxied(status, body, DETAILS_UNAVAILABLE)

    def api_reviews(self, product_id: int) -> Reply:
        status, body = self.call(REVIEWS_URL, product_id)
        return proxied(status, body, REVIEWS_UNAVAILABLE)

    def product_page(self) -> Reply:
        details = upstream_json(*self.call(DETAILS_URL, PRODUCT["id"]))
        reviews = upstream_json(*self.call(REVIEWS_URL, PRODUCT["id"]))
        user = outbound_headers(self.headers).get("end-user")
        return html_reply(product_page(PRODUCT, details, reviews, user))


def main() -> int:
    return run(ProductPageHandler)


if __name__ == "__main__":
    raise SystemExit(main())
