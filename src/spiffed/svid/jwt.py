"""JWT-SVIDs: issuing (:func:`sign_jwt_svid`) and validating (:class:`JwtSvid`) (JWT-SVID.md).

Validation follows JWT-04's order; see docs/jwt-svid.md for the full list and the decisions
taken on AMB-04 (``kid``), AMB-05 (``aud`` string or array), AMB-06 (exact ``typ``), AMB-19
(every audience in ``aud``) and AMB-21 (issuer refuses a root ``sub``).

Implements the SPIFFE standards at spiffe/spiffe commit
665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from spiffed.bundle.jwt import JwtBundle, JwtBundleSource
from spiffed.spiffeid import SpiffeId, SpiffeIdError
from spiffed.svid import jwt_jose
from spiffed.svid.jwt_jose import (
    ALGORITHMS,
    FORBIDDEN_HEADERS,
    CompactJws,
    JwtSvidError,
    SigningKey,
    VerificationKey,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_LEEWAY",
    "JwtSvid",
    "JwtSvidError",
    "SigningKey",
    "sign_jwt_svid",
]

# go-jose's DefaultLeeway, which go-spiffe and SPIRE validate with: a token they accept at a
# given clock skew is accepted here too (JWT-10 "a small leeway").
DEFAULT_LEEWAY: Final = timedelta(minutes=1)

_TYPES: Final = ("JWT", "JOSE")  # JWT-06, compared exactly (AMB-06)
_SET_BY_ISSUER: Final = frozenset({"sub", "aud", "exp", "iat", "iss"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _to_datetime(value: int | float, claim: str) -> datetime:
    """A NumericDate as an aware datetime; outside years 1..9999 is an error, never a crash."""
    try:
        return _EPOCH + timedelta(seconds=value)
    except OverflowError:
        raise JwtSvidError(f"JWT-SVID claim {claim!r} = {value} is out of range") from None


def _check_header(header: Mapping[str, Any], *, allow_missing_kid: bool) -> str:
    """JWT-03/04/05/06 and row 15; returns ``alg``. ``alg`` is checked before anything else."""
    if "alg" not in header:
        raise JwtSvidError("JWT-SVID header has no 'alg' (JWT-03)")
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise JwtSvidError(
            f"JWT-SVID header 'alg' {alg!r} is not allowed; it must be one of "
            f"{', '.join(ALGORITHMS)} (JWT-03)"
        )
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise JwtSvidError(
                f"JWT-SVID header has {name!r}; keys are only taken from the trust domain's "
                "bundle, so tokens carrying key locations or critical extensions are rejected "
                "(JWT-02)"
            )
    if "typ" in header and header["typ"] not in _TYPES:
        raise JwtSvidError(
            f"JWT-SVID header 'typ' {header['typ']!r} is not allowed; it must be absent, "
            "'JWT' or 'JOSE' (JWT-06)"
        )
    if "kid" in header:
        kid = header["kid"]
        if not isinstance(kid, str) or not kid:
            raise JwtSvidError(f"JWT-SVID header 'kid' {kid!r} must be a non-empty string")
    elif not allow_missing_kid:
        raise JwtSvidError(
            "JWT-SVID header has no 'kid'; a key ID is required (JWT-05, AMB-04; "
            "allow_missing_kid=True tries every key of the trust domain)"
        )
    return alg


def _check_sub(payload: Mapping[str, Any]) -> SpiffeId:
    """JWT-07: ``sub`` is present and a valid SPIFFE ID (a trust domain ID is accepted)."""
    if "sub" not in payload:
        raise JwtSvidError("JWT-SVID has no 'sub' claim (JWT-07)")
    sub = payload["sub"]
    if not isinstance(sub, str):
        raise JwtSvidError(f"JWT-SVID 'sub' must be a string, not {type(sub).__name__} (JWT-07)")
    try:
        return SpiffeId.parse(sub)
    except SpiffeIdError as exc:
        raise JwtSvidError(f"JWT-SVID 'sub' is not a valid SPIFFE ID (JWT-07): {exc}") from None


def _check_aud(payload: Mapping[str, Any]) -> tuple[str, ...]:
    """JWT-08, AMB-05: ``aud`` is a non-empty string or a non-empty array of them."""
    if "aud" not in payload:
        raise JwtSvidError("JWT-SVID has no 'aud' claim (JWT-08)")
    aud = payload["aud"]
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list):
        raise JwtSvidError(
            f"JWT-SVID 'aud' must be a string or an array of strings, not "
            f"{type(aud).__name__} (JWT-08)"
        )
    if not values:
        raise JwtSvidError("JWT-SVID 'aud' is an empty array (JWT-08)")
    for value in values:
        if not isinstance(value, str) or not value:
            raise JwtSvidError(
                f"JWT-SVID 'aud' value {value!r} must be a non-empty string (JWT-08)"
            )
    return tuple(values)


def _check_times(payload: Mapping[str, Any]) -> tuple[datetime, datetime | None]:
    """JWT-10: ``exp`` present and an integer; ``iat``/``nbf`` numbers when present."""
    if "exp" not in payload:
        raise JwtSvidError("JWT-SVID has no 'exp' claim (JWT-10)")
    exp = payload["exp"]
    if not _is_int(exp):
        raise JwtSvidError(f"JWT-SVID 'exp' {exp!r} must be an integer (JWT-10)")
    expiry = _to_datetime(exp, "exp")
    issued_at = None
    for claim in ("iat", "nbf"):
        if claim in payload:
            value = payload[claim]
            if not _is_number(value):
                raise JwtSvidError(f"JWT-SVID {claim!r} {value!r} must be a number (JWT-12)")
            when = _to_datetime(value, claim)
            if claim == "iat":
                issued_at = when
    return expiry, issued_at


def _frozen(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(obj))


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A parsed JWT-SVID. Build it with :meth:`parse_and_validate` (or :meth:`parse_insecure`).

    ``claims`` holds every payload member, with ``aud`` always a list (AMB-05). The token is
    a bearer credential, so it is left out of ``repr``.
    """

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: datetime
    issued_at: datetime | None
    claims: Mapping[str, Any] = field(hash=False)
    header: Mapping[str, Any] = field(hash=False)
    token: str = field(repr=False)

    @property
    def key_id(self) -> str | None:
        """The header's ``kid``, or None."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    def marshal(self) -> str:
        """The token as received or signed."""
        return self.token

    @classmethod
    def _parse(cls, token: str, *, allow_missing_kid: bool) -> tuple[JwtSvid, CompactJws, str]:
        """Structure and claim checks shared by both parsers; returns (svid, jws, alg)."""
        jws = jwt_jose.split_compact(token)
        alg = _check_header(jws.header, allow_missing_kid=allow_missing_kid)
        payload = jws.payload()
        spiffe_id = _check_sub(payload)
        audience = _check_aud(payload)
        expiry, issued_at = _check_times(payload)
        claims = dict(payload)
        claims["aud"] = list(audience)
        svid = cls(
            spiffe_id=spiffe_id,
            audience=audience,
            expiry=expiry,
            issued_at=issued_at,
            claims=_frozen(claims),
            header=_frozen(jws.header),
            token=token,
        )
        return svid, jws, alg

    @classmethod
    def parse_insecure(cls, token: str) -> JwtSvid:
        """Parse WITHOUT checking the signature, the audience or the time. For debugging only.

        The structure, header (``alg``, ``typ``, forbidden members) and claims (``sub``,
        ``aud``, ``exp`` types) are checked as :meth:`parse_and_validate` does; ``kid`` may be
        missing. Never use the result to authenticate anyone.
        """
        svid, jws, _ = cls._parse(token, allow_missing_kid=True)
        jws.signature()  # still must be base64url
        return svid

    @classmethod
    def parse_and_validate(
        cls,
        token: str,
        bundle_source: JwtBundleSource,
        audience: str | Iterable[str],
        *,
        now: datetime | None = None,
        leeway: timedelta = DEFAULT_LEEWAY,
        allow_missing_kid: bool = False,
    ) -> JwtSvid:
        """Validate ``token`` against the bundle of its ``sub``'s trust domain (JWT-18).

        ``audience`` is this validator's audience; with several, every one must be in the
        token's ``aud``. ``now`` defaults to the current time; ``leeway`` is the clock skew
        allowed on ``exp`` and ``nbf``. With ``allow_missing_kid`` a token without ``kid`` is
        checked against every key of the trust domain's bundle (AMB-04, spec-pure); by
        default it is rejected as go-spiffe and SPIRE do. Raises :class:`JwtSvidError`.
        """
        expected = _expected_audience(audience)
        when = datetime.now(UTC) if now is None else now
        if when.tzinfo is None:
            raise JwtSvidError(f"now={when!r} must be timezone-aware")
        if leeway < timedelta(0):
            raise JwtSvidError(f"leeway={leeway!r} must not be negative")

        svid, jws, alg = cls._parse(token, allow_missing_kid=allow_missing_kid)
        signature = jws.signature()
        td = svid.spiffe_id.trust_domain
        bundle = bundle_source.get_jwt_bundle_for_trust_domain(td)
        if bundle is None:
            raise JwtSvidError(
                f"no JWT bundle for trust domain {td} of 'sub' {svid.spiffe_id}; "
                "the token is untrusted (JWT-18)"
            )
        if bundle.trust_domain != td:
            raise JwtSvidError(
                f"bundle source returned the JWT bundle of {bundle.trust_domain} for {td} (JWT-18)"
            )
        keys = _candidate_keys(bundle, svid.key_id, alg)
        if not any(jwt_jose.verify(jws.signing_input, signature, key, alg) for key in keys):
            which = f"key {svid.key_id!r}" if svid.key_id else f"any {alg} key"
            raise JwtSvidError(
                f"JWT-SVID signature does not verify with {which} of trust domain {td} (JWT-12)"
            )

        missing = [a for a in expected if a not in svid.audience]
        if missing:
            raise JwtSvidError(
                f"JWT-SVID 'aud' {list(svid.audience)!r} does not contain the expected "
                f"audience {missing[0]!r} (JWT-08)"
            )
        if when - leeway >= svid.expiry:
            raise JwtSvidError(
                f"JWT-SVID expired at {svid.expiry.isoformat()} (now {when.isoformat()}, "
                f"leeway {leeway.total_seconds():g}s) (JWT-10)"
            )
        if "nbf" in svid.claims:
            not_before = _to_datetime(svid.claims["nbf"], "nbf")
            if when - not_before < -leeway:
                raise JwtSvidError(
                    f"JWT-SVID is not valid before {not_before.isoformat()} "
                    f"(now {when.isoformat()}) (JWT-12)"
                )
        return svid


def _expected_audience(audience: str | Iterable[str]) -> tuple[str, ...]:
    values = (audience,) if isinstance(audience, str) else tuple(audience)
    if not values or not all(isinstance(a, str) and a for a in values):
        raise JwtSvidError(
            f"expected audience {audience!r} must be a non-empty string or a non-empty "
            "collection of them"
        )
    return values


def _candidate_keys(bundle: JwtBundle, kid: str | None, alg: str) -> list[VerificationKey]:
    """The key named by ``kid`` (row 11 when absent), or every key when ``kid`` is missing.

    A key whose type does not fit ``alg`` is an error when named (row 4), and skipped when
    trying every key.
    """
    td = bundle.trust_domain
    if kid is None:
        keys = [k for k in bundle.authorities.values() if alg in jwt_jose.algorithms_for_key(k)]
        if not keys:
            raise JwtSvidError(f"trust domain {td} has no JWT-SVID key usable with {alg}")
        return keys
    key = bundle.find_authority(kid)
    if key is None:
        raise JwtSvidError(
            f"key {kid!r} is not among the JWT-SVID keys of trust domain {td} (row 11)"
        )
    if alg not in jwt_jose.algorithms_for_key(key):
        raise JwtSvidError(
            f"JWT-SVID header 'alg' {alg} does not fit key {kid!r} of trust domain {td}, a "
            f"{_describe_key(key)} (JWT-04)"
        )
    return [key]


def _describe_key(key: VerificationKey | SigningKey) -> str:
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"EC {curve.name} key"
    return f"RSA {key.key_size}-bit key"


def sign_jwt_svid(
    spiffe_id: SpiffeId | str,
    audience: str | Iterable[str],
    key: SigningKey,
    key_id: str,
    expires: datetime | timedelta,
    *,
    issued_at: datetime,
    issuer: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    algorithm: str | None = None,
) -> str:
    """Sign a JWT-SVID and return the compact token.

    ``expires`` is the expiry time (``datetime``) or the lifetime from ``issued_at``
    (``timedelta``); times are whole seconds, rounded down. The header is exactly
    ``{"alg", "kid", "typ": "JWT"}`` (JWT-02, AMB-04). ``algorithm`` defaults to the key's
    (ES256/ES384/ES512 by curve, RS256 for RSA); RSA keys may ask for RS384/RS512/PS*.
    ``aud`` is a string for one audience and an array for several (AMB-19). ``extra_claims``
    may not set ``sub``, ``aud``, ``exp``, ``iat`` or ``iss``.
    """
    if isinstance(spiffe_id, str):
        try:
            spiffe_id = SpiffeId.parse(spiffe_id)
        except SpiffeIdError as exc:
            raise JwtSvidError(f"cannot sign a JWT-SVID for {spiffe_id!r}: {exc}") from None
    if not isinstance(spiffe_id, SpiffeId):
        raise JwtSvidError(f"spiffe_id must be a SpiffeId, not {type(spiffe_id).__name__}")
    if spiffe_id.is_trust_domain_id:
        raise JwtSvidError(
            f"cannot sign a JWT-SVID for {spiffe_id}: 'sub' must have a path (AMB-21)"
        )
    audiences = list(dict.fromkeys(_expected_audience(audience)))
    if not isinstance(key_id, str) or not key_id:
        raise JwtSvidError(f"key_id {key_id!r} must be a non-empty string (AMB-04)")
    alg = jwt_jose.default_algorithm(key) if algorithm is None else algorithm
    if alg not in jwt_jose.algorithms_for_key(key):
        raise JwtSvidError(
            f"algorithm {alg!r} cannot be used with a {_describe_key(key)}; allowed: "
            f"{', '.join(sorted(jwt_jose.algorithms_for_key(key)))}"
        )
    if issued_at.tzinfo is None:
        raise JwtSvidError(f"issued_at={issued_at!r} must be timezone-aware")
    iat = int(issued_at.timestamp() // 1)
    if isinstance(expires, timedelta):
        exp = iat + int(expires.total_seconds() // 1)
    elif isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise JwtSvidError(f"expires={expires!r} must be timezone-aware")
        exp = int(expires.timestamp() // 1)
    else:
        raise JwtSvidError(f"expires must be a datetime or timedelta, not {type(expires).__name__}")
    if exp <= iat:
        raise JwtSvidError(
            f"JWT-SVID for {spiffe_id} would expire at {exp}, not after it is issued at {iat}"
        )
    if issuer is not None and (not isinstance(issuer, str) or not issuer):
        raise JwtSvidError(f"issuer {issuer!r} must be a non-empty string")

    claims: dict[str, Any] = {}
    for name, value in (extra_claims or {}).items():
        if name in _SET_BY_ISSUER:
            raise JwtSvidError(f"extra_claims may not set {name!r}; it has its own argument")
        claims[name] = value
    claims.update(
        sub=str(spiffe_id), aud=audiences[0] if len(audiences) == 1 else audiences, exp=exp, iat=iat
    )
    if issuer is not None:
        claims["iss"] = issuer
    header = {"alg": alg, "kid": key_id, "typ": "JWT"}
    try:
        payload_json = json.dumps(claims, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JwtSvidError(f"extra_claims cannot be encoded as JSON: {exc}") from None
    signing_input = (
        jwt_jose.b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + jwt_jose.b64url_encode(payload_json.encode())
    )
    signature = jwt_jose.sign(signing_input.encode("ascii"), key, alg)
    return signing_input + "." + jwt_jose.b64url_encode(signature)
