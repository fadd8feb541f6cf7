"""The JWT negative table, SPIFFE-CONFORMANCE.md §4.3 rows 1..19, one case per bad token.

:func:`cases` builds the table for a given time, so the py-spiffe interop test
(test_jwt_pyspiffe.py) can run the same tokens at the wall clock, which is all py-spiffe
knows; the tests here pass ``now=`` explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from spiffed.bundle.jwt import JwtBundle
from spiffed.spiffeid import TrustDomain
from spiffed.svid.jwt import JwtSvid, JwtSvidError

from .test_jwt_support import (
    AUD,
    ID,
    NOW,
    TD,
    TD_B,
    b64,
    bundle,
    forge,
    good_header,
    good_payload,
    key,
    public_pem,
    unb64,
)


@dataclass(frozen=True)
class Case:
    """One token of the table and what a conforming validator must do with it."""

    name: str  # "row_NN_description"
    token: str
    accept: bool = False
    bundles: tuple[JwtBundle, ...] = field(default_factory=lambda: (bundle(TD),))
    audience: str = AUD
    allow_missing_kid: bool = False

    def for_trust_domain(self, td: TrustDomain) -> JwtBundle | None:
        """The bundle of ``td`` among this case's bundles."""
        return next((b for b in self.bundles if b.trust_domain == td), None)

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The case is its own bundle source."""
        return self.for_trust_domain(trust_domain)


def _tamper(part: str) -> str:
    """Flip one character in the middle of a base64url part (never the padding bits)."""
    i = len(part) // 2
    return part[:i] + ("A" if part[i] != "A" else "B") + part[i + 1 :]


def cases(now: datetime) -> list[Case]:
    """Every constructible row of §4.3, valid at ``now`` except for the one broken rule."""
    ec = key("P-256")
    pay = good_payload(at=now)
    hdr = good_header()

    def signed(header: dict[str, object], payload: dict[str, object]) -> str:
        return forge(header, payload, ec)

    hs_input = (
        f"{b64(json.dumps(good_header(alg='HS256')).encode())}.{b64(json.dumps(pay).encode())}"
    )
    hs_sig = hmac.new(public_pem("P-256"), hs_input.encode(), hashlib.sha256).digest()
    eddsa_input = (
        f"{b64(json.dumps(good_header(alg='EdDSA')).encode())}.{b64(json.dumps(pay).encode())}"
    )
    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    good = signed(hdr, pay)
    h, p, s = good.split(".")
    x509_kid = "x509-root-0"  # row 17: a bad bundle's x509-svid key sharing a kid
    td_b_bundle = JwtBundle(TD_B, {"b-key": key("P-256", 2).public_key()})
    sub_b = good_payload(at=now, sub="spiffe://example.org/admin")

    return [
        Case("row_01_alg_none_empty_signature", forge(good_header(alg="none"), pay)),
        Case("row_02_hs256_with_public_key_as_secret", f"{hs_input}.{b64(hs_sig)}"),
        Case(
            "row_03_alg_eddsa",
            f"{eddsa_input}.{b64(ed_key.sign(eddsa_input.encode()))}",
        ),
        Case(
            "row_03_alg_es256k",
            forge(good_header(alg="ES256K"), pay, key("secp256k1")),
        ),
        Case("row_03_alg_lowercase_es256", forge(good_header(alg="es256"), pay, ec, alg="ES256")),
        Case("row_03_alg_missing", forge(good_header(alg=None), pay, ec, alg="ES256")),
        Case("row_04_rs256_header_ec_key", forge(good_header(alg="RS256"), pay, ec, alg="ES256")),
        Case(
            "row_04_rs256_header_kid_maps_to_ec",
            forge(good_header(alg="RS256"), pay, key("RSA"), alg="RS256"),
        ),
        Case("row_05_typ_at_jwt", signed(good_header(typ="at+jwt"), pay)),
        Case("row_05_typ_jws", signed(good_header(typ="JWS"), pay)),
        Case("row_06_aud_missing", signed(hdr, good_payload(at=now, aud=None))),
        Case("row_06_aud_empty_array", signed(hdr, good_payload(at=now, aud=[]))),
        Case("row_06_aud_without_expected", signed(hdr, good_payload(at=now, aud=["other"]))),
        Case("row_07_exp_missing", signed(hdr, good_payload(at=now, exp=None))),
        Case(
            "row_07_exp_past_beyond_leeway",
            signed(hdr, good_payload(at=now, exp=int((now - timedelta(hours=1)).timestamp()))),
        ),
        Case("row_07_exp_as_string", signed(hdr, good_payload(at=now, exp="123"))),
        Case("row_08_sub_missing", signed(hdr, good_payload(at=now, sub=None))),
        Case("row_08_sub_no_scheme", signed(hdr, good_payload(at=now, sub="example.org/a"))),
        Case(
            "row_08_sub_uppercase_td",
            signed(hdr, good_payload(at=now, sub="spiffe://EX.org/a")),
        ),
        Case(
            "row_08_sub_trailing_slash",
            signed(hdr, good_payload(at=now, sub="spiffe://example.org/a/")),
        ),
        Case(
            "row_09_sub_td_a_signed_by_td_b_key",
            forge(good_header(kid="b-key"), pay, key("P-256", 2)),
            bundles=(bundle(TD), td_b_bundle),
        ),
        Case(
            "row_10_sub_td_has_no_bundle",
            forge(good_header(kid="b-key"), pay, key("P-256", 2)),
            bundles=(td_b_bundle,),
        ),
        Case("row_11_kid_not_found", signed(good_header(kid="nope"), pay)),
        Case("row_12_signature_tampered", f"{h}.{p}.{_tamper(s)}"),
        Case("row_12_payload_tampered", f"{h}.{b64(json.dumps(sub_b).encode())}.{s}"),
        Case("row_12_payload_bit_flipped", f"{h}.{_tamper(p)}.{s}"),
        Case(
            "row_13_jws_json_flattened",
            json.dumps({"protected": h, "payload": p, "signature": s}),
        ),
        Case(
            "row_13_jws_json_general",
            json.dumps({"payload": p, "signatures": [{"protected": h, "signature": s}]}),
        ),
        Case("row_14_jwe_five_parts", f"{h}.{p}.{s}.{p}.{s}"),
        Case("row_14_two_parts", f"{h}.{p}"),
        Case("row_14_non_base64url", f"{h}.{p}+/=.{s}"),
        Case("row_15_jku", signed(good_header(jku="https://evil.example/jwks"), pay)),
        Case("row_15_x5u", signed(good_header(x5u="https://evil.example/cert"), pay)),
        Case(
            "row_15_jwk_attacker_key",
            forge(
                good_header(kid="nope", jwk={"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                pay,
                key("P-256", 7),
            ),
        ),
        Case("row_15_x5c", signed(good_header(x5c=["MIIB"]), pay)),
        Case("row_16_es256_der_signature", forge(hdr, pay, ec, der=True)),
        Case(
            "row_17_x509_svid_key_with_matching_kid",
            forge(good_header(kid=x509_kid), pay, key("P-256", 3)),
        ),
        Case(
            "row_18_aud_array_contains_expected",
            signed(hdr, good_payload(at=now, aud=["a", "b"])),
            accept=True,
            audience="b",
        ),
        Case("row_19_no_kid_default_rejected", signed(good_header(kid=None), pay)),
        Case(
            "row_19_no_kid_allowed_accepted",
            signed(good_header(kid=None), pay),
            accept=True,
            allow_missing_kid=True,
        ),
        Case("row_00_control_good_token", good, accept=True),
    ]


CASES = cases(NOW)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_jwt_negative_table(case: Case) -> None:
    """Rows 1..19: each bad token is rejected with JwtSvidError; rows 18/19 and the control pass."""
    validate: Callable[[], JwtSvid] = lambda: JwtSvid.parse_and_validate(  # noqa: E731
        case.token, case, case.audience, now=NOW, allow_missing_kid=case.allow_missing_kid
    )
    if case.accept:
        assert validate().spiffe_id == ID
    else:
        with pytest.raises(JwtSvidError):
            validate()


# Rows whose rejection must come from a particular check, so that they do not pass by luck
# (for example a row-4 token rejected only because its signature happens not to verify).
_REASONS = {
    "row_01_alg_none_empty_signature": "'alg'",
    "row_02_hs256_with_public_key_as_secret": "'alg'",
    "row_03_alg_eddsa": "'alg'",
    "row_03_alg_es256k": "'alg'",
    "row_03_alg_lowercase_es256": "'alg'",
    "row_03_alg_missing": "no 'alg'",
    "row_04_rs256_header_ec_key": "does not fit key",
    "row_04_rs256_header_kid_maps_to_ec": "does not fit key",
    "row_05_typ_at_jwt": "'typ'",
    "row_05_typ_jws": "'typ'",
    "row_06_aud_missing": "no 'aud'",
    "row_06_aud_empty_array": "empty array",
    "row_06_aud_without_expected": "does not contain",
    "row_07_exp_missing": "no 'exp'",
    "row_07_exp_past_beyond_leeway": "expired",
    "row_07_exp_as_string": "must be an integer",
    "row_08_sub_missing": "no 'sub'",
    "row_08_sub_no_scheme": "not a valid SPIFFE ID",
    "row_08_sub_uppercase_td": "not a valid SPIFFE ID",
    "row_08_sub_trailing_slash": "not a valid SPIFFE ID",
    "row_09_sub_td_a_signed_by_td_b_key": "not among",
    "row_10_sub_td_has_no_bundle": "no JWT bundle",
    "row_11_kid_not_found": "not among",
    "row_12_signature_tampered": "signature does not verify",
    "row_12_payload_tampered": "signature does not verify",
    "row_12_payload_bit_flipped": "payload|signature does not verify",
    "row_13_jws_json_flattened": "JSON serialization",
    "row_13_jws_json_general": "JSON serialization",
    "row_14_jwe_five_parts": "JWE",
    "row_14_two_parts": "2 dot-separated parts",
    "row_14_non_base64url": "not base64url",
    "row_15_jku": "'jku'",
    "row_15_x5u": "'x5u'",
    "row_15_jwk_attacker_key": "'jwk'",
    "row_15_x5c": "'x5c'",
    "row_16_es256_der_signature": "signature does not verify",
    "row_17_x509_svid_key_with_matching_kid": "not among",
    "row_19_no_kid_default_rejected": "no 'kid'",
}


def test_jwt_negative_table_has_a_reason_for_every_rejection() -> None:
    rejected = {c.name for c in CASES if not c.accept}
    assert rejected == set(_REASONS)
    rows = {int(name[4:6]) for name in (c.name for c in CASES)}
    assert rows == set(range(20))


@pytest.mark.parametrize("name", sorted(_REASONS))
def test_jwt_negative_table_rejects_for_the_right_reason(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    with pytest.raises(JwtSvidError, match=_REASONS[name]):
        JwtSvid.parse_and_validate(case.token, case, case.audience, now=NOW)


def test_jwt_row_02_key_confusion_for_every_hmac_variant_and_key() -> None:
    for kind in ("P-256", "RSA"):
        for alg, digest in (("HS256", "sha256"), ("HS384", "sha384"), ("HS512", "sha512")):
            header = good_header(kind, alg=alg)
            signing_input = (
                f"{b64(json.dumps(header).encode())}.{b64(json.dumps(good_payload()).encode())}"
            )
            sig = hmac.new(public_pem(kind), signing_input.encode(), digest).digest()
            with pytest.raises(JwtSvidError, match="'alg'"):
                JwtSvid.parse_and_validate(f"{signing_input}.{b64(sig)}", bundle(), AUD, now=NOW)


def test_jwt_row_16_der_signature_rejected_for_every_curve() -> None:
    for kind in ("P-256", "P-384", "P-521"):
        token = forge(good_header(kind), good_payload(), key(kind), der=True)
        with pytest.raises(JwtSvidError, match="signature"):
            JwtSvid.parse_and_validate(token, bundle(), AUD, now=NOW)


def test_jwt_row_12_every_signature_byte_matters() -> None:
    token = forge(good_header(), good_payload(), key("P-256"))
    h, p, s = token.split(".")
    sig = bytearray(unb64(s))
    for i in range(0, len(sig), 7):
        changed = bytearray(sig)
        changed[i] ^= 0x01
        with pytest.raises(JwtSvidError, match="signature"):
            JwtSvid.parse_and_validate(f"{h}.{p}.{b64(bytes(changed))}", bundle(), AUD, now=NOW)
