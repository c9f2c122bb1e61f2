"""Limit parsing and validation, key builders, headers and the limiter's configuration errors."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.context import Principal, bind_context
from mainspring.errors import RateLimitedError, ValidationError
from mainspring.security import (
    Decision,
    Limit,
    RateLimitBackendError,
    RateLimiter,
    RateLimitKey,
    Strategy,
    parse_limit,
    rate_limit_headers,
)

UNITS = {
    "s": 1,
    "second": 1,
    "seconds": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


@pytest.mark.parametrize(
    ("text", "rate", "per"),
    [
        ("100/minute", 100, 60),
        ("10/s", 10, 1),
        ("5/10s", 5, 10),
        ("1000 per hour", 1000, 3600),
        ("  7 / 2 days ", 7, 172800),
        ("3/0.5s", 3, 0.5),
        ("20/MIN", 20, 60),
    ],
)
def test_limit_strings_parse_to_rate_and_period(text: str, rate: int, per: float) -> None:
    limit = parse_limit(text)
    assert (limit.rate, limit.per) == (rate, per)
    assert limit.strategy is Strategy.SLIDING_WINDOW


@given(rate=st.integers(1, 10**9), count=st.integers(1, 1000), unit=st.sampled_from(sorted(UNITS)))
def test_generated_limit_strings_round_trip(rate: int, count: int, unit: str) -> None:
    limit = Limit.parse(f"{rate}/{count}{unit}", strategy=Strategy.GCRA, burst=3)
    assert limit.rate == rate
    assert limit.per == count * UNITS[unit]
    assert (limit.strategy, limit.capacity) == (Strategy.GCRA, 3)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "/minute",
        "100/",
        "100/fortnight",
        "-1/s",
        "0/s",
        "1.5/s",
        "100/0s",
        "100/minute/s",
        "ten/s",
    ],
)
def test_unparsable_or_zero_limit_strings_are_validation_errors(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_limit(text)
    assert info.value.errors


@given(st.text(string.printable, max_size=30).filter(lambda s: "/" not in s and " per " not in s))
def test_arbitrary_text_without_a_separator_never_parses(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_limit(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0, "per": 1},
        {"rate": -5, "per": 1},
        {"rate": 1.5, "per": 1},
        {"rate": True, "per": 1},
        {"rate": 10**10, "per": 1},
        {"rate": 1, "per": 0},
        {"rate": 1, "per": -1},
        {"rate": 1, "per": math.nan},
        {"rate": 1, "per": math.inf},
        {"rate": 1, "per": 0.0001},
        {"rate": 1, "per": "60"},
        {"rate": 1, "per": 1, "burst": 0, "strategy": Strategy.GCRA},
        {"rate": 1, "per": 1, "burst": 5},
    ],
)
def test_bad_limit_values_are_validation_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Limit(**kwargs)  # type: ignore[arg-type]


def test_limits_differing_in_strategy_or_parameters_get_different_storage_keys() -> None:
    limiter = RateLimiter()
    a = Limit(10, 60)
    keys = {
        limiter.storage_key("ip", a),
        limiter.storage_key("ip", Limit(10, 60, strategy=Strategy.FIXED_WINDOW)),
        limiter.storage_key("ip", Limit(10, 30)),
        limiter.storage_key("ip", Limit(10, 60, burst=20, strategy=Strategy.GCRA)),
        limiter.storage_key("ip", Limit(10, 60, strategy=Strategy.GCRA)),
    }
    assert len(keys) == 5
    assert limiter.storage_key("ip", a) == limiter.storage_key("ip", Limit(10, 60))


def test_ip_keys_normalise_addresses_and_group_ipv6_by_prefix() -> None:
    assert RateLimitKey.ip("192.0.2.1") == "global:ip:192.0.2.1"
    assert RateLimitKey.ip("::ffff:192.0.2.1") == RateLimitKey.ip("192.0.2.1")
    assert RateLimitKey.ip("2001:db8::1", scope="login") == RateLimitKey.ip("2001:db8::ffff", scope="login")
    assert RateLimitKey.ip("2001:db8::1") != RateLimitKey.ip("2001:db8:0:1::1")
    assert RateLimitKey.ip("2001:db8::1", scope="a") != RateLimitKey.ip("2001:db8::1", scope="b")


def test_a_non_ip_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="not an IP address"):
        RateLimitKey.ip("example.com")


@given(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10), st.text(max_size=10))
def test_route_keys_never_collide_across_part_boundaries(a: str, b: str, c: str, d: str) -> None:
    if (a, b) != (c, d):
        assert RateLimitKey.route("GET", a, by=b) != RateLimitKey.route("GET", c, by=d)


def test_principal_keys_come_from_the_context_and_include_the_tenant() -> None:
    alice = Principal(id="alice", tenant="t1")
    with bind_context(principal=alice):
        key = RateLimitKey.principal(scope="api")
    assert key == "api:principal:user:t1:alice"
    assert RateLimitKey.principal(Principal(id="alice", tenant="t2")) != RateLimitKey.principal(alice)
    with pytest.raises(ValidationError, match="no principal"):
        RateLimitKey.principal()


def test_api_key_keys_use_the_public_prefix_and_never_the_secret() -> None:
    key = RateLimitKey.api_key("msk_ab12cd_s3cr3tvalue")
    assert key == "global:apikey:ab12cd"
    assert "s3cr3t" not in key
    assert RateLimitKey.api_key("ab12cd") == key
    with pytest.raises(ValidationError):
        RateLimitKey.api_key("")


def test_headers_for_an_allowed_decision_carry_quota_and_no_retry_after() -> None:
    headers = rate_limit_headers(Decision(True, 100, 37, 23.2, 0.0, 60))
    assert headers == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "37",
        "RateLimit-Reset": "24",
        "RateLimit-Policy": "100;w=60",
    }


def test_headers_for_a_denied_decision_round_retry_after_up_to_whole_seconds() -> None:
    headers = rate_limit_headers(Decision(False, 10, 0, 4.5, 0.2, 1))
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Remaining"] == "0"
    assert rate_limit_headers(Decision(False, 10, 0, 4.5, 2.01, 1))["Retry-After"] == "3"


@pytest.mark.parametrize("url", ["postgres://x", "nope", "http://localhost"])
def test_unsupported_urls_are_validation_errors(url: str) -> None:
    with pytest.raises(ValidationError, match="memory:// or redis://"):
        RateLimiter(url)


@pytest.mark.parametrize("timeout", [0, -1, math.nan])
def test_a_non_positive_timeout_is_a_validation_error(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        RateLimiter(timeout=timeout)


def test_a_url_password_never_appears_in_the_limiter_description() -> None:
    assert "hunter2" not in RateLimiter("redis://:hunter2@localhost:6379/0").url


async def test_deciding_before_start_says_to_start_the_limiter() -> None:
    with pytest.raises(RateLimitBackendError, match="start"):
        await RateLimiter().hit("k", Limit(1, 1))


async def test_check_raises_429_with_retry_after_once_the_quota_is_used() -> None:
    limit = Limit(2, 60, strategy=Strategy.FIXED_WINDOW)
    async with RateLimiter() as limiter:
        await limiter.check("k", limit)
        await limiter.check("k", limit)
        with pytest.raises(RateLimitedError) as info:
            await limiter.check("k", limit)
    assert info.value.http_status == 429
    assert 0 < info.value.retry_after <= 60
    assert info.value.to_problem()["retry_after"] == info.value.retry_after
    assert limiter.stats.allowed == 2
    assert limiter.stats.denied == 1
