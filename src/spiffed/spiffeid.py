"""SPIFFE IDs and trust domains (SPIFFE-ID.md §2, rules ID-01..ID-15).

Parsing is strict (AMB-01): the scheme and the trust domain must be lowercase, and nothing
is normalised. A trust domain that looks like an IP address or a DNS name is treated exactly
like any other name (ID-07).

Implements the SPIFFE standards at spiffe/spiffe commit
665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_TRUST_DOMAIN_LENGTH",
    "SCHEME_PREFIX",
    "Matcher",
    "SpiffeId",
    "SpiffeIdError",
    "TrustDomain",
    "match_any",
    "match_id",
    "match_member_of",
    "match_one_of",
]

SCHEME_PREFIX: Final = "spiffe://"
MAX_ID_LENGTH: Final = 2048  # bytes, the whole URI (ID-12)
MAX_TRUST_DOMAIN_LENGTH: Final = 255  # bytes (ID-13)

_TD_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class SpiffeIdError(ValueError):
    """A SPIFFE ID, trust domain name or path is malformed; the message says how."""


def _show_char(c: str) -> str:
    return repr(c) if c.isprintable() else f"U+{ord(c):04X}"


def _byte_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes; lone surrogates count as 3 and never raise."""
    return len(text.encode("utf-8", "surrogatepass"))


def _check_trust_domain(name: str, *, offset: int, whole: str) -> None:
    """Raise SpiffeIdError unless ``name`` is a valid trust domain name.

    ``offset`` is where ``name`` starts in ``whole``, so positions in messages refer to the
    input the caller gave.
    """
    if not isinstance(name, str):
        raise SpiffeIdError(f"trust domain name must be a string, not {type(name).__name__}")
    if not name:
        raise SpiffeIdError(f"trust domain is missing in {whole!r}")
    for i, c in enumerate(name):
        if c not in _TD_CHARS:
            hint = ""
            if c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
                hint = " (trust domains are lowercase)"
            elif c == ":":
                hint = " (a port is not allowed)"
            elif c == "@":
                hint = " (userinfo is not allowed)"
            elif c == "%":
                hint = " (percent-encoding is not allowed)"
            if c == ":" and name.startswith("spiffe:"):
                hint = " (for the spiffe:// form use TrustDomain.parse)"
            raise SpiffeIdError(
                f"trust domain character {_show_char(c)} at position {offset + i} of "
                f"{whole!r} is not allowed{hint}; allowed are a-z 0-9 . - _"
            )
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:  # ASCII only by now, so characters are bytes
        raise SpiffeIdError(
            f"trust domain is {len(name)} bytes long, the limit is {MAX_TRUST_DOMAIN_LENGTH}: "
            f"{whole[:64]!r}..."
        )


def _check_path(path: str, *, offset: int, whole: str) -> None:
    """Raise SpiffeIdError unless ``path`` is a valid SPIFFE ID path ("" or "/seg/seg")."""
    if not isinstance(path, str):
        raise SpiffeIdError(f"path must be a string, not {type(path).__name__}")
    if not path:
        return
    if path[0] != "/":
        raise SpiffeIdError(f"path {path!r} in {whole!r} must start with '/'")
    start = 0
    while start < len(path):
        end = path.find("/", start + 1)
        if end == -1:
            end = len(path)
        segment = path[start + 1 : end]
        pos = offset + start
        if not segment:
            what = "a trailing '/'" if end == len(path) else "an empty segment ('//')"
            raise SpiffeIdError(f"path of {whole!r} has {what} at position {pos}")
        if segment in (".", ".."):
            raise SpiffeIdError(
                f"path of {whole!r} has a dot segment {segment!r} at position {pos + 1}"
            )
        for i, c in enumerate(segment):
            if c not in _PATH_CHARS:
                hint = ""
                if c == "%":
                    hint = " (percent-encoding is not allowed)"
                elif c in "?#":
                    hint = " (query and fragment are not allowed)"
                raise SpiffeIdError(
                    f"path character {_show_char(c)} at position {pos + 1 + i} of {whole!r} "
                    f"is not allowed{hint}; allowed are a-z A-Z 0-9 . - _"
                )
        start = end


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A trust domain name such as ``example.org``. Build it with :meth:`parse`."""

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.name, offset=0, whole=self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse ``example.org`` or ``spiffe://example.org`` (with or without a path).

        The ``spiffe://`` form is parsed as a whole SPIFFE ID, so a malformed path is an
        error there too.
        """
        if not isinstance(text, str):
            raise SpiffeIdError(f"trust domain must be a string, not {type(text).__name__}")
        if "://" in text or text.startswith("spiffe:"):
            return SpiffeId.parse(text).trust_domain
        return cls(text)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own SPIFFE ID, ``spiffe://<name>`` (no path)."""
        return SpiffeId(self, "")

    def id_string(self) -> str:
        """``spiffe://<name>``: the form used as a key on the Workload API."""
        return SCHEME_PREFIX + self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A SPIFFE ID: a trust domain and a path (``""`` for the trust domain's own ID)."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise SpiffeIdError(
                f"trust_domain must be a TrustDomain, not {type(self.trust_domain).__name__}"
            )
        if not isinstance(self.path, str):
            raise SpiffeIdError(f"path must be a string, not {type(self.path).__name__}")
        whole = SCHEME_PREFIX + self.trust_domain.name + self.path
        _check_path(self.path, offset=len(SCHEME_PREFIX) + len(self.trust_domain.name), whole=whole)
        if len(whole) > MAX_ID_LENGTH:  # ASCII only by now, so characters are bytes
            raise SpiffeIdError(
                f"SPIFFE ID is {len(whole)} bytes long, the limit is {MAX_ID_LENGTH}: "
                f"{whole[:64]!r}..."
            )

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust-domain>[/<segment>...]`` strictly."""
        if not isinstance(text, str):
            raise SpiffeIdError(f"SPIFFE ID must be a string, not {type(text).__name__}")
        if not text:
            raise SpiffeIdError("SPIFFE ID is empty")
        if _byte_len(text) > MAX_ID_LENGTH:
            raise SpiffeIdError(
                f"SPIFFE ID is {_byte_len(text)} bytes long, the limit is {MAX_ID_LENGTH}: "
                f"{text[:64]!r}..."
            )
        if not text.startswith(SCHEME_PREFIX):
            scheme, sep, _ = text.partition(":")
            if not sep:
                raise SpiffeIdError(
                    f"SPIFFE ID {text!r} has no scheme; it must start with 'spiffe://'"
                )
            if scheme == "spiffe" or scheme.lower() != "spiffe":
                detail = "must start with 'spiffe://'"
                if scheme.lower() != "spiffe":
                    detail = f"has scheme {scheme!r}; the scheme must be 'spiffe'"
                raise SpiffeIdError(f"SPIFFE ID {text!r} {detail}")
            raise SpiffeIdError(f"SPIFFE ID {text!r} has an uppercase scheme; it must be 'spiffe'")
        rest = text[len(SCHEME_PREFIX) :]
        slash = rest.find("/")
        name = rest if slash == -1 else rest[:slash]
        path = "" if slash == -1 else rest[slash:]
        _check_trust_domain(name, offset=len(SCHEME_PREFIX), whole=text)
        _check_path(path, offset=len(SCHEME_PREFIX) + len(name), whole=text)
        return cls(TrustDomain(name), path)

    @classmethod
    def from_path(cls, trust_domain: TrustDomain, path: str) -> SpiffeId:
        """Build an ID from a trust domain and a path such as ``/ns/prod/sa/web``."""
        return cls(trust_domain, path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain, *segments: str) -> SpiffeId:
        """Build an ID from path segments, each checked on its own (no ``/`` inside)."""
        for n, seg in enumerate(segments):
            if not isinstance(seg, str):
                raise SpiffeIdError(f"path segment {n} must be a string, not {type(seg).__name__}")
            if not seg:
                raise SpiffeIdError(f"path segment {n} is empty; segments must not be empty")
            if "/" in seg:
                raise SpiffeIdError(f"path segment {n} ({seg!r}) must not contain '/'")
        return cls(trust_domain, "".join("/" + s for s in segments))

    @property
    def segments(self) -> tuple[str, ...]:
        """The path's segments, ``()`` for a trust domain ID."""
        return tuple(self.path.split("/")[1:]) if self.path else ()

    @property
    def is_trust_domain_id(self) -> bool:
        """True for ``spiffe://<td>``, an ID with no path (never valid on a leaf SVID)."""
        return not self.path

    def member_of(self, trust_domain: TrustDomain) -> bool:
        """True when this ID belongs to ``trust_domain``.

        A plain string is refused rather than silently compared unequal.
        """
        if not isinstance(trust_domain, TrustDomain):
            raise SpiffeIdError(
                f"member_of needs a TrustDomain, not {type(trust_domain).__name__} "
                f"({trust_domain!r}); use TrustDomain.parse()"
            )
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path


class Matcher(Protocol):
    """Decides whether a peer's SPIFFE ID is acceptable."""

    def __call__(self, spiffe_id: SpiffeId) -> bool:
        """True when ``spiffe_id`` is acceptable."""
        ...


@dataclass(frozen=True, slots=True)
class _NamedMatcher:
    description: str
    predicate: Callable[[SpiffeId], bool]

    def __call__(self, spiffe_id: SpiffeId) -> bool:
        return self.predicate(spiffe_id)

    def __str__(self) -> str:
        return self.description


def match_any() -> Matcher:
    """Accept every SPIFFE ID."""
    return _NamedMatcher("any SPIFFE ID", lambda _id: True)


def match_id(expected: SpiffeId) -> Matcher:
    """Accept exactly ``expected``."""
    if not isinstance(expected, SpiffeId):
        raise SpiffeIdError(
            f"match_id needs a SpiffeId, not {type(expected).__name__} ({expected!r}); "
            "use SpiffeId.parse()"
        )
    return _NamedMatcher(f"exactly {expected}", lambda got: got == expected)


def match_one_of(ids: Iterable[SpiffeId]) -> Matcher:
    """Accept any of ``ids``."""
    allowed = frozenset(ids)
    for item in allowed:
        if not isinstance(item, SpiffeId):
            raise SpiffeIdError(
                f"match_one_of needs SpiffeIds, not {type(item).__name__} ({item!r}); "
                "use SpiffeId.parse()"
            )
    shown = ", ".join(sorted(str(i) for i in allowed))
    return _NamedMatcher(f"one of [{shown}]", lambda got: got in allowed)


def match_member_of(trust_domain: TrustDomain) -> Matcher:
    """Accept any ID in ``trust_domain``."""
    if not isinstance(trust_domain, TrustDomain):
        raise SpiffeIdError(
            f"match_member_of needs a TrustDomain, not {type(trust_domain).__name__} "
            f"({trust_domain!r}); use TrustDomain.parse()"
        )
    return _NamedMatcher(
        f"any member of {trust_domain}", lambda got: got.trust_domain == trust_domain
    )
