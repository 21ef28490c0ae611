"""SpiffeId: Lattice's one SPIFFE ID shape, formatted and parsed strictly."""

from __future__ import annotations

import pytest

from lattice.identity import SpiffeId


def test_format_and_parse_round_trip() -> None:
    identity = SpiffeId("cluster.local", "default", "bookinfo-reviews")
    assert str(identity) == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert SpiffeId.parse(str(identity)) == identity


def test_parse_accepts_spiffe_path_characters() -> None:
    parsed = SpiffeId.parse("spiffe://prod.example_1/ns/team-a.b/sa/Svc_1")
    assert (parsed.trust_domain, parsed.namespace, parsed.service_account) == (
        "prod.example_1",
        "team-a.b",
        "Svc_1",
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://cluster.local/ns/default/sa/reviews", "scheme must be 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/default/sa/reviews", "scheme must be 'spiffe://'"),
        ("spiffe:///ns/default/sa/reviews", "trust domain is empty"),
        ("spiffe://Cluster.Local/ns/default/sa/reviews", "uppercase"),
        ("spiffe://cluster.local:443/ns/default/sa/reviews", "no port"),
        ("spiffe://user@cluster.local/ns/default/sa/reviews", "no port or user"),
        ("spiffe://cluster.local", "path is missing"),
        ("spiffe://cluster.local/ns/default/sa/reviews/extra", "path is '/ns/default/sa/reviews/extra'"),
        ("spiffe://cluster.local/ns/default/sa/reviews/", "empty segment"),
        ("spiffe://cluster.local/ns//sa/reviews", "empty segment"),
        ("spiffe://cluster.local/sa/reviews/ns/default", "path is"),
        ("spiffe://cluster.local/ns/default/sa/reviews?x=1", "query or fragment"),
        ("spiffe://cluster.local/ns/default/sa/reviews#frag", "query or fragment"),
        ("spiffe://cluster.local/ns/../sa/reviews", "may not be '..'"),
        ("spiffe://cluster.local/ns/de%20fault/sa/reviews", "namespace 'de%20fault' may contain only"),
    ],
)
def test_parse_refuses_with_reason(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match="not a Lattice SPIFFE ID") as caught:
        SpiffeId.parse(uri)
    assert reason in str(caught.value)
    assert "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>" in str(caught.value)


def test_constructor_validates_parts() -> None:
    with pytest.raises(ValueError, match="uppercase"):
        SpiffeId("Cluster.local", "default", "reviews")
    with pytest.raises(ValueError, match="service account is empty"):
        SpiffeId("cluster.local", "default", "")
    with pytest.raises(ValueError, match="longer than 2048 bytes"):
        SpiffeId("cluster.local", "default", "a" * 2100)


def test_parse_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="not a string"):
        SpiffeId.parse(b"spiffe://cluster.local/ns/default/sa/reviews")  # type: ignore[arg-type]
