"""Cross-check of SPIFFE ID parsing against py-spiffe (``spiffe.SpiffeId``, py-spiffe 0.3.x).

Every §1.3/§1.4 vector and hypothesis-generated strings go through both parsers. Where they
disagree the test pins both outcomes, and names the spec rule that decides for us:

- AMB-01 / ID-05: py-spiffe matches scheme and trust domain case-insensitively and lowercases
  the trust domain (``SPIFFE://Example.org`` becomes ``spiffe://example.org``); we reject
  uppercase. py-spiffe lowercases with ``str.lower``, so even the Kelvin sign U+212A becomes
  an ASCII ``k``: a non-ASCII trust domain is accepted and silently rewritten.
- ID-12 / ID-13: py-spiffe enforces neither the 2048-byte ID limit nor the 255-byte trust
  domain limit (go-spiffe doesn't either); we reject longer inputs.
- ID-05 / ID-11: py-spiffe checks characters with ``re.match(r"^[...]+$")``, and ``$`` also
  matches before a trailing newline, so ``spiffe://example.org/a\\n`` is accepted, newline
  included (§1.3 row 22 says reject), and so is a newline ending the trust domain or any
  segment (``spiffe://example.org\\n/a``). That is a py-spiffe bug.

In the other direction there must be no disagreement at all: whatever we accept, py-spiffe
accepts and prints identically.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spiffe import SpiffeId as PySpiffeId
from spiffe import TrustDomain as PyTrustDomain
from spiffe.errors import PySpiffeError

from spiffed.spiffeid import MAX_ID_LENGTH, MAX_TRUST_DOMAIN_LENGTH, SpiffeId, SpiffeIdError
from spiffed.spiffeid import TrustDomain as OurTrustDomain
from tests.test_spiffeid import (
    NEGATIVE_VECTORS,
    PATH_ALPHABET,
    POSITIVE_VECTORS,
    grammar_id_st,
    id_of_length,
)

pytestmark = pytest.mark.interop

TD_256 = "spiffe://" + "a" * 256 + "/foo"
ID_2049 = id_of_length(MAX_ID_LENGTH + 1)
ROW21_ID_2049 = "spiffe://example.org/" + "a" * (2049 - len("spiffe://example.org/"))

# (input, what py-spiffe turns it into, the rule that makes us reject it)
KNOWN_DISAGREEMENTS: list[tuple[str, str, str]] = [
    ("spiffe://Example.org/foo", "spiffe://example.org/foo", "ID-05/AMB-01"),
    ("SPIFFE://example.org/foo", "spiffe://example.org/foo", "AMB-01"),
    ("Spiffe://EXAMPLE.org/A", "spiffe://example.org/A", "AMB-01"),
    ("spiffe://\u212aexample.org/a", "spiffe://kexample.org/a", "ID-05"),
    (TD_256, TD_256, "ID-13"),
    (ID_2049, ID_2049, "ID-12"),
    (ROW21_ID_2049, ROW21_ID_2049, "ID-12"),
    ("spiffe://example.org/a\n", "spiffe://example.org/a\n", "ID-11 (§1.3 row 22)"),
    ("spiffe://example.org\n", "spiffe://example.org\n", "ID-05 (§1.3 row 22)"),
    ("spiffe://example.org\n/a", "spiffe://example.org\n/a", "ID-05"),
    ("spiffe://example.org/a\n/b", "spiffe://example.org/a\n/b", "ID-11"),
]
_DISAGREEING = {text for text, _, _ in KNOWN_DISAGREEMENTS}


def ours(text: str) -> str | None:
    """Our canonical string for ``text``, or None when we reject it."""
    try:
        return str(SpiffeId.parse(text))
    except SpiffeIdError:
        return None


def theirs(text: str) -> str | None:
    """py-spiffe's canonical string for ``text``, or None when it rejects it."""
    try:
        return str(PySpiffeId(text))
    except PySpiffeError:
        return None


def explain(text: str) -> str | None:
    """The spec rule behind a py-spiffe-accepts/we-reject split, or None if unexplained.

    Undo py-spiffe's leniencies one at a time (case folding, the trailing-newline regex
    gap, the missing length limits); if what remains is a valid ID for us, the split is
    explained by the rules undone.
    """
    canonical = theirs(text)
    assert canonical is not None
    rules: list[str] = []
    if canonical != text:
        rules.append("AMB-01/ID-05 (py-spiffe lowercases)")
    parts = canonical[len("spiffe://") :].split("/")
    if any(part.endswith("\n") for part in parts):
        rules.append("ID-05/ID-11 (py-spiffe's regex '$' accepts a newline ending a part)")
        parts = [part.removesuffix("\n") for part in parts]
        canonical = "spiffe://" + "/".join(parts)
    td_len = len(canonical[len("spiffe://") :].split("/", 1)[0].encode())
    if len(canonical.encode()) > MAX_ID_LENGTH:
        rules.append("ID-12")
    if td_len > MAX_TRUST_DOMAIN_LENGTH:
        rules.append("ID-13")
    if "ID-12" in rules or "ID-13" in rules:
        # Check everything but the length: each part on its own, with a short stand-in.
        td_name, _, path = canonical[len("spiffe://") :].partition("/")
        short = "spiffe://" + td_name[:MAX_TRUST_DOMAIN_LENGTH] + ("/" if path else "")
        if ours(short + path[: MAX_ID_LENGTH - len(short)].rstrip("/")) is None:
            return None
    elif ours(canonical) is None:
        return None
    return "; ".join(rules) or None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(t, id=f"row{n}-{t[:40]!r}")
        for n, t in NEGATIVE_VECTORS
        if t not in _DISAGREEING
    ],
)
def test_id_negative_vectors_both_reject(text: str) -> None:
    """§1.3: every row not in KNOWN_DISAGREEMENTS is rejected by both parsers."""
    assert ours(text) is None
    assert theirs(text) is None


@pytest.mark.parametrize(
    "text",
    [pytest.param(t, id=t) for t in POSITIVE_VECTORS] + [pytest.param(ID_2049[:-1], id="2048")],
)
def test_id_positive_vectors_both_accept_identically(text: str) -> None:
    """§1.4 (including an ID of exactly 2048 bytes, ID-12): both accept and print it unchanged."""
    assert ours(text) == text
    assert theirs(text) == text


@pytest.mark.parametrize(
    ("text", "pyspiffe_result", "rule"),
    [pytest.param(t, r, rule, id=f"{rule}-{t[:30]!r}") for t, r, rule in KNOWN_DISAGREEMENTS],
)
def test_id_known_disagreements(text: str, pyspiffe_result: str, rule: str) -> None:
    """py-spiffe accepts these, and we reject them because of ``rule`` (see the module doc)."""
    assert ours(text) is None
    assert theirs(text) == pyspiffe_result
    assert explain(text) is not None


def test_id_disagreements_cover_exactly_the_rows_pyspiffe_accepts() -> None:
    """The disagreement list covers every §1.3 row that py-spiffe accepts, and nothing more."""
    accepted_by_pyspiffe = {t for _, t in NEGATIVE_VECTORS if theirs(t) is not None}
    assert accepted_by_pyspiffe <= _DISAGREEING
    assert {t for _, t in NEGATIVE_VECTORS} & _DISAGREEING == accepted_by_pyspiffe


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("example.org", "example.org"),
        ("spiffe://example.org", "example.org"),
        ("spiffe://example.org/ns/prod", "example.org"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_trust_domain_both_forms_agree(text: str, name: str) -> None:
    """go-spiffe-style helper: a bare name or a spiffe:// ID gives the same trust domain."""
    assert OurTrustDomain.parse(text).name == name
    assert PyTrustDomain(text).name == name


@pytest.mark.parametrize("text", ["Example.org", "spiffe://EXAMPLE.org"])
def test_trust_domain_uppercase_amb_01(text: str) -> None:
    """AMB-01: py-spiffe lowercases a trust domain name; we reject it."""
    with pytest.raises(SpiffeIdError):
        OurTrustDomain.parse(text)
    assert PyTrustDomain(text).name == "example.org"


@given(grammar_id_st)
def test_id_grammar_ids_both_accept_identically(text: str) -> None:
    assert ours(text) == text
    assert theirs(text) == text


def _mutations() -> st.SearchStrategy[str]:
    """Grammar IDs with one edit that may or may not break them: case flips, inserted
    characters (ASCII and a few non-ASCII look-alikes), trailing whitespace."""
    extra = st.sampled_from(
        [chr(c) for c in range(128)] + ["\u212a", "\u0130", "\u017f", "\u00fc", "\ufb00"]
    )

    def mutate(text: str, kind: int, where: int, c: str) -> str:
        i = where % (len(text) + 1)
        if kind == 0:
            return text[:i] + text[i:].upper()
        if kind == 1:
            return text[:i] + c + text[i:]
        if kind == 2:
            return text + c
        return text[:i] + text[i + 1 :]

    return st.builds(mutate, grammar_id_st, st.integers(0, 3), st.integers(0, 10_000), extra)


@given(st.one_of(st.text(), st.text(string.printable), _mutations()))
def test_id_arbitrary_strings_agree_or_disagree_for_a_known_rule(text: str) -> None:
    """We never accept what py-spiffe rejects; where py-spiffe alone accepts, a rule explains it."""
    mine, other = ours(text), theirs(text)
    if mine is not None:
        assert other == mine == text
    elif other is not None:
        assert explain(text) is not None, f"unexplained: py-spiffe accepts {text!r} as {other!r}"


def test_id_path_alphabet_agrees() -> None:
    """ID-11: both parsers accept exactly the same single path characters (ASCII)."""
    for c in map(chr, range(128)):
        text = f"spiffe://example.org/a{c}"
        if c == "\n":
            continue  # the trailing-newline split, pinned in KNOWN_DISAGREEMENTS
        assert (ours(text) is None) == (theirs(text) is None), repr(c)
        if c in PATH_ALPHABET:
            assert ours(text) == text
