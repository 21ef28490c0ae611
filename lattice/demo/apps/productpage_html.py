"""The HTML productpage renders: pure functions from fetched JSON to markup.

Kept apart from the handler so the page can change without touching the
calls, and so everything from upstream passes through `escape` in one place.
"""

from __future__ import annotations

from html import escape

DETAIL_FIELDS = (
    ("author", "Author"),
    ("year", "Year"),
    ("type", "Type"),
    ("pages", "Pages"),
    ("publisher", "Publisher"),
    ("language", "Language"),
    ("ISBN-10", "ISBN-10"),
    ("ISBN-13", "ISBN-13"),
)
DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def index_page() -> str:
    return page(
        "Simple Bookstore App",
        '<h1>Simple Bookstore App</h1>\n<p><a href="/productpage">Product page</a></p>',
    )


def details_html(details: dict | None) -> str:
    if details is None:
        return f'<p class="error">{DETAILS_UNAVAILABLE}</p>'
    rows = "".join(
        f"<dt>{label}</dt><dd>{escape(str(details[key]))}</dd>" for key, label in DETAIL_FIELDS if key in details
    )
    return f'<dl class="details">{rows}</dl>'


def rating_html(rating: dict | None) -> str:
    if rating is None:
        return ""
    if "error" in rating:
        return f'<p class="rating error">{escape(str(rating["error"]))}</p>'
    stars = rating.get("stars")
    stars = max(0, min(5, stars)) if isinstance(stars, int) else 0
    color = escape(str(rating.get("color", "black")))
    return f'<p class="rating" style="color: {color}">{"★" * stars}{"☆" * (5 - stars)}</p>'


def review_html(review: dict) -> str:
    return (
        f'<blockquote class="review"><p>{escape(str(review.get("text", "")))}</p>'
        f'<small>{escape(str(review.get("reviewer", "")))}</small>'
        f'{rating_html(review.get("rating"))}</blockquote>'
    )


def reviews_html(reviews: dict | None) -> str:
    if reviews is None:
        return f'<p class="error">{REVIEWS_UNAVAILABLE}</p>'
    version = escape(str(reviews.get("version", "unknown")))
    items = "\n".join(review_html(review) for review in reviews.get("reviews", []))
    return f'<p class="served-by">reviews-{version}</p>\n{items}'


def product_page(product: dict, details: dict | None, reviews: dict | None, user: str | None) -> str:
    signed_in = f'<p class="user">Signed in as {escape(user)}</p>\n' if user else ""
    body = (
        f"{signed_in}<h1>{escape(product['title'])}</h1>\n"
        f"<p>{product['descriptionHtml']}</p>\n"
        f"<h2>Book Details</h2>\n{details_html(details)}\n"
        f"<h2>Book Reviews</h2>\n{reviews_html(reviews)}"
    )
    return page(f"{product['title']} - Simple Bookstore App", body)
