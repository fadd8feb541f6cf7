"""Go durations and SPIRE's -expandEnv, against answers taken from Go 1.26 itself."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffed.config import ConfigError, expand_env, format_duration, parse_duration
from spiffed.config.duration import parse_duration_ns

# (text, nanoseconds or None for an error) as printed by time.ParseDuration in Go 1.26.
GO_DURATIONS = [
    ("24h", 86400000000000),
    ("1h30m", 5400000000000),
    ("90s", 90000000000),
    ("500ms", 500000000),
    ("0", 0),
    ("-0", 0),
    ("+5m", 300000000000),
    ("1.5h", 5400000000000),
    (".5s", 500000000),
    ("5.s", 5000000000),
    ("1\u00b5s", 1000),
    ("1\u03bcs", 1000),
    ("1us", 1000),
    ("2ns", 2),
    ("-1h", -3600000000000),
    ("2562047h47m16.854775807s", 9223372036854775807),
    ("1.0000000001s", 1000000000),
    ("0.3333333333h", 1199999999880),
    ("3m2h", 7380000000000),
    ("1d", None),
    ("", None),
    ("h", None),
    ("5", None),
    ("1h-5m", None),
    (".", None),
    ("2562047h47m16.854775808s", None),
    ("1e3s", None),
]


@pytest.mark.parametrize(("text", "expected"), GO_DURATIONS)
def test_durations_parse_as_go_parses_them(text: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError) as info:
            parse_duration_ns(text, key="server.ca_ttl")
        assert info.value.key == "server.ca_ttl"
        assert repr(text) in str(info.value)
    else:
        assert parse_duration_ns(text) == expected


def test_duration_error_names_the_unit() -> None:
    with pytest.raises(ConfigError, match="unknown unit 'd'"):
        parse_duration("7d", key="server.ca_ttl")


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10000)))
def test_format_then_parse_round_trips(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


@given(st.text(max_size=20))
def test_random_duration_text_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_duration(text)


# (text, expansion) from Go's os.Expand with SPIRE's mapping, FOO=bar.
GO_EXPANSIONS = [
    ("$FOO", "bar"),
    ("${FOO}", "bar"),
    ("$$", "$"),
    ("$", "$"),
    ("a$", "a$"),
    ("${}", ""),
    ("${FOO", "FOO"),
    ("$1", ""),
    ("${1}", ""),
    ("$-x", "x"),
    ("$FOO_BAR.x", ".x"),
    ("x$.y", "x$.y"),
    ("${ FOO}", ""),
    ("$$FOO", "$FOO"),
    ("a${FOO}b$FOO", "abarbbar"),
]


@pytest.mark.parametrize(("text", "expected"), GO_EXPANSIONS)
def test_expand_env_matches_go(text: str, expected: str) -> None:
    assert expand_env(text, {"FOO": "bar"}) == expected


@given(st.text(alphabet="ab$}{ _1-", max_size=30))
def test_expand_env_without_dollars_is_identity_and_never_fails(text: str) -> None:
    out = expand_env(text, {"a": "X"})
    if "$" not in text:
        assert out == text
