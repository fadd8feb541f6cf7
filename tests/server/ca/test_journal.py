"""The CA journal round-trips and refuses anything malformed with a clear error."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffed.server.ca.journal import Journal, JournalError, JwtSlot, SlotStatus, X509Slot
from tests.server.nodeattestor.pki import make_cert

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def journal() -> Journal:
    upstream = make_cert("upstream root", ca=True)
    ca_a = make_cert("ca A", ca=True)
    ca_b = make_cert("ca B", issuer=upstream, ca=True)
    return Journal(
        x509=(
            X509Slot("A", SlotStatus.OLD, ca_a.cert),
            X509Slot("B", SlotStatus.ACTIVE, ca_b.cert, (upstream.cert,)),
        ),
        jwt=(
            JwtSlot("A", SlotStatus.ACTIVE, "kid-a", b"\x30\x00", NOW, NOW + dt.timedelta(days=1)),
        ),
    )


def test_round_trip(journal: Journal) -> None:
    again = Journal.from_bytes(journal.to_bytes())
    assert again.to_bytes() == journal.to_bytes()
    b = next(s for s in again.x509 if s.slot == "B")
    assert b.key_id == "x509-CA-B"
    assert b.upstream_chain == journal.x509[1].upstream_chain
    assert again.jwt[0].key_id == "JWT-Signer-A"
    assert again.jwt[0].authority_id == "kid-a"


def test_slot_replacement_keeps_one_slot_per_id(journal: Journal) -> None:
    replaced = journal.with_x509(X509Slot("A", SlotStatus.PREPARED, journal.x509[0].certificate))
    assert sorted(s.slot for s in replaced.x509) == ["A", "B"]
    assert {s.slot: s.status for s in replaced.x509}["A"] is SlotStatus.PREPARED


def test_two_active_slots_are_refused(journal: Journal) -> None:
    with pytest.raises(JournalError, match=r"two active X\.509 slots"):
        journal.with_x509(X509Slot("A", SlotStatus.ACTIVE, journal.x509[0].certificate))


def test_authority_ids_are_subject_key_ids(journal: Journal) -> None:
    slot = journal.x509[0]
    assert len(bytes.fromhex(slot.authority_id)) == 20
    assert journal.x509[0].upstream_authority_id == ""


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "not a version 1 journal"),
        (lambda d: d["x509"][0].update(slot="C"), "slot must be 'A' or 'B'"),
        (lambda d: d["x509"][0].update(status="retired"), "unknown slot status"),
        (lambda d: d["x509"][0].update(certificate="!!"), "not valid base64"),
        (lambda d: d["x509"][0].update(certificate="AAAA"), "not a DER certificate"),
        (lambda d: d["jwt"][0].update(kid=""), "non-empty kid"),
        (lambda d: d["jwt"][0].update(not_after="soon"), "integer timestamp"),
    ],
)
def test_corrupt_journals_are_named(journal: Journal, mutate, message: str) -> None:
    doc = json.loads(journal.to_bytes())
    mutate(doc)
    with pytest.raises(JournalError, match=message):
        Journal.from_bytes(json.dumps(doc).encode())


@given(st.binary(max_size=200))
def test_garbage_raises_only_journal_error(data: bytes) -> None:
    with contextlib.suppress(JournalError):
        Journal.from_bytes(data)
