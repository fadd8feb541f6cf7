"""The error messages docs/operations.md and docs/migrating-from-spire.md quote are still the
code's: each phrase below must appear in the doc and in the source that produces it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "spiffed"

# (doc, fixed part of a quoted message); the fixed part is what the source spells out.
QUOTED = [
    ("operations.md", "no identity issued"),
    ("operations.md", "is not set; set it to the Workload API address"),
    ("operations.md", "has no URI scheme; expected a URI such as"),
    ("operations.md", "no first update from"),
    ("operations.md", "is not authorized: "),
    ("operations.md", "unexpected ID "),
    ("operations.md", "peer X509-SVID rejected: "),
    ("operations.md", "is untrusted"),
    ("operations.md", "did not validate against the X.509 bundle of"),
    ("operations.md", "does not contain the expected"),
    ("operations.md", "the token is untrusted (JWT-18)"),
    ("operations.md", "join token does not exist or has already been used"),
    ("operations.md", 'NodeAttestor "join_token" needs join_token or join_token_file'),
    ("operations.md", "cannot connect to the server at "),
    ("operations.md", "agent needs to re-attest: removing SVID and shutting down"),
    ("operations.md", "agent is banned: removing SVID and shutting down"),
    ("operations.md", "ignoring stored agent state, attesting again"),
    ("operations.md", "newer than this spiffed "),
    ("operations.md", "and disable_migration is set; migrate it or unset disable_migration"),
    ("operations.md", "unknown key in "),
    ("operations.md", "is a SPIRE setting that spiffed recognises but does not support yet"),
    ("operations.md", "unable to taint current local authority"),
    ("operations.md", "it is not possible to revoke an untainted root CA"),
    ("operations.md", "similar entry already exists"),
    ("operations.md", "server is unhealthy: "),
    ("operations.md", "unable to determine health"),
    ("operations.md", "another spiffed dev is running on"),
    ("operations.md", "leave out --trust-domain to resume it, or give another --data-dir"),
    ("operations.md", "spiffed dev data directory; give --data-dir a new or empty directory"),
    ("operations.md", "expected SPIFFEID=SELECTOR[,SELECTOR...]"),
    ("operations.md", "reusing stored agent SVID"),
    ("operations.md", "Server SVID rotated"),
    ("migrating-from-spire.md", "is not supported by spiffed yet"),
    ("migrating-from-spire.md", "; built-in: "),
    ("migrating-from-spire.md", "database type is not supported by spiffed yet"),
    ("migrating-from-spire.md", "WIT-SVID functionality is not yet implemented"),
]


def _source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))


@pytest.fixture(scope="module")
def source() -> str:
    return _source_text()


@pytest.mark.parametrize(("doc", "phrase"), QUOTED)
def test_quoted_message_is_in_the_doc_and_the_code(doc: str, phrase: str, source: str) -> None:
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    assert phrase in " ".join(text.split()), f"docs/{doc} no longer quotes {phrase!r}"
    assert phrase in source, f"no source under src/spiffed says {phrase!r} any more"
