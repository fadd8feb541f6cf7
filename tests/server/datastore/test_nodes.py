"""Attested nodes on both engines."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest

from spiffed.server.datastore import (
    AlreadyExistsError,
    AttestedNode,
    DataStore,
    FailedPreconditionError,
    InvalidArgumentError,
    MatchBehavior,
    NodeFilter,
    NotFoundError,
    Selector,
    SelectorFilter,
)

AGENT = "spiffe://example.org/spire/agent/x509pop/"


def node(name: str, *sels: str, **kw: object) -> AttestedNode:
    fields: dict[str, object] = {
        "attestation_data_type": "x509pop",
        "cert_serial_number": "1",
        "cert_not_after": 1000,
        **kw,
    }
    return AttestedNode(
        spiffe_id=AGENT + name,
        selectors=tuple(Selector(*s.split(":", 1)) for s in sels),
        **fields,  # type: ignore[arg-type]
    )


async def test_crud_and_ban(ds: DataStore) -> None:
    made = await ds.create_node(node("a", "x:2", "x:1", agent_version="1.2.3"))
    assert made.selectors == (Selector("x", "1"), Selector("x", "2"))
    assert await ds.get_node(made.spiffe_id) == made
    with pytest.raises(AlreadyExistsError, match="already exists"):
        await ds.create_node(node("a"))
    renewed = await ds.update_node(
        replace(made, new_cert_serial_number="2", new_cert_not_after=2000, agent_version="x"),
        {"new_cert_serial_number", "new_cert_not_after"},
    )
    assert (renewed.new_cert_serial_number, renewed.agent_version) == ("2", "1.2.3")
    assert not renewed.banned
    banned = await ds.ban_node(made.spiffe_id)
    assert banned.banned and banned.selectors == made.selectors
    assert await ds.delete_node(made.spiffe_id) == banned
    with pytest.raises(NotFoundError, match="not found"):
        await ds.get_node(made.spiffe_id)
    with pytest.raises(NotFoundError):
        await ds.ban_node(made.spiffe_id)
    assert (await ds.list_nodes()).items == ()


CERT_MASK = ("cert_serial_number", "cert_not_after", "new_cert_serial_number")


async def test_update_expecting_not_banned_refuses_a_banned_node(ds: DataStore) -> None:
    made = await ds.create_node(node("a", "x:1"))
    reattested = replace(made, cert_serial_number="5", selectors=())
    done = await ds.update_node(reattested, (*CERT_MASK, "selectors"), expect_not_banned=True)
    assert done.cert_serial_number == "5"
    await ds.ban_node(made.spiffe_id)
    with pytest.raises(FailedPreconditionError, match="banned"):
        await ds.update_node(reattested, (*CERT_MASK, "selectors"), expect_not_banned=True)
    after = await ds.get_node(made.spiffe_id)
    assert after.banned and after.selectors == (), "nothing of the refused update is written"


async def test_update_expecting_new_serial_is_a_compare_and_set(ds: DataStore) -> None:
    made = await ds.create_node(node("a", new_cert_serial_number="7", new_cert_not_after=9))
    promoted = AttestedNode(made.spiffe_id, cert_serial_number="7", cert_not_after=9)
    for wrong in ("8", ""):
        with pytest.raises(FailedPreconditionError):
            await ds.update_node(promoted, CERT_MASK, expect_new_serial=wrong)
    done = await ds.update_node(promoted, CERT_MASK, expect_new_serial="7")
    assert (done.cert_serial_number, done.new_cert_serial_number) == ("7", "")
    # Promoted once: a second promotion of the same serial no longer applies.
    with pytest.raises(FailedPreconditionError):
        await ds.update_node(promoted, CERT_MASK, expect_new_serial="7")
    # A node whose current serial is blank (banned) is never promoted.
    await ds.update_node(
        AttestedNode(made.spiffe_id, new_cert_serial_number="10"), ("new_cert_serial_number",)
    )
    await ds.update_node(AttestedNode(made.spiffe_id), ("cert_serial_number",))
    with pytest.raises(FailedPreconditionError):
        await ds.update_node(promoted, CERT_MASK, expect_new_serial="10")
    assert (await ds.get_node(made.spiffe_id)).cert_serial_number == ""


async def test_conditional_update_racing_a_ban_never_lifts_it(ds: DataStore) -> None:
    """Whatever order the engine runs them in, a ban racing a conditional re-attestation
    write always ends banned (the check and the write are one transaction)."""
    for i in range(10):
        made = await ds.create_node(node(f"race{i}"))
        reattested = replace(made, cert_serial_number="99")

        async def reattest(n: AttestedNode = reattested) -> None:
            with contextlib.suppress(FailedPreconditionError):
                await ds.update_node(n, CERT_MASK, expect_not_banned=True)

        if i % 2:
            await asyncio.gather(reattest(), ds.ban_node(made.spiffe_id))
        else:
            await asyncio.gather(ds.ban_node(made.spiffe_id), reattest())
        assert (await ds.get_node(made.spiffe_id)).banned


async def test_set_node_selectors(ds: DataStore) -> None:
    made = await ds.create_node(node("a", "x:1"))
    await ds.set_node_selectors(made.spiffe_id, [Selector("y", "1"), Selector("y", "1")])
    assert (await ds.get_node(made.spiffe_id)).selectors == (Selector("y", "1"),)
    updated = await ds.update_node(replace(made, selectors=()), {"selectors"})
    assert updated.selectors == ()


async def test_invalid_node_leaves_nothing(ds: DataStore) -> None:
    for bad in (
        node("a", cert_not_after=-1),
        replace(node("a"), spiffe_id="not-an-id"),
        node("a", "x:"),
        node("a", agent_version="v" * 300),
    ):
        with pytest.raises(InvalidArgumentError):
            await ds.create_node(bad)
    assert await ds.count_nodes() == 0
    with pytest.raises(InvalidArgumentError, match="unknown fields"):
        await ds.update_node(node("a"), {"spiffe_id"})


async def test_filters_and_pagination(ds: DataStore) -> None:
    a = await ds.create_node(node("a", "r:1", "r:2", can_reattest=True))
    b = await ds.create_node(node("b", "r:1", cert_not_after=5000))
    c = await ds.create_node(replace(node("c", "r:3"), attestation_data_type="join_token"))
    await ds.ban_node(c.spiffe_id)

    async def names(**kw: object) -> set[str]:
        page = await ds.list_nodes(NodeFilter(**kw))  # type: ignore[arg-type]
        return {n.spiffe_id.rsplit("/", 1)[1] for n in page.items}

    assert await names(by_attestation_type="x509pop") == {"a", "b"}
    assert await names(by_banned=True) == {"c"}
    assert await names(by_banned=False) == {"a", "b"}
    assert await names(by_expires_before=2000) == {"a", "c"}
    assert await names(by_can_reattest=True) == {"a"}
    r1 = (Selector("r", "1"),)
    r12 = (Selector("r", "1"), Selector("r", "2"))
    assert await names(by_selectors=SelectorFilter(r1, MatchBehavior.EXACT)) == {"b"}
    assert await names(by_selectors=SelectorFilter(r1, MatchBehavior.SUPERSET)) == {"a", "b"}
    assert await names(by_selectors=SelectorFilter(r12, MatchBehavior.SUBSET)) == {"a", "b"}
    assert await names(by_selectors=SelectorFilter(r12, MatchBehavior.ANY)) == {"a", "b"}
    assert await ds.count_nodes(NodeFilter(by_banned=False)) == 2
    first = await ds.list_nodes(page_size=2)
    second = await ds.list_nodes(page_size=2, page_token=first.next_token)
    assert [n.spiffe_id for n in first.items + second.items] == [
        a.spiffe_id,
        b.spiffe_id,
        c.spiffe_id,
    ]
    assert second.next_token == ""
    with pytest.raises(InvalidArgumentError, match="malformed page token"):
        await ds.list_nodes(page_size=2, page_token="??")
