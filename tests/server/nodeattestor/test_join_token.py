"""join_token node attestation: one use per token, expiry, SPIRE's agent ID and messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from spiffed.config.plugins import PluginConfig
from spiffed.server import datastore as ds
from spiffed.server.datastore import open_datastore
from spiffed.server.nodeattestor import AttestationError, build_node_attestors
from spiffed.server.nodeattestor.join_token import JoinTokenAttestor
from spiffed.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
NOW = 1_700_000_000
NOT_FOUND = "failed to attest: join token does not exist or has already been used"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Any]:
    s = await open_datastore("sqlite3", str(tmp_path / "ds.sqlite3"))
    try:
        yield s
    finally:
        await s.close()


def attestor(store: Any) -> JoinTokenAttestor:
    return JoinTokenAttestor(TD, store, now=lambda: float(NOW))


async def no_challenge(_data: bytes) -> bytes:
    raise AssertionError("join_token never challenges")


async def test_token_attests_as_its_agent_id_without_selectors(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("abc", NOW + 60))
    result = await attestor(store).attest(b"abc", no_challenge)
    assert result.agent_id == SpiffeId.parse("spiffe://example.org/spire/agent/join_token/abc")
    assert result.selectors == ()
    assert result.can_reattest is False


async def test_token_works_once(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("once", NOW + 60))
    await attestor(store).attest(b"once", no_challenge)
    with pytest.raises(AttestationError) as err:
        await attestor(store).attest(b"once", no_challenge)
    assert (err.value.status, err.value.message) == (Status.INVALID_ARGUMENT, NOT_FOUND)


async def test_concurrent_attempts_with_one_token_yield_one_agent(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("race", NOW + 60))
    outcomes = await asyncio.gather(
        *(attestor(store).attest(b"race", no_challenge) for _ in range(5)),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, AttestationError)]
    assert len(wins) == 1 and len(losses) == 4
    assert all(e.status is Status.INVALID_ARGUMENT for e in losses)


async def test_expired_token_is_refused_and_consumed(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("old", NOW - 1))
    with pytest.raises(AttestationError) as err:
        await attestor(store).attest(b"old", no_challenge)
    assert (err.value.status, err.value.message) == (Status.INVALID_ARGUMENT, "join token expired")
    with pytest.raises(ds.NotFoundError):
        await store.consume_join_token("old")


async def test_token_expiring_this_second_still_works(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("edge", NOW))
    await attestor(store).attest(b"edge", no_challenge)


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"nope", b"a/../b", b"x" * 5000])
async def test_unknown_or_garbage_payload_is_not_found(store: Any, payload: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        await attestor(store).attest(payload, no_challenge)
    assert (err.value.status, err.value.message) == (Status.INVALID_ARGUMENT, NOT_FOUND)


async def test_undo_gives_the_token_back(store: Any) -> None:
    await store.create_join_token(ds.JoinToken("back", NOW + 60))
    result = await attestor(store).attest(b"back", no_challenge)
    assert result.undo is not None
    await result.undo()
    assert await store.consume_join_token("back") == ds.JoinToken("back", NOW + 60)


def test_join_token_is_built_in_whether_configured_or_not(store: Any) -> None:
    assert set(build_node_attestors(TD, (), store)) == {"join_token"}


def test_unsupported_attestor_in_config_is_refused(store: Any) -> None:
    plugin = PluginConfig("NodeAttestor", "aws_iid")
    with pytest.raises(AttestationError) as err:
        build_node_attestors(TD, [plugin], store)
    assert "aws_iid" in err.value.message
