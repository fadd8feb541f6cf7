"""SPIFFE ID parsing and matching: rules ID-01..ID-15, the §1.3/§1.4 vectors, AMB-01.

Spec pin: spiffe/spiffe standards at commit 665a28f3253ecdce59f26f3ef29c0d6408b37c3d.

ID-15 (choose globally unique trust domain names; generate random ones such as UUIDs) is
guidance for operators and cannot be observed in a parser, so it has no test here.
"""

from __future__ import annotations

import contextlib
import socket
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffed.spiffeid import (
    MAX_ID_LENGTH,
    MAX_TRUST_DOMAIN_LENGTH,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    match_any,
    match_id,
    match_member_of,
    match_one_of,
)

TD_ALPHABET = string.ascii_lowercase + string.digits + ".-_"
PATH_ALPHABET = string.ascii_letters + string.digits + ".-_"

# §1.3: every input of every row, with the row number in the test id.
NEGATIVE_VECTORS: list[tuple[int, str]] = [
    (1, ""),
    (2, "example.org/foo"),
    (3, "http://example.org/foo"),
    (4, "spiffe:/example.org/foo"),
    (4, "spiffe:example.org/foo"),
    (5, "spiffe://"),
    (5, "spiffe:///foo"),
    (6, "spiffe://Example.org/foo"),
    (7, "SPIFFE://example.org/foo"),
    (8, "spiffe://example.org:8443/foo"),
    (9, "spiffe://user@example.org/foo"),
    (10, "spiffe://[::1]/foo"),
    (11, "spiffe://exa$mple.org/foo"),
    (11, "spiffe://exa mple.org/foo"),
    (12, "spiffe://ex%41mple.org/foo"),
    (13, "spiffe://example.org/foo%20bar"),
    (14, "spiffe://example.org/foo?x=1"),
    (15, "spiffe://example.org/foo#f"),
    (16, "spiffe://example.org/"),
    (17, "spiffe://example.org/foo/"),
    (18, "spiffe://example.org//foo"),
    (19, "spiffe://example.org/./foo"),
    (19, "spiffe://example.org/foo/."),
    (19, "spiffe://example.org/foo/../bar"),
    (19, "spiffe://example.org/.."),
    (20, "spiffe://example.org/fo o"),
    (20, "spiffe://example.org/a:b"),
    (20, "spiffe://example.org/a@b"),
    (20, "spiffe://example.org/a~b"),
    (20, "spiffe://example.org/a+b"),
    (20, "spiffe://example.org/\u00fc"),
    (20, "spiffe://example.org/a\\b"),
    (21, "spiffe://" + "a" * 256 + "/foo"),
    (21, "spiffe://example.org/" + "a" * (2049 - len("spiffe://example.org/"))),
    (22, " spiffe://example.org/a"),
    (22, "spiffe://example.org/a\n"),
]

# §1.4: every positive vector (the 2048-byte one is built in its own test below).
POSITIVE_VECTORS: list[str] = [
    "spiffe://example.org",
    "spiffe://example.org/foo/bar",
    "spiffe://127.0.0.1/foo",
    "spiffe://a_b-c.d/Foo_Bar-1.2",
    "spiffe://example.org/...",
    "spiffe://example.org/.a",
    "spiffe://k8s-west.example.com/ns/staging/sa/default",
    "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
]


def id_of_length(n: int) -> str:
    """A syntactically valid SPIFFE ID of exactly ``n`` bytes, segments of at most 100."""
    text = "spiffe://example.org"
    while len(text) < n:
        room = n - len(text) - 1  # after the '/'
        if room < 1:
            # One byte left: lengthen the previous segment instead of adding a '/'.
            text += "x"
            continue
        text += "/" + "s" * min(room, 100)
    assert len(text) == n
    return text


def rejects(text: str) -> SpiffeIdError:
    with pytest.raises(SpiffeIdError) as info:
        SpiffeId.parse(text)
    return info.value


# --------------------------------------------------------------------------------------
# §1.3 / §1.4 tables


@pytest.mark.parametrize(
    "text",
    [pytest.param(t, id=f"row{n}-{t[:40]!r}") for n, t in NEGATIVE_VECTORS],
)
def test_id_negative_vectors_rejected(text: str) -> None:
    """§1.3: the parser MUST reject every listed input, with SpiffeIdError only."""
    err = rejects(text)
    assert str(err)


@pytest.mark.parametrize("text", [pytest.param(t, id=t) for t in POSITIVE_VECTORS])
def test_id_positive_vectors_accepted(text: str) -> None:
    """§1.4: the parser MUST accept every listed input, and print it back unchanged."""
    parsed = SpiffeId.parse(text)
    assert str(parsed) == text
    assert SpiffeId.parse(str(parsed)) == parsed


# --------------------------------------------------------------------------------------
# One test per rule


def test_id_01_scheme_must_be_spiffe() -> None:
    err = rejects("http://example.org/a")
    assert "'http'" in str(err)
    assert "spiffe:/example.org/a" in str(rejects("spiffe:/example.org/a"))
    rejects("spiffe:example.org/a")
    rejects("spiffe//example.org/a")
    assert "no scheme" in str(rejects("example.org/a"))


def test_id_01_amb_01_uppercase_scheme_rejected() -> None:
    """AMB-01: strict; `SPIFFE://` is rejected, although §2.4 calls the scheme case-insensitive."""
    for text in ("SPIFFE://example.org/a", "Spiffe://example.org/a", "spiffE://example.org"):
        assert "uppercase scheme" in str(rejects(text))


def test_id_02_empty_trust_domain_rejected() -> None:
    for text in ("spiffe://", "spiffe:///a"):
        assert "trust domain is missing" in str(rejects(text))


def test_id_03_query_and_fragment_rejected() -> None:
    err = rejects("spiffe://example.org/a?x=1")
    assert "'?' at position 22" in str(err)
    err = rejects("spiffe://example.org/a#f")
    assert "'#' at position 22" in str(err)
    # Without a path the '?' lands in the trust domain; still rejected.
    assert "'?' at position 20" in str(rejects("spiffe://example.org?x=1"))
    assert "'#' at position 20" in str(rejects("spiffe://example.org#f"))


def test_id_04_userinfo_and_port_rejected() -> None:
    err = rejects("spiffe://u@td/a")
    assert "'@' at position 10" in str(err)
    assert "userinfo" in str(err)
    err = rejects("spiffe://td:443/a")
    assert "':' at position 11" in str(err)
    assert "port" in str(err)


def test_id_05_trust_domain_character_set() -> None:
    err = rejects("spiffe://Example.org/a")
    assert "'E' at position 9" in str(err)
    assert "lowercase" in str(err)
    assert "'[' at position 9" in str(rejects("spiffe://[::1]/a"))
    assert SpiffeId.parse("spiffe://127.0.0.1/a").trust_domain.name == "127.0.0.1"
    for c in map(chr, range(0x80)):
        text = f"spiffe://a{c}b/x"
        if c in TD_ALPHABET:
            assert SpiffeId.parse(text).trust_domain.name == f"a{c}b"
        elif c != "/":
            with pytest.raises(SpiffeIdError, match="position 10"):
                SpiffeId.parse(text)


def test_id_05_uppercase_trust_domain_rejected() -> None:
    """AMB-01: uppercase trust domains are rejected, never lowercased."""
    with pytest.raises(SpiffeIdError, match="lowercase"):
        TrustDomain("Example.org")
    with pytest.raises(SpiffeIdError, match="lowercase"):
        TrustDomain.parse("spiffe://EXAMPLE.org")


def test_id_06_percent_encoding_in_trust_domain_rejected() -> None:
    err = rejects("spiffe://ex%41mple.org/a")
    assert "'%' at position 11" in str(err)
    assert "percent-encoding" in str(err)


def test_id_07_ip_like_trust_domains_not_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """IP- and DNS-looking names are plain names: no lookups, no IP normalisation."""

    def no_network(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("SPIFFE ID parsing must not touch the network")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "inet_aton", "inet_pton"):
        monkeypatch.setattr(socket, name, no_network)
    for name in ("127.0.0.1", "127.000.000.001", "2130706433", "0x7f.1", "localhost", "999.1.1.1"):
        parsed = SpiffeId.parse(f"spiffe://{name}/a")
        assert parsed.trust_domain.name == name
        assert str(parsed) == f"spiffe://{name}/a"
    assert SpiffeId.parse("spiffe://127.0.0.1/a") != SpiffeId.parse("spiffe://127.000.000.001/a")


def test_id_08_percent_encoding_in_path_rejected() -> None:
    err = rejects("spiffe://example.org/foo%20bar")
    assert "'%' at position 24" in str(err)
    assert "percent-encoding" in str(err)


def test_id_09_empty_and_dot_segments_rejected() -> None:
    err = rejects("spiffe://example.org//foo")
    assert "empty segment" in str(err)
    assert "position 20" in str(err)
    for text in (
        "spiffe://example.org/.",
        "spiffe://example.org/..",
        "spiffe://example.org/a/./b",
        "spiffe://example.org/a/../b",
    ):
        assert "dot segment" in str(rejects(text))
    # Dots that are not whole '.'/'..' segments are ordinary characters.
    for text in ("spiffe://example.org/...", "spiffe://example.org/.a", "spiffe://example.org/a.."):
        assert str(SpiffeId.parse(text)) == text


def test_id_10_trailing_slash_rejected() -> None:
    for text, pos in (("spiffe://example.org/", 20), ("spiffe://example.org/a/", 22)):
        err = rejects(text)
        assert "trailing '/'" in str(err)
        assert f"position {pos}" in str(err)


def test_id_11_path_character_set_and_empty_path() -> None:
    for c in map(chr, range(0x80)):
        text = f"spiffe://example.org/a{c}b"
        if c in PATH_ALPHABET:
            assert SpiffeId.parse(text).path == f"/a{c}b"
        elif c != "/":
            with pytest.raises(SpiffeIdError, match="position 22"):
                SpiffeId.parse(text)
    tdid = SpiffeId.parse("spiffe://example.org")
    assert tdid.path == ""
    assert tdid.is_trust_domain_id
    assert tdid.segments == ()


def test_id_12_exactly_2048_bytes_accepted() -> None:
    text = id_of_length(MAX_ID_LENGTH)
    assert len(text.encode()) == 2048
    parsed = SpiffeId.parse(text)
    assert str(parsed) == text
    again = SpiffeId.from_path(parsed.trust_domain, parsed.path)
    assert again == parsed


def test_id_12_2049_bytes_rejected_and_never_built() -> None:
    """Parsing 2049 bytes fails, and the builders (what an issuer mints from) refuse too."""
    text = id_of_length(MAX_ID_LENGTH + 1)
    err = rejects(text)
    assert "2049 bytes" in str(err)
    assert "2048" in str(err)
    td = TrustDomain("example.org")
    path = text[len("spiffe://example.org") :]
    with pytest.raises(SpiffeIdError, match="2049 bytes"):
        SpiffeId.from_path(td, path)
    with pytest.raises(SpiffeIdError, match="2049 bytes"):
        SpiffeId.from_segments(td, *path.split("/")[1:])


def test_id_12_length_counts_bytes_not_characters() -> None:
    """A non-ASCII input is measured in UTF-8 bytes; it is rejected either way."""
    text = "spiffe://example.org/" + "\u00fc" * 1014  # 2049 bytes, 1035 characters
    assert "2049 bytes" in str(rejects(text))


def test_id_13_trust_domain_length() -> None:
    ok = "a" * MAX_TRUST_DOMAIN_LENGTH
    assert TrustDomain(ok).name == ok
    assert SpiffeId.parse(f"spiffe://{ok}/x").trust_domain.name == ok
    bad = "a" * (MAX_TRUST_DOMAIN_LENGTH + 1)
    with pytest.raises(SpiffeIdError, match="256 bytes"):
        TrustDomain(bad)
    with pytest.raises(SpiffeIdError, match="256 bytes"):
        SpiffeId.parse(f"spiffe://{bad}/x")
    with pytest.raises(SpiffeIdError, match="256 bytes"):
        TrustDomain.parse(f"spiffe://{bad}")


def test_id_14_path_is_case_sensitive() -> None:
    upper = SpiffeId.parse("spiffe://example.org/A")
    lower = SpiffeId.parse("spiffe://example.org/a")
    assert upper != lower
    assert upper.path == "/A"
    assert len({upper, lower}) == 2


# ID-15 is guidance (globally unique, random trust domain names); nothing to observe here.


# --------------------------------------------------------------------------------------
# Error messages


@pytest.mark.parametrize(
    ("text", "char", "pos"),
    [
        ("spiffe://exa$mple.org/foo", "'$'", 12),
        ("spiffe://exa mple.org/foo", "' '", 12),
        ("spiffe://example.org/fo o", "' '", 23),
        ("spiffe://example.org/a/b~c", "'~'", 24),
        ("spiffe://example.org/\u00fc", "'\u00fc'", 21),
        ("spiffe://example.org/a\n", "U+000A", 22),
        ("spiffe://exa\tmple.org", "U+0009", 12),
        ("spiffe://example.org/a\x00", "U+0000", 22),
    ],
)
def test_id_error_names_character_and_position(text: str, char: str, pos: int) -> None:
    """Errors name the offending character (printable, or as U+XXXX) and its 0-based index."""
    err = str(rejects(text))
    assert f"{char} at position {pos}" in err
    assert repr(text) in err


def test_id_error_for_non_string_input() -> None:
    with pytest.raises(SpiffeIdError, match="bytes"):
        SpiffeId.parse(b"spiffe://example.org")  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match="int"):
        TrustDomain.parse(3)  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match="bytes"):
        TrustDomain(b"example.org")  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match="NoneType"):
        SpiffeId(TrustDomain("example.org"), None)  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match="str"):
        SpiffeId("example.org", "/a")  # type: ignore[arg-type]


def test_id_lone_surrogate_is_an_id_error_not_unicode_error() -> None:
    """Regression: a lone surrogate used to escape as UnicodeEncodeError from the length check."""
    for text in ("spiffe://a/\ud800", "spiffe://\udfff", "\ud800"):
        rejects(text)


# --------------------------------------------------------------------------------------
# TrustDomain


@pytest.mark.parametrize(
    "text", ["example.org", "spiffe://example.org", "spiffe://example.org/ns/prod"]
)
def test_trust_domain_parse_both_forms(text: str) -> None:
    td = TrustDomain.parse(text)
    assert td == TrustDomain("example.org")
    assert str(td) == "example.org"
    assert td.id_string() == "spiffe://example.org"
    assert td.id == SpiffeId.parse("spiffe://example.org")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Example.org",
        "example.org/foo",
        "spiffe://example.org/",
        "SPIFFE://example.org",
        "http://example.org",
        "spiffe:example.org",
        "spiffe://",
        "example.org:443",
    ],
)
def test_trust_domain_parse_rejects(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        TrustDomain.parse(text)


def test_id_trust_domain_made_of_dots_accepted() -> None:
    """§1.2 note: '...' passes the character set and no rule forbids it (go-spiffe agrees)."""
    assert TrustDomain.parse("...").name == "..."
    assert str(SpiffeId.parse("spiffe://.../a")) == "spiffe://.../a"


# --------------------------------------------------------------------------------------
# Builders and accessors


def test_from_segments_and_segments() -> None:
    td = TrustDomain("example.org")
    built = SpiffeId.from_segments(td, "ns", "prod", "sa", "web")
    assert str(built) == "spiffe://example.org/ns/prod/sa/web"
    assert built.segments == ("ns", "prod", "sa", "web")
    assert SpiffeId.from_segments(td) == td.id
    assert SpiffeId.from_path(td, "/ns/prod") == SpiffeId.parse("spiffe://example.org/ns/prod")


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ("", "empty"),
        (".", "dot segment"),
        ("..", "dot segment"),
        ("a/b", "must not contain '/'"),
        ("a b", "' '"),
        ("%41", "percent-encoding"),
        ("a?b", "query"),
        ("\u00fc", "'\u00fc'"),
    ],
)
def test_id_09_11_from_segments_rejects_bad_segment(segment: str, message: str) -> None:
    td = TrustDomain("example.org")
    with pytest.raises(SpiffeIdError, match=message):
        SpiffeId.from_segments(td, "ok", segment)


@pytest.mark.parametrize("path", ["a", "/", "/a/", "//a", "/a/./b", "/a b", "/a?b"])
def test_from_path_rejects_bad_path(path: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.from_path(TrustDomain("example.org"), path)


def test_member_of() -> None:
    sid = SpiffeId.parse("spiffe://example.org/a")
    assert sid.member_of(TrustDomain("example.org"))
    assert not sid.member_of(TrustDomain("example.com"))
    assert not sid.member_of(TrustDomain("sub.example.org"))


def test_member_of_and_matchers_refuse_strings() -> None:
    """A str where a TrustDomain/SpiffeId belongs is an error, never a silent 'no match'."""
    sid = SpiffeId.parse("spiffe://example.org/a")
    with pytest.raises(SpiffeIdError, match=r"TrustDomain\.parse"):
        sid.member_of("example.org")  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match=r"TrustDomain\.parse"):
        match_member_of("example.org")  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match=r"SpiffeId\.parse"):
        match_id("spiffe://example.org/a")  # type: ignore[arg-type]
    with pytest.raises(SpiffeIdError, match=r"SpiffeId\.parse"):
        match_one_of([sid, "spiffe://example.org/b"])  # type: ignore[list-item]


def test_value_objects_are_immutable() -> None:
    sid = SpiffeId.parse("spiffe://example.org/a")
    with pytest.raises(AttributeError):
        sid.path = "/b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sid.trust_domain.name = "evil.org"  # type: ignore[misc]


def test_equality_hash_and_ordering() -> None:
    a1 = SpiffeId.parse("spiffe://example.org/a")
    a2 = SpiffeId.from_segments(TrustDomain("example.org"), "a")
    assert a1 == a2
    assert hash(a1) == hash(a2)
    assert len({a1, a2}) == 1
    assert a1 != "spiffe://example.org/a"
    assert TrustDomain("example.org") != "example.org"
    texts = [
        "spiffe://b.org/a",
        "spiffe://a.org/z",
        "spiffe://a.org",
        "spiffe://a.org/B",
        "spiffe://a.org/a",
    ]
    ordered = sorted(SpiffeId.parse(t) for t in texts)
    assert [str(i) for i in ordered] == [
        "spiffe://a.org",
        "spiffe://a.org/B",
        "spiffe://a.org/a",
        "spiffe://a.org/z",
        "spiffe://b.org/a",
    ]
    assert TrustDomain("a.org") < TrustDomain("b.org")


# --------------------------------------------------------------------------------------
# Matchers


def test_matchers() -> None:
    td = TrustDomain("example.org")
    web = SpiffeId.parse("spiffe://example.org/web")
    db = SpiffeId.parse("spiffe://example.org/db")
    other = SpiffeId.parse("spiffe://example.com/web")

    assert all(match_any()(i) for i in (web, db, other))

    exact = match_id(web)
    assert exact(web)
    assert exact(SpiffeId.parse("spiffe://example.org/web"))
    assert not exact(db)
    assert not exact(other)
    assert "spiffe://example.org/web" in str(exact)

    one_of = match_one_of([db, web])
    assert one_of(web)
    assert one_of(db)
    assert not one_of(other)
    assert str(one_of) == "one of [spiffe://example.org/db, spiffe://example.org/web]"
    assert not match_one_of([])(web)

    member = match_member_of(td)
    assert member(web)
    assert member(td.id)
    assert not member(other)
    assert "example.org" in str(member)


def test_match_one_of_takes_a_snapshot_of_an_iterator() -> None:
    """A generator is consumed once; later calls still see every ID."""
    web = SpiffeId.parse("spiffe://example.org/web")
    matcher = match_one_of(i for i in [web])
    assert matcher(web)
    assert matcher(web)


# --------------------------------------------------------------------------------------
# Property tests

segment_st = st.text(PATH_ALPHABET, min_size=1, max_size=40).filter(lambda s: s not in {".", ".."})
trust_domain_st = st.text(TD_ALPHABET, min_size=1, max_size=MAX_TRUST_DOMAIN_LENGTH)
grammar_id_st = st.builds(
    lambda td, segs: "spiffe://" + td + "".join("/" + s for s in segs),
    trust_domain_st,
    st.lists(segment_st, max_size=12),
)


@given(st.text())
def test_id_any_text_raises_only_spiffe_id_error(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert str(parsed) == text


@given(st.text(st.characters(codec=None, categories=["Cs", "Lu", "Ll", "Nd", "P", "Cc"])))
def test_id_text_with_surrogates_raises_only_spiffe_id_error(text: str) -> None:
    for candidate in (text, "spiffe://" + text, "spiffe://example.org/" + text):
        with contextlib.suppress(SpiffeIdError):
            SpiffeId.parse(candidate)
        with contextlib.suppress(SpiffeIdError):
            TrustDomain.parse(candidate)


@given(grammar_id_st)
def test_id_grammar_generated_ids_accepted_and_round_trip(text: str) -> None:
    """§1.2: every string the grammar generates (within the limits) is accepted unchanged."""
    parsed = SpiffeId.parse(text)
    assert str(parsed) == text
    assert SpiffeId.parse(str(parsed)) == parsed
    assert SpiffeId.from_segments(parsed.trust_domain, *parsed.segments) == parsed
    assert TrustDomain.parse(text) == parsed.trust_domain


@st.composite
def near_limit_id_st(draw: st.DrawFn) -> str:
    """A grammar-valid ID (ignoring length) of 2030..2070 bytes, random up to the padding."""
    target = draw(st.integers(MAX_ID_LENGTH - 18, MAX_ID_LENGTH + 22))
    text = "spiffe://" + draw(trust_domain_st)
    for seg in draw(st.lists(segment_st, max_size=6)):
        if len(text) + 1 + len(seg) > target - 2:
            break
        text += "/" + seg
    return text + "/" + "z" * (target - len(text) - 1)


@given(near_limit_id_st())
def test_id_12_grammar_ids_accepted_exactly_up_to_the_limit(text: str) -> None:
    """Grammar-generated IDs near 2048 bytes: accepted if and only if they fit (ID-12)."""
    if len(text) <= MAX_ID_LENGTH:
        assert str(SpiffeId.parse(text)) == text
    else:
        with pytest.raises(SpiffeIdError, match=f"{len(text)} bytes long"):
            SpiffeId.parse(text)


def test_trust_domain_constructor_points_to_parse_for_the_id_form() -> None:
    with pytest.raises(SpiffeIdError, match=r"use TrustDomain\.parse"):
        TrustDomain("spiffe://example.org")


@given(grammar_id_st, st.integers(min_value=0), st.sampled_from(sorted(set(map(chr, range(128))))))
def test_id_grammar_id_with_a_foreign_character_rejected(text: str, where: int, c: str) -> None:
    """Insert a character outside the allowed set after the scheme; it must be rejected."""
    prefix = len("spiffe://")
    i = prefix + where % (len(text) - prefix + 1)
    allowed = TD_ALPHABET if "/" not in text[prefix:i] else PATH_ALPHABET
    if c in allowed or c == "/":
        return
    mutated = text[:i] + c + text[i:]
    with pytest.raises(SpiffeIdError, match=f"position {i}"):
        SpiffeId.parse(mutated)
