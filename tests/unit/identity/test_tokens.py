"""Join tokens: minting, parsing and checking, without ever echoing the secret."""

from __future__ import annotations

import hashlib
import re

import pytest

from lattice.identity import SpiffeId, TokenError, TokenRecord, tokens

NOW = 1_740_830_400.0  # 2025-03-01T12:00:00Z
ROOT = hashlib.sha256(b"a root certificate").hexdigest()


def minted(**overrides) -> tuple[str, TokenRecord]:
    args = {
        "namespace": "default",
        "service_account": "reviews",
        "ttl_seconds": 3600.0,
        "uses": 1,
        "now": NOW,
        "root_fingerprint": ROOT,
    } | overrides
    return tokens.mint(**args)


def test_mint_shape_and_record() -> None:
    token, record = minted(description="reviews v1 on host-a")
    assert re.fullmatch(r"lt1\.[0-9a-f]{12}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{32}", token)
    _, token_id, secret, pin = token.split(".")
    assert (record.id, record.namespace, record.service_account) == (token_id, "default", "reviews")
    assert pin == ROOT[:32] == tokens.pin_for(ROOT)
    assert (record.created_at, record.expires_at, record.uses_left) == (NOW, NOW + 3600, 1)
    assert secret not in repr(record) and secret not in str(record.to_dict())
    assert record.identity("cluster.local") == SpiffeId("cluster.local", "default", "reviews")
    assert minted()[0] != minted()[0]


def test_record_round_trips_through_a_dict() -> None:
    _, record = minted(uses=None, description="any number of joins")
    assert TokenRecord.from_dict(record.to_dict()) == record
    without_description = {k: v for k, v in record.to_dict().items() if k != "description"}
    assert TokenRecord.from_dict(without_description).description == ""
    with pytest.raises(ValueError, match="lacks secret_hash"):
        TokenRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "secret_hash"})


def test_parse_then_check_accepts_a_good_token() -> None:
    token, record = minted()
    parsed = tokens.parse(token + "\n")  # pasted from a terminal
    assert (parsed.id, parsed.pin) == (record.id, ROOT[:32])
    assert token.split(".")[2] not in repr(parsed)
    tokens.check(parsed, record, NOW + 10)
    tokens.check_pin(parsed, ROOT)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t.replace("lt1.", "lt2."), "unsupported join token version"),
        (lambda t: t.rsplit(".", 1)[0], "4 dot-separated parts"),
        (lambda t: t + ".x", "this one has 5"),
        (
            lambda t: t.replace(t.split(".")[1], "ABCDEF012345"),
            "id must be 12 lowercase hex",
        ),  # not .upper(): an all-digit id has no case
        (lambda t: t.replace(t.split(".")[2], t.split(".")[2][:-1] + "!"), "secret must be 43 base64url"),
        (lambda t: t[:-1] + "g", "pin must be 32 lowercase hex"),
        (lambda t: t + "x" * 300, "not a join token"),
        (lambda t: 42, "not a join token"),
    ],
)
def test_parse_refuses_without_echoing_the_secret(mangle, message) -> None:
    token, _ = minted()
    with pytest.raises(TokenError, match=message) as caught:
        tokens.parse(mangle(token))
    assert caught.value.reason == "malformed"
    assert token.split(".")[2][:20] not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_token() -> None:
    token, _ = minted()
    parsed = tokens.parse(token)
    with pytest.raises(TokenError, match=f"unknown join token {parsed.id}") as caught:
        tokens.check(parsed, None, NOW)
    assert caught.value.reason == "unknown"


def test_wrong_secret_says_only_invalid_token() -> None:
    token, record = minted()
    other, _ = minted()
    forged = tokens.parse(".".join([*token.split(".")[:2], other.split(".")[2], token.split(".")[3]]))
    with pytest.raises(TokenError) as caught:
        tokens.check(forged, record, NOW)
    assert (caught.value.reason, str(caught.value)) == ("invalid", "invalid token")


def test_expired_says_when() -> None:
    token, record = minted(ttl_seconds=60)
    parsed = tokens.parse(token)
    tokens.check(parsed, record, NOW + 59)
    with pytest.raises(TokenError, match=r"expired at 2025-03-01T12:01:00\+00:00") as caught:
        tokens.check(parsed, record, NOW + 60)
    assert caught.value.reason == "expired"


def test_used_up_and_unlimited() -> None:
    token, record = minted(uses=2)
    parsed = tokens.parse(token)
    tokens.check(parsed, TokenRecord.from_dict(record.to_dict() | {"uses_left": 1}), NOW)
    with pytest.raises(TokenError, match="used up") as caught:
        tokens.check(parsed, TokenRecord.from_dict(record.to_dict() | {"uses_left": 0}), NOW)
    assert caught.value.reason == "used-up"
    token, unlimited = minted(uses=None)
    tokens.check(tokens.parse(token), unlimited, NOW + 3599)


def test_pin_mismatch_names_both_sides() -> None:
    token, _ = minted()
    other_root = hashlib.sha256(b"another root").hexdigest()
    with pytest.raises(TokenError, match="is not the one join token") as caught:
        tokens.check_pin(tokens.parse(token), other_root)
    assert caught.value.reason == "pin-mismatch"
    assert other_root[:32] in str(caught.value) and ROOT[:32] in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespace": "Default"}, "namespace 'Default' must be a DNS-1123 label"),
        ({"namespace": "a.b"}, "DNS-1123 label"),
        ({"namespace": "x" * 64}, "at most 63"),
        ({"service_account": "-reviews"}, "DNS-1123 subdomain"),
        ({"service_account": "reviews_v1"}, "DNS-1123 subdomain"),
        ({"ttl_seconds": 0}, "TTL must be a positive number"),
        ({"ttl_seconds": float("inf")}, "TTL must be a positive number"),
        ({"uses": 0}, "at least 1, or None"),
        ({"uses": True}, "at least 1, or None"),
        ({"root_fingerprint": "abc"}, "64 lowercase hex"),
        ({"description": "x" * 300}, "at most 256"),
    ],
)
def test_mint_validates_its_request(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        minted(**overrides)


def test_service_account_may_be_a_dotted_subdomain() -> None:
    _, record = minted(service_account="reviews.v1")
    assert record.service_account == "reviews.v1"


def test_package_level_names_are_the_token_functions() -> None:
    from lattice.identity import check_token, check_token_pin, mint_token, parse_token

    token, record = mint_token("default", "reviews", 60, None, NOW, ROOT)
    parsed = parse_token(token)
    check_token(parsed, record, NOW)
    check_token_pin(parsed, ROOT)


def test_a_token_serves_the_service_named_like_its_account_unless_told_otherwise() -> None:
    _, record = minted()
    assert record.services == ("reviews",) and record.may_serve("reviews") and not record.may_serve("vault")
    _, named = minted(service_account="reviews-canary", services=["reviews", "reviews", "ratings"])
    assert named.services == ("ratings", "reviews") and not named.may_serve("reviews-canary")
    _, dotted = minted(service_account="build.bot")
    assert dotted.services == ()  # a dotted account names no service: it serves none unless told
    assert TokenRecord.from_dict(named.to_dict()) == named
    legacy = {k: v for k, v in record.to_dict().items() if k != "services"}
    assert TokenRecord.from_dict(legacy).services == ("reviews",)


@pytest.mark.parametrize("services", [["Vault"], ["a.b"], [""], ["x"] * 0 + [f"s{i}" for i in range(33)], "vault"])
def test_services_must_be_service_names(services) -> None:
    with pytest.raises(ValueError, match="service"):
        minted(services=services)
