"""JWT-SVID rules JWT-01..JWT-18 and the issuer's duties (sign_jwt_svid)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from spiffed.svid.jwt import DEFAULT_LEEWAY, JwtSvid, JwtSvidError, sign_jwt_svid

from .test_jwt_support import (
    ALG_FOR_KIND,
    AUD,
    ID,
    ID_B,
    KEY_KINDS,
    NOW,
    TD,
    TD_B,
    Bundles,
    b64,
    bundle,
    forge,
    good_header,
    good_payload,
    good_token,
    key,
    kid,
    unb64,
)


def validate(token: str, source: object = None, audience: object = AUD, **kw: object) -> JwtSvid:
    return JwtSvid.parse_and_validate(
        token,
        source if source is not None else bundle(),  # type: ignore[arg-type]
        audience,  # type: ignore[arg-type]
        now=kw.pop("now", NOW),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def parts(token: str) -> tuple[dict[str, object], dict[str, object], bytes]:
    h, p, s = token.split(".")
    return json.loads(unb64(h)), json.loads(unb64(p)), unb64(s)


# --- issuer -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_jwt_round_trip_every_key_type(kind: str) -> None:
    svid = validate(good_token(kind))
    assert svid.spiffe_id == ID
    assert svid.audience == (AUD,)
    assert svid.expiry == NOW + timedelta(minutes=5)
    assert svid.issued_at == NOW
    assert svid.header == {"alg": ALG_FOR_KIND[kind], "kid": kid(kind), "typ": "JWT"}
    assert svid.key_id == kid(kind)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_jwt_03_rsa_algorithms_on_request(alg: str) -> None:
    token = good_token("RSA", algorithm=alg)
    assert parts(token)[0]["alg"] == alg
    assert validate(token).header["alg"] == alg


def test_jwt_02_header_is_exactly_alg_kid_typ() -> None:
    header, payload, _ = parts(good_token(issuer="https://issuer.example"))
    assert header == {"alg": "ES256", "kid": kid("P-256"), "typ": "JWT"}
    assert list(header) == ["alg", "kid", "typ"]
    assert set(payload) == {"sub", "aud", "exp", "iat", "iss"}


def test_jwt_row_16_issuer_es_signature_is_raw_r_s() -> None:
    for kind, size in (("P-256", 64), ("P-384", 96), ("P-521", 132)):
        assert len(parts(good_token(kind))[2]) == size


def test_amb_19_every_audience_in_aud_as_array() -> None:
    token = good_token(audience=["a", "b", "a"])
    assert parts(token)[1]["aud"] == ["a", "b"]
    assert parts(good_token(audience=["only"]))[1]["aud"] == "only"
    assert validate(token, audience="b").audience == ("a", "b")


def test_amb_21_issuer_refuses_root_sub() -> None:
    with pytest.raises(JwtSvidError, match="AMB-21"):
        good_token(spiffe_id=TD.id)
    with pytest.raises(JwtSvidError, match="AMB-21"):
        good_token(spiffe_id="spiffe://example.org")


@pytest.mark.parametrize("bad", ["", [], [""], ["a", 3]])
def test_jwt_08_issuer_refuses_empty_audience(bad: object) -> None:
    with pytest.raises(JwtSvidError, match="audience"):
        good_token(audience=bad)


@pytest.mark.parametrize("expires", [timedelta(0), timedelta(seconds=-5), NOW, NOW - timedelta(1)])
def test_jwt_10_issuer_refuses_exp_not_after_iat(expires: object) -> None:
    with pytest.raises(JwtSvidError, match="not after"):
        good_token(expires=expires)


def test_jwt_10_issuer_takes_absolute_expiry() -> None:
    token = good_token(expires=NOW + timedelta(seconds=90))
    assert parts(token)[1]["exp"] == int(NOW.timestamp()) + 90


def test_jwt_05_issuer_refuses_empty_kid() -> None:
    with pytest.raises(JwtSvidError, match="key_id"):
        good_token(key_id="")


@pytest.mark.parametrize(
    ("kind", "alg"), [("P-256", "ES384"), ("P-256", "RS256"), ("RSA", "ES256"), ("RSA", "HS256")]
)
def test_jwt_04_issuer_refuses_alg_that_does_not_fit_key(kind: str, alg: str) -> None:
    with pytest.raises(JwtSvidError, match="cannot be used"):
        good_token(kind, algorithm=alg)


def test_jwt_03_issuer_refuses_unsupported_curve() -> None:
    with pytest.raises(JwtSvidError, match="secp256k1"):
        sign_jwt_svid(ID, AUD, key("secp256k1"), "k", timedelta(minutes=1), issued_at=NOW)


def test_jwt_13_extra_claims_kept_but_cannot_override_registered() -> None:
    token = good_token(extra_claims={"jti": "abc", "x": {"y": [1, 2]}})
    assert validate(token).claims["jti"] == "abc"
    for name in ("sub", "aud", "exp", "iat", "iss"):
        with pytest.raises(JwtSvidError, match=name):
            good_token(extra_claims={name: "x"})
    with pytest.raises(JwtSvidError, match="JSON"):
        good_token(extra_claims={"x": object()})


def test_jwt_issuer_requires_aware_times() -> None:
    with pytest.raises(JwtSvidError, match="timezone"):
        good_token(issued_at=NOW.replace(tzinfo=None))


# --- validator ----------------------------------------------------------------------------


def test_jwt_01_compact_only() -> None:
    token = good_token()
    h, p, s = token.split(".")
    flattened = json.dumps({"protected": h, "payload": p, "signature": s})
    with pytest.raises(JwtSvidError, match="JSON serialization"):
        validate(flattened)
    with pytest.raises(JwtSvidError, match="parts"):
        validate(token + ".x")


def test_jwt_02_unknown_private_header_is_tolerated_but_key_headers_are_not() -> None:
    ok = forge(good_header(zzz="private"), good_payload(), key("P-256"))
    assert validate(ok).header["zzz"] == "private"
    bad = forge(good_header(crit=["exp"]), good_payload(), key("P-256"))
    with pytest.raises(JwtSvidError, match="crit"):
        validate(bad)


def test_jwt_04_alg_checked_before_anything_else() -> None:
    # Everything else is wrong too (no sub, bad payload); the error names alg.
    token = forge({"alg": "HS256"}, {}, None) + "AAAA"
    with pytest.raises(JwtSvidError, match="'alg'"):
        validate(token, Bundles())


@pytest.mark.parametrize("kind", ["P-384", "P-521", "RSA"])
def test_jwt_04_es256_header_needs_p256_key(kind: str) -> None:
    token = forge(good_header(alg="ES256", kid=kid(kind)), good_payload(), key("P-256"))
    with pytest.raises(JwtSvidError, match="does not fit key"):
        validate(token)


def test_jwt_05_kid_required_by_default() -> None:
    token = forge(good_header(kid=None), good_payload(), key("P-256"))
    with pytest.raises(JwtSvidError, match="no 'kid'"):
        validate(token)


def test_jwt_05_kid_must_be_string() -> None:
    token = forge(good_header(kid=7), good_payload(), key("P-256"))
    with pytest.raises(JwtSvidError, match="'kid'"):
        validate(token)


@pytest.mark.parametrize("typ", [None, "JWT", "JOSE"])
def test_jwt_06_typ_absent_or_jwt_or_jose(typ: str | None) -> None:
    token = forge(good_header(typ=typ), good_payload(), key("P-256"))
    assert validate(token).spiffe_id == ID


@pytest.mark.parametrize("typ", ["jwt", "Jose", "", 1])
def test_jwt_06_amb_06_typ_exact_match(typ: object) -> None:
    token = forge(good_header(typ=typ), good_payload(), key("P-256"))
    with pytest.raises(JwtSvidError, match="'typ'"):
        validate(token)


def test_jwt_07_sub_is_the_spiffe_id() -> None:
    assert validate(good_token()).spiffe_id == ID
    token = forge(good_header(), good_payload(sub=123), key("P-256"))
    with pytest.raises(JwtSvidError, match="'sub'"):
        validate(token)


def test_jwt_07_amb_21_validator_accepts_trust_domain_sub() -> None:
    token = forge(good_header(), good_payload(sub="spiffe://example.org"), key("P-256"))
    assert validate(token).spiffe_id == TD.id


def test_jwt_08_amb_05_aud_string_or_array() -> None:
    as_string = forge(good_header(), good_payload(aud=AUD), key("P-256"))
    as_array = forge(good_header(), good_payload(aud=["x", AUD]), key("P-256"))
    assert validate(as_string).claims["aud"] == [AUD]
    assert validate(as_array).audience == ("x", AUD)


@pytest.mark.parametrize("aud", [5, {"a": 1}, [AUD, 5], [""], ""])
def test_jwt_08_aud_bad_types_rejected(aud: object) -> None:
    token = forge(good_header(), good_payload(aud=aud), key("P-256"))
    with pytest.raises(JwtSvidError, match="'aud'"):
        validate(token)


def test_jwt_08_every_expected_audience_must_be_present() -> None:
    token = good_token(audience=["a", "b"])
    assert validate(token, audience=["a", "b"]).audience == ("a", "b")
    with pytest.raises(JwtSvidError, match="'c'"):
        validate(token, audience=["a", "c"])
    for bad in ("", [], [""]):
        with pytest.raises(JwtSvidError, match="expected audience"):
            validate(token, audience=bad)


def test_jwt_10_leeway_boundaries() -> None:
    token = good_token()  # exp = NOW + 5 min
    exp = NOW + timedelta(minutes=5)
    assert validate(token, now=exp).spiffe_id == ID  # within the default leeway
    assert validate(token, now=exp + DEFAULT_LEEWAY - timedelta(seconds=1)).spiffe_id == ID
    with pytest.raises(JwtSvidError, match="expired"):
        validate(token, now=exp + DEFAULT_LEEWAY)
    with pytest.raises(JwtSvidError, match="expired"):
        validate(token, now=exp, leeway=timedelta(0))


def test_jwt_10_validator_needs_aware_now_and_sane_leeway() -> None:
    with pytest.raises(JwtSvidError, match="timezone"):
        validate(good_token(), now=NOW.replace(tzinfo=None))
    with pytest.raises(JwtSvidError, match="leeway"):
        validate(good_token(), leeway=timedelta(seconds=-1))


@pytest.mark.parametrize("exp", [1.5, True, None, 10**30])
def test_jwt_10_exp_must_be_an_integer_in_range(exp: object) -> None:
    payload = good_payload(exp=exp) if exp is not None else good_payload()
    payload["exp"] = exp
    token = forge(good_header(), payload, key("P-256"))
    with pytest.raises(JwtSvidError, match="'exp'"):
        validate(token)


def test_jwt_11_long_lifetime_accepted() -> None:
    token = good_token(expires=timedelta(days=3650))
    assert validate(token).expiry == NOW + timedelta(days=3650)


def test_jwt_12_nbf_honoured_with_leeway() -> None:
    nbf = int((NOW + timedelta(minutes=2)).timestamp())
    token = forge(good_header(), good_payload(nbf=nbf), key("P-256"))
    with pytest.raises(JwtSvidError, match="not valid before"):
        validate(token)
    assert validate(token, now=NOW + timedelta(minutes=1)).spiffe_id == ID  # leeway 1 min
    bad = forge(good_header(), good_payload(nbf="soon"), key("P-256"))
    with pytest.raises(JwtSvidError, match="'nbf'"):
        validate(bad)


def test_jwt_13_private_claims_and_jti_pass_through() -> None:
    token = forge(good_header(), good_payload(jti="1", **{"example.org/x": True}), key("P-256"))
    assert validate(token).claims["example.org/x"] is True


def test_jwt_17_only_bundle_keys_are_used() -> None:
    # The bundle holds only jwt-svid authorities; an unrelated key with the same curve never
    # verifies, even when the token names a kid the bundle does not have.
    token = forge(good_header(kid="x509-root"), good_payload(), key("P-256", 9))
    with pytest.raises(JwtSvidError, match="not among"):
        validate(token)


def test_jwt_18_only_the_subs_trust_domain_is_asked() -> None:
    # td-b's bundle has the same kid as td-a's but other keys; a td-b token signed by td-a's
    # key must fail, and only td-b is looked up.
    source = Bundles(bundle(TD), bundle(TD_B, ("P-256", 1)))
    forged = forge(good_header(kid=kid("P-256", 1)), good_payload(sub=str(ID_B)), key("P-256"))
    with pytest.raises(JwtSvidError, match="signature"):
        validate(forged, source)
    assert source.asked == [TD_B]
    honest = forge(good_header(kid=kid("P-256", 1)), good_payload(sub=str(ID_B)), key("P-256", 1))
    assert validate(honest, source).spiffe_id == ID_B


def test_jwt_amb_04_missing_kid_tries_every_key_when_allowed() -> None:
    for kind in KEY_KINDS:
        token = forge(good_header(kind, kid=None), good_payload(), key(kind))
        svid = validate(token, allow_missing_kid=True)
        assert svid.key_id is None
    stranger = forge(good_header(kid=None), good_payload(), key("P-256", 5))
    with pytest.raises(JwtSvidError, match="any ES256 key"):
        validate(stranger, allow_missing_kid=True)
    only_rsa = bundle(TD, ("RSA", 0))
    with pytest.raises(JwtSvidError, match="no JWT-SVID key usable"):
        validate(
            forge(good_header(kid=None), good_payload(), key("P-256")),
            only_rsa,
            allow_missing_kid=True,
        )


def test_jwt_parse_insecure_skips_signature_time_and_audience() -> None:
    token = good_token()
    h, p, _ = token.split(".")
    forged = f"{h}.{p}.AAAA"
    svid = JwtSvid.parse_insecure(forged)
    assert svid.spiffe_id == ID
    assert svid.token == forged
    with pytest.raises(JwtSvidError, match="'alg'"):
        JwtSvid.parse_insecure(forge({"alg": "none"}, good_payload()))
    with pytest.raises(JwtSvidError, match="'sub'"):
        JwtSvid.parse_insecure(forge(good_header(), good_payload(sub=None), key("P-256")))


def test_jwt_token_not_in_repr_and_marshal_round_trips() -> None:
    token = good_token()
    svid = validate(token)
    assert token not in repr(svid)
    assert svid.marshal() == token
    assert svid == validate(token)
    assert hash(svid) == hash(validate(token))


def test_jwt_claims_are_read_only() -> None:
    svid = validate(good_token())
    with pytest.raises(TypeError):
        svid.claims["sub"] = "x"  # type: ignore[index]


def test_jwt_wrong_public_key_type_for_curve_is_rejected() -> None:
    # ES512 header with a P-521 kid but signed by P-256: lengths differ, signature fails.
    token = forge(good_header("P-521"), good_payload(), key("P-256"), alg="ES256")
    with pytest.raises(JwtSvidError, match="signature"):
        validate(token)


def test_jwt_09_broad_audience_is_a_should_not_enforced() -> None:
    token = good_token(audience="spiffe://example.org/")
    assert validate(token, audience="spiffe://example.org/").audience == ("spiffe://example.org/",)


def test_jwt_14_token_fits_a_bearer_header() -> None:
    token = good_token("RSA", audience=["a", "b"], extra_claims={"note": "caf\u00e9 \n"})
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    with pytest.raises(JwtSvidError):
        validate("Bearer " + token)  # the caller strips the scheme, not the validator


def test_jwt_16_key_chosen_by_kid_among_several_of_one_type() -> None:
    two = bundle(TD, ("P-256", 0), ("P-256", 1))
    token = forge(good_header(kid=kid("P-256", 1)), good_payload(), key("P-256", 1))
    assert validate(token, two).key_id == kid("P-256", 1)
    wrong = forge(good_header(kid=kid("P-256", 0)), good_payload(), key("P-256", 1))
    with pytest.raises(JwtSvidError, match="signature"):
        validate(wrong, two)


@pytest.mark.parametrize(
    ("exp", "accepted"),
    [(253402300799, True), (-62135596800, False), (0, False)],
)
def test_jwt_10_exp_at_the_edges_of_time(exp: int, accepted: bool) -> None:
    token = forge(good_header(), good_payload(exp=exp, iat=None), key("P-256"))
    if accepted:
        assert validate(token).expiry.year == 9999
    else:
        with pytest.raises(JwtSvidError, match="expired"):
            validate(token)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [253402300800, -62135596801, 10**20, -(10**20), 1e300])
def test_jwt_12_times_out_of_range_are_errors(claim: str, value: float) -> None:
    if claim == "exp" and isinstance(value, float):
        value = 10**400  # exp must be an integer; make it a huge one
    token = forge(good_header(), good_payload(**{claim: value}), key("P-256"))
    with pytest.raises(JwtSvidError, match=f"'{claim}'"):
        validate(token)


def test_jwt_01_duplicate_members_rejected() -> None:
    """Two parsers could read a duplicated 'alg' or 'sub' differently; such tokens fail."""
    token = good_token()
    h, p, s = token.split(".")
    dup_header = b64(b'{"alg":"ES256","alg":"none","kid":"P-256-0"}')
    with pytest.raises(JwtSvidError, match="duplicate member 'alg'"):
        validate(f"{dup_header}.{p}.{s}")
    dup_payload = b64(b'{"sub":"spiffe://example.org/a","sub":"spiffe://example.org/b"}')
    with pytest.raises(JwtSvidError, match="duplicate member 'sub'"):
        validate(f"{h}.{dup_payload}.{s}")


def test_jwt_01_non_canonical_base64url_rejected() -> None:
    """A 64-byte signature leaves 4 spare bits in its last character; setting them is an
    alternative spelling of the same bytes and is rejected."""
    h, p, s = good_token().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    spelled = s[:-1] + alphabet[last | 0b0001]
    if spelled == s:
        spelled = s[:-1] + alphabet[last | 0b0010]
    assert unb64(spelled) == unb64(s)
    with pytest.raises(JwtSvidError, match="canonical"):
        validate(f"{h}.{p}.{spelled}")
    with pytest.raises(JwtSvidError, match="not base64url"):
        validate(f"{h}.{p}.{s}=")


@pytest.mark.parametrize("token", [None, b"a.b.c", 5, ""])
def test_jwt_01_token_must_be_a_non_empty_string(token: object) -> None:
    with pytest.raises(JwtSvidError, match=r"string|empty"):
        validate(token)  # type: ignore[arg-type]
    with pytest.raises(JwtSvidError, match=r"string|empty"):
        JwtSvid.parse_insecure(token)  # type: ignore[arg-type]
