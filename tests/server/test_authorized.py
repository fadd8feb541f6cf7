"""The authorized-entry index against a brute-force reading of SPIRE's rules."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from spiffed.selector import Selector
from spiffed.server.authorized import AuthorizedEntryIndex
from spiffed.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
SERVER = SpiffeId.parse("spiffe://example.org/spire/server")


@dataclass(frozen=True)
class Entry:
    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: tuple[Selector, ...]


def sid(path: str, td: str = "example.org") -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{td}{path}")


AGENTS = [sid(f"/spire/agent/join_token/a{i}") for i in range(3)]
WORKLOADS = [sid(f"/w{i}") for i in range(6)]
NODE_SELECTORS = [Selector("x509pop", f"subject:cn:n{i}") for i in range(4)]


def oracle(entries: list[Entry], agent: SpiffeId, agent_sels: frozenset[Selector]) -> set[str]:
    """Fixpoint of SPIRE's definition, written the slow and obvious way."""
    local = [e for e in entries if e.spiffe_id.member_of(TD) and e.parent_id.member_of(TD)]
    parents = {agent}
    parents |= {
        e.spiffe_id
        for e in local
        if e.parent_id == SERVER and e.selectors and set(e.selectors) <= agent_sels
    }
    found: set[str] = set()
    while True:
        new = {e.id for e in local if e.parent_id in parents} - found
        if not new:
            return found
        found |= new
        parents |= {e.spiffe_id for e in local if e.id in new}


ids = st.sampled_from(WORKLOADS + AGENTS + [SERVER, sid("/x", "other.org")])
entry_st = st.builds(
    Entry,
    id=st.sampled_from([f"e{i}" for i in range(12)]),
    spiffe_id=ids,
    parent_id=ids,
    selectors=st.lists(st.sampled_from(NODE_SELECTORS), max_size=3, unique=True).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.one_of(entry_st, st.sampled_from([f"e{i}" for i in range(12)])), max_size=30),
    agent_sels=st.lists(st.sampled_from(NODE_SELECTORS), unique=True).map(frozenset),
)
def test_index_matches_the_definition_after_any_sequence_of_changes(ops, agent_sels) -> None:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    current: dict[str, Entry] = {}
    for op in ops:
        if isinstance(op, Entry):
            index.upsert_entry(op)
            current[op.id] = op
        else:
            index.remove_entry(op)
            current.pop(op, None)
    for agent in AGENTS:
        index.set_agent(agent, agent_sels)
        got = [e.id for e in index.authorized_entries(agent)]
        assert len(got) == len(set(got)), "each entry once"
        assert set(got) == oracle(list(current.values()), agent, agent_sels)


def test_node_alias_needs_every_one_of_its_selectors() -> None:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    alias = Entry("alias", sid("/cluster/east"), SERVER, tuple(NODE_SELECTORS[:2]))
    workload = Entry("wl", sid("/web"), sid("/cluster/east"), (Selector("unix", "uid:1000"),))
    index.upsert_entry(alias)
    index.upsert_entry(workload)
    index.set_agent(AGENTS[0], NODE_SELECTORS[:1])
    assert index.authorized_entries(AGENTS[0]) == []
    index.set_agent(AGENTS[0], NODE_SELECTORS[:3])
    # The alias entry itself names the node group; only what is parented to it is served.
    assert {e.id for e in index.authorized_entries(AGENTS[0])} == {"wl"}
    index.remove_agent(AGENTS[0])
    assert index.authorized_entries(AGENTS[0]) == []


def test_entries_of_other_trust_domains_are_never_authorized() -> None:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    index.upsert_entry(Entry("x", sid("/w", "other.org"), AGENTS[0], ()))
    index.upsert_entry(Entry("y", sid("/w"), sid("/spire/agent/a", "other.org"), ()))
    assert len(index) == 0
    assert index.authorized_entries(AGENTS[0]) == []
    assert index.authorized_entries(sid("/spire/agent/a", "other.org")) == []


def test_parent_cycles_terminate() -> None:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    index.upsert_entry(Entry("a", sid("/a"), AGENTS[0], ()))
    index.upsert_entry(Entry("b", sid("/b"), sid("/a"), ()))
    index.upsert_entry(Entry("c", sid("/a"), sid("/b"), ()))
    assert {e.id for e in index.authorized_entries(AGENTS[0])} == {"a", "b", "c"}


def test_update_moves_an_entry_to_its_new_parent() -> None:
    index: AuthorizedEntryIndex[Entry] = AuthorizedEntryIndex(TD)
    index.upsert_entry(Entry("a", sid("/a"), AGENTS[0], ()))
    index.upsert_entry(Entry("a", sid("/a"), AGENTS[1], ()))
    assert index.authorized_entries(AGENTS[0]) == []
    assert [e.id for e in index.authorized_entries(AGENTS[1])] == ["a"]
