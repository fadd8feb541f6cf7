"""Interop with py-spiffe (``spiffe`` 0.3.x): our tokens pass its validator, and the §4.3
table runs through both libraries.

py-spiffe has no ``now`` argument: it checks ``exp`` against the wall clock, so these tests
build their tokens at the wall clock (taken once, when the first test of this file runs, not
at collection) with a 5-minute lifetime and give our validator the same ``now``. Where the
two libraries disagree, a dedicated test asserts both outcomes and its docstring names the
rule that decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
import spiffe

from spiffed.bundle.jwt import JwtBundle
from spiffed.svid.jwt import JwtSvid, JwtSvidError, sign_jwt_svid

from .test_jwt_negative import CASES, Case, cases
from .test_jwt_support import (
    AUD,
    ID,
    KEY_KINDS,
    TD,
    bundle,
    forge,
    good_header,
    good_payload,
    key,
    kid,
)

pytestmark = pytest.mark.interop


@cache
def wall() -> datetime:
    """The wall clock when first asked; every token of this file is built around it."""
    return datetime.now(UTC).replace(microsecond=0)


@cache
def table() -> dict[str, Case]:
    """The §4.3 table at :func:`wall`, by case name."""
    return {c.name: c for c in cases(wall())}


def py_bundle(ours: JwtBundle) -> spiffe.JwtBundle:
    """The same keys as a py-spiffe JwtBundle."""
    return spiffe.JwtBundle(spiffe.TrustDomain(ours.trust_domain.name), dict(ours.authorities))


def py_accepts(token: str, ours: JwtBundle, audience: Iterable[str]) -> bool:
    """py-spiffe's verdict. It raises several unrelated types (even KeyError), so any
    exception counts as a rejection."""
    try:
        spiffe.JwtSvid.parse_and_validate(token, py_bundle(ours), set(audience))
    except Exception:
        return False
    return True


def we_accept(token: str, ours: JwtBundle, audience: str, **kw: bool) -> bool:
    """Our verdict at the same wall-clock instant."""
    try:
        JwtSvid.parse_and_validate(token, ours, audience, now=wall(), **kw)
    except JwtSvidError:
        return False
    return True


# --- our tokens in py-spiffe -------------------------------------------------------------


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_jwt_interop_pyspiffe_accepts_our_tokens(kind: str) -> None:
    token = sign_jwt_svid(
        ID,
        [AUD, "other"],
        key(kind),
        kid(kind),
        timedelta(minutes=5),
        issued_at=wall(),
        issuer="https://oidc.example.org",
        extra_claims={"jti": "1"},
    )
    svid = spiffe.JwtSvid.parse_and_validate(token, py_bundle(bundle()), {AUD})
    assert str(svid.spiffe_id) == str(ID)
    assert svid.audience == {AUD, "other"}
    assert svid.expiry == int(wall().timestamp()) + 300


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "PS384", "PS512"])
def test_jwt_interop_pyspiffe_accepts_other_rsa_algorithms(alg: str) -> None:
    token = sign_jwt_svid(
        ID, AUD, key("RSA"), kid("RSA"), timedelta(minutes=5), issued_at=wall(), algorithm=alg
    )
    assert spiffe.JwtSvid.parse_and_validate(token, py_bundle(bundle()), {AUD}).token == token


# --- the shared table ---------------------------------------------------------------------

NAMES = [c.name for c in CASES]  # the same names as the table built at the wall clock

# Rows where py-spiffe decides otherwise; each has its own test below.
DISAGREE = {
    "row_15_jku",
    "row_15_x5u",
    "row_15_x5c",
    "row_19_no_kid_allowed_accepted",
}


def _bundle_for(case: Case) -> JwtBundle:
    """py-spiffe takes one bundle: the sub's trust domain's when there is one."""
    return case.for_trust_domain(TD) or case.bundles[0]


@pytest.mark.parametrize("name", [n for n in NAMES if n not in DISAGREE])
def test_jwt_interop_table_same_verdict(name: str) -> None:
    case = table()[name]
    ours = we_accept(
        case.token, _bundle_for(case), case.audience, allow_missing_kid=case.allow_missing_kid
    )
    assert ours is case.accept
    assert py_accepts(case.token, _bundle_for(case), [case.audience]) is case.accept


def test_jwt_interop_every_disagreement_is_in_the_table() -> None:
    assert set(NAMES) >= DISAGREE
    assert set(NAMES) == set(table())


# --- disagreements ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["row_15_jku", "row_15_x5u", "row_15_x5c"])
def test_jwt_02_row_15_key_location_headers_py_spiffe_accepts_we_reject(name: str) -> None:
    """JWT-02 and §4.3 row 15 decide: a JWT-SVID header holds only alg, kid and typ, and a
    token with jku/x5u/x5c is rejected (our choice in the table). py-spiffe ignores these
    headers (it still takes the key from the bundle, so it is not exploitable there)."""
    case = table()[name]
    assert not we_accept(case.token, bundle(), AUD)
    assert py_accepts(case.token, bundle(), [AUD])


def test_jwt_05_amb_04_missing_kid_py_spiffe_rejects_we_allow_on_request() -> None:
    """JWT-05 and AMB-04 decide: kid is OPTIONAL in the spec; our validator rejects by
    default like go-spiffe and SPIRE, and with allow_missing_kid=True tries every key.
    py-spiffe always rejects."""
    token = forge(good_header(kid=None), good_payload(at=wall()), key("P-256"))
    assert not we_accept(token, bundle(), AUD)
    assert we_accept(token, bundle(), AUD, allow_missing_kid=True)
    assert not py_accepts(token, bundle(), [AUD])


@pytest.mark.parametrize("sub", ["spiffe://EXAMPLE.org/a", "SPIFFE://example.org/a"])
def test_jwt_07_amb_01_uppercase_sub_py_spiffe_accepts_we_reject(sub: str) -> None:
    """JWT-07 with ID-03/AMB-01 decide: sub must be a valid SPIFFE ID, and uppercase in the
    scheme or trust domain is invalid (§4.3 row 8). py-spiffe lowercases and accepts."""
    token = forge(good_header(), good_payload(at=wall(), sub=sub), key("P-256"))
    assert not we_accept(token, bundle(), AUD)
    assert py_accepts(token, bundle(), [AUD])


def test_jwt_10_schema_fractional_exp_py_spiffe_accepts_we_reject() -> None:
    """JWT-10 with the JWT-SVID.schema (§4.2: exp is an integer) decides; RFC 7519 alone
    would allow a fraction. py-spiffe accepts a float exp."""
    exp = (wall() + timedelta(minutes=5)).timestamp() + 0.5
    token = forge(good_header(), good_payload(at=wall(), exp=exp), key("P-256"))
    assert not we_accept(token, bundle(), AUD)
    assert py_accepts(token, bundle(), [AUD])


def test_jwt_10_leeway_py_spiffe_rejects_we_accept_within_a_minute() -> None:
    """JWT-10 decides: 'a small leeway is allowed'. Ours is go-jose's one minute (as
    go-spiffe and SPIRE); py-spiffe allows none."""
    exp = int(wall().timestamp()) - 30
    token = forge(good_header(), good_payload(at=wall(), exp=exp), key("P-256"))
    assert we_accept(token, bundle(), AUD)
    assert not py_accepts(token, bundle(), [AUD])


def test_jwt_10_missing_exp_py_spiffe_fails_with_key_error() -> None:
    """JWT-10 decides (exp MUST be present): both reject, but py-spiffe raises a bare
    KeyError rather than one of its own error types; ours raises JwtSvidError."""
    token = forge(good_header(), good_payload(at=wall(), exp=None), key("P-256"))
    with pytest.raises(JwtSvidError, match="no 'exp'"):
        JwtSvid.parse_and_validate(token, bundle(), AUD, now=wall())
    with pytest.raises(KeyError):
        spiffe.JwtSvid.parse_and_validate(token, py_bundle(bundle()), {AUD})
