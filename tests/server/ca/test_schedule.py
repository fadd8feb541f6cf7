"""SPIRE's rotation schedule: prepare at 1/2 of a key's life, activate at 5/6."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from spiffed.server.ca.schedule import activation_threshold, preparation_threshold

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_default_24h_ca_prepares_at_12h_and_activates_at_20h() -> None:
    end = T0 + timedelta(hours=24)
    assert preparation_threshold(T0, end) == T0 + timedelta(hours=12)
    assert activation_threshold(T0, end) == T0 + timedelta(hours=20)


def test_long_lived_keys_cap_the_lead_times() -> None:
    end = T0 + timedelta(days=365)
    assert preparation_threshold(T0, end) == end - timedelta(days=30)
    assert activation_threshold(T0, end) == end - timedelta(days=7)


@given(st.integers(min_value=6, max_value=10**9))
def test_fed_02_new_key_is_published_before_it_signs(lifetime_s: int) -> None:
    end = T0 + timedelta(seconds=lifetime_s)
    prepare = preparation_threshold(T0, end)
    activate = activation_threshold(T0, end)
    assert T0 < prepare < activate < end
