"""Back-off, renewal times and rate limits, driven by explicit clocks (no waiting)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffed.backoff import Backoff, renewal_time
from spiffed.ratelimit import KeyedRateLimiter


def test_backoff_grows_to_the_cap_and_resets() -> None:
    b = Backoff(initial=1, maximum=8, jitter=0, rng=random.Random(1))
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next_delay() == 1


@given(st.integers(min_value=0, max_value=2**32))
def test_backoff_jitter_stays_in_its_window(seed: int) -> None:
    b = Backoff(initial=1, maximum=30, jitter=0.5, rng=random.Random(seed))
    for nominal in (1, 2, 4, 8, 16, 30, 30):
        assert nominal * 0.5 <= b.next_delay() <= nominal


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=10, maximum=1)


@given(st.integers(min_value=60, max_value=10**7), st.integers(min_value=0, max_value=2**32))
def test_renewal_happens_before_half_life_and_not_too_early(life_s: int, seed: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(seconds=life_s)
    at = renewal_time(start, end, rng=random.Random(seed))
    assert start + (end - start) * 0.4 - timedelta(microseconds=1) <= at
    assert at <= start + (end - start) / 2


def test_a_backdated_short_svid_is_renewed_at_half_its_life_from_arrival() -> None:
    """A 10 s SVID backdated 10 s is at half-life on arrival; counted from its arrival it is
    renewed about 5 s later instead of at once (and again and again)."""
    received = datetime(2026, 1, 1, tzinfo=UTC)
    not_before, not_after = received - timedelta(seconds=10), received + timedelta(seconds=10)
    assert renewal_time(not_before, not_after, jitter=0) == received
    assert renewal_time(not_before, not_after, jitter=0, received=received) == received + (
        timedelta(seconds=5)
    )
    # Arriving after it expired (a clock jump) gives "renew now", never a time past not_after.
    late = not_after + timedelta(seconds=1)
    assert renewal_time(not_before, not_after, received=late) == not_after


def test_rate_limit_per_key_refills_with_time() -> None:
    now = [0.0]
    limiter = KeyedRateLimiter(rate=1, burst=2, clock=lambda: now[0])
    assert limiter.allow("10.0.0.1")
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1"), "burst used up"
    assert limiter.allow("10.0.0.2"), "other callers are unaffected"
    now[0] = 1.0
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")


def test_rate_limit_table_is_bounded() -> None:
    now = [0.0]
    limiter = KeyedRateLimiter(rate=1, burst=1, max_keys=100, clock=lambda: now[0])
    for i in range(10_000):
        limiter.allow(i)
    assert len(limiter) == 100
