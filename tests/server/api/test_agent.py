"""agent.v1.Agent admin RPCs: list/count/get with filters and masks, evict, ban, join tokens."""

from __future__ import annotations

import time

import pytest
from google.protobuf import wrappers_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.agent.v1 import agent_pb2 as A
from spiffed._proto.spire.api.server.entry.v1 import entry_pb2 as E
from spiffed._proto.spire.api.types import agent_pb2, selector_pb2
from spiffed.server import datastore as ds

from .conftest import Api
from .helpers import sel, sid


def agent_id(name: str) -> str:
    return f"spiffe://example.org/spire/agent/x509pop/{name}"


async def add_nodes(api: Api) -> None:
    await api.ds.create_node(
        ds.AttestedNode(
            agent_id("a"),
            attestation_data_type="x509pop",
            cert_serial_number="1",
            cert_not_after=1000,
            selectors=(ds.Selector("k", "1"), ds.Selector("k", "2")),
        )
    )
    await api.ds.create_node(
        ds.AttestedNode(
            agent_id("b"),
            attestation_data_type="join_token",
            cert_serial_number="2",
            cert_not_after=4_000_000_000,
            can_reattest=True,
            selectors=(ds.Selector("k", "1"),),
        )
    )


async def test_list_count_get_with_filters_and_mask(api: Api) -> None:
    await add_nodes(api)
    F = A.ListAgentsRequest.Filter

    async def names(flt: A.ListAgentsRequest.Filter) -> list[str]:
        resp = await api.agent.ListAgents(A.ListAgentsRequest(filter=flt))
        count = await api.agent.CountAgents(
            A.CountAgentsRequest(
                filter=A.CountAgentsRequest.Filter(**{f.name: v for f, v in flt.ListFields()})
            )
        )
        assert count.count == len(resp.agents)
        return [a.id.path.rsplit("/", 1)[1] for a in resp.agents]

    assert await names(F()) == ["a", "b"]
    assert await names(F(by_attestation_type="join_token")) == ["b"]
    assert await names(F(by_can_reattest=wrappers_pb2.BoolValue(value=True))) == ["b"]
    assert await names(F(by_banned=wrappers_pb2.BoolValue(value=True))) == []
    m = selector_pb2.SelectorMatch
    exact = m(selectors=[sel("k:1")], match=m.MATCH_EXACT)
    superset = m(selectors=[sel("k:1")], match=m.MATCH_SUPERSET)
    assert await names(F(by_selector_match=exact)) == ["b"]
    assert await names(F(by_selector_match=superset)) == ["a", "b"]
    assert await names(F(by_expires_before="2000-01-01 00:00:00 +0000")) == ["a"]
    assert await names(F(by_expires_before="2000-01-01 00:00:00 +0000 +00")) == ["a"]
    assert await names(F(by_expires_before="1970-01-01 00:00:00 +0000 UTC")) == []

    got = await api.agent.GetAgent(
        A.GetAgentRequest(
            id=sid("example.org", "/spire/agent/x509pop/a"),
            output_mask=agent_pb2.AgentMask(attestation_type=True),
        )
    )
    assert got.id.path == "/spire/agent/x509pop/a" and got.attestation_type == "x509pop"
    assert not got.selectors and got.x509svid_serial_number == ""
    full = await api.agent.GetAgent(
        A.GetAgentRequest(id=sid("example.org", "/spire/agent/x509pop/a"))
    )
    assert full.x509svid_serial_number == "1" and len(full.selectors) == 2 and not full.banned


@pytest.mark.parametrize(
    ("flt", "token"),
    [
        (A.ListAgentsRequest.Filter(by_expires_before="yesterday"), ""),
        (
            A.ListAgentsRequest.Filter(
                by_selector_match=selector_pb2.SelectorMatch(selectors=[sel("k:")])
            ),
            "",
        ),
        (A.ListAgentsRequest.Filter(), "garbage!"),
    ],
)
async def test_list_agents_bad_input(api: Api, flt: A.ListAgentsRequest.Filter, token: str) -> None:
    with pytest.raises(GRPCError) as err:
        await api.agent.ListAgents(A.ListAgentsRequest(filter=flt, page_token=token))
    assert err.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("path", "td", "status"),
    [
        ("/spire/agent/x509pop/zzz", "example.org", Status.NOT_FOUND),
        ("/spire/agent/x509pop/a", "other.org", Status.INVALID_ARGUMENT),
        ("/workload", "example.org", Status.INVALID_ARGUMENT),
        ("bad", "example.org", Status.INVALID_ARGUMENT),
    ],
)
async def test_get_delete_ban_refusals_change_nothing(
    api: Api, path: str, td: str, status: Status
) -> None:
    await add_nodes(api)
    before = (await api.ds.list_nodes()).items
    for call, req in (
        (api.agent.GetAgent, A.GetAgentRequest(id=sid(td, path))),
        (api.agent.DeleteAgent, A.DeleteAgentRequest(id=sid(td, path))),
        (api.agent.BanAgent, A.BanAgentRequest(id=sid(td, path))),
    ):
        with pytest.raises(GRPCError) as err:
            await call(req)  # type: ignore[operator]
        assert err.value.status is status
    assert (await api.ds.list_nodes()).items == before


async def test_ban_then_evict(api: Api) -> None:
    await add_nodes(api)
    a = sid("example.org", "/spire/agent/x509pop/a")
    await api.agent.BanAgent(A.BanAgentRequest(id=a))
    assert (await api.ds.get_node(agent_id("a"))).banned
    banned = await api.agent.ListAgents(
        A.ListAgentsRequest(
            filter=A.ListAgentsRequest.Filter(by_banned=wrappers_pb2.BoolValue(value=True))
        )
    )
    assert [x.id.path for x in banned.agents] == ["/spire/agent/x509pop/a"]
    await api.agent.DeleteAgent(A.DeleteAgentRequest(id=a))
    with pytest.raises(ds.NotFoundError):
        await api.ds.get_node(agent_id("a"))
    assert (await api.agent.CountAgents(A.CountAgentsRequest())).count == 1


async def test_create_join_token(api: Api) -> None:
    t0 = int(time.time())
    tok = await api.agent.CreateJoinToken(A.CreateJoinTokenRequest(ttl=600))
    assert len(tok.value) == 36 and t0 + 600 <= tok.expires_at <= int(time.time()) + 600
    assert await api.ds.count_entries() == 0
    given = await api.agent.CreateJoinToken(
        A.CreateJoinTokenRequest(ttl=60, token="mytoken", agent_id=sid("example.org", "/node1"))
    )
    assert given.value == "mytoken"
    [alias] = (await api.entry.ListEntries(E.ListEntriesRequest())).entries
    token_agent = "spiffe://example.org/spire/agent/join_token/mytoken"
    assert alias.spiffe_id.path == "/node1"
    assert alias.parent_id.path == "/spire/agent/join_token/mytoken"
    assert [(s.type, s.value) for s in alias.selectors] == [("spiffe_id", token_agent)]
    assert (await api.ds.consume_join_token("mytoken")).token == "mytoken"


@pytest.mark.parametrize(
    ("req", "status"),
    [
        (A.CreateJoinTokenRequest(), Status.INVALID_ARGUMENT),
        (A.CreateJoinTokenRequest(ttl=-5), Status.INVALID_ARGUMENT),
        (
            A.CreateJoinTokenRequest(ttl=60, agent_id=sid("other.org", "/n")),
            Status.INVALID_ARGUMENT,
        ),
        (
            A.CreateJoinTokenRequest(ttl=60, agent_id=sid("example.org", "x")),
            Status.INVALID_ARGUMENT,
        ),
        (A.CreateJoinTokenRequest(ttl=60, token="dup"), Status.INTERNAL),
    ],
)
async def test_create_join_token_refusals_write_nothing(
    api: Api, req: A.CreateJoinTokenRequest, status: Status
) -> None:
    await api.ds.create_join_token(ds.JoinToken("dup", int(time.time()) + 60))
    with pytest.raises(GRPCError) as err:
        await api.agent.CreateJoinToken(req)
    assert err.value.status is status
    assert await api.ds.count_entries() == 0
    assert await api.ds.prune_join_tokens(2**40) == 1, "only the pre-existing token is stored"
