"""Property tests: random and mutated tokens only ever raise JwtSvidError (JWT-01, JWT-04)."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spiffed.svid.jwt import JwtSvid, JwtSvidError, sign_jwt_svid

from .test_jwt_support import AUD, KEY_KINDS, NOW, b64, bundle, good_token, key, kid

_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TOKEN = good_token()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _both(token: str) -> None:
    """Run both parsers; anything but success or JwtSvidError fails the test."""
    for parse in (
        lambda: JwtSvid.parse_and_validate(token, bundle(), AUD, now=NOW, allow_missing_kid=True),
        lambda: JwtSvid.parse_insecure(token),
    ):
        with contextlib.suppress(JwtSvidError):
            parse()


@_SETTINGS
@given(st.text())
@example("..")
@example("a.b.c")
@example("e30.e30.")
@example("\udcff.\udcff.\udcff")
@example(_TOKEN.split(".")[0] + ".\u00e9\udcff.AAAA")
@example(_TOKEN.split(".")[0] + ".e30.\u00e9")
def test_jwt_01_random_text_raises_only_jwtsvid_error(token: str) -> None:
    _both(token)


@_SETTINGS
@given(
    st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_=+/.", max_size=40), min_size=1, max_size=6)
)
def test_jwt_01_random_dotted_base64ish_raises_only_jwtsvid_error(pieces: list[str]) -> None:
    _both(".".join(pieces))


@_SETTINGS
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), json_values)
def test_jwt_random_header_and_payload_raise_only_jwtsvid_error(
    header: dict[str, Any], payload: Any
) -> None:
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.AAAA"
    _both(token)
    h = {"alg": "ES256", "kid": kid("P-256"), **header}
    _both(f"{b64(json.dumps(h).encode())}.{b64(json.dumps(payload).encode())}.AAAA")


@_SETTINGS
@given(st.data())
def test_jwt_12_mutated_token_is_rejected(data: st.DataObject) -> None:
    """Any single-character change of a good token fails, and only with JwtSvidError."""
    i = data.draw(st.integers(0, len(_TOKEN) - 1))
    c = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")
    )
    mutated = _TOKEN[:i] + c + _TOKEN[i + 1 :]
    if mutated == _TOKEN:
        return
    try:
        JwtSvid.parse_and_validate(mutated, bundle(), AUD, now=NOW)
    except JwtSvidError:
        return
    raise AssertionError(f"mutation at {i} to {c!r} was accepted")


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KEY_KINDS),
    path=st.from_regex(r"(/[a-zA-Z0-9._-]{1,8}){1,3}", fullmatch=True).filter(
        lambda p: all(s not in (".", "..") for s in p.split("/")[1:])
    ),
    audiences=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3),
    ttl=st.integers(1, 10**6),
    extra=st.dictionaries(st.sampled_from(["jti", "x", "y"]), json_values, max_size=2),
)
def test_jwt_round_trip_property(
    kind: str, path: str, audiences: list[str], ttl: int, extra: dict[str, Any]
) -> None:
    spiffe_id = f"spiffe://example.org{path}"
    token = sign_jwt_svid(
        spiffe_id,
        audiences,
        key(kind),
        kid(kind),
        timedelta(seconds=ttl),
        issued_at=NOW,
        extra_claims=extra,
    )
    svid = JwtSvid.parse_and_validate(token, bundle(), audiences[-1], now=NOW)
    assert str(svid.spiffe_id) == spiffe_id
    assert svid.audience == tuple(dict.fromkeys(audiences))
    assert svid.expiry == NOW + timedelta(seconds=ttl)
    for name, value in extra.items():
        assert svid.claims[name] == json.loads(json.dumps(value))
