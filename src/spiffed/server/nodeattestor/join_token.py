"""Server half of ``join_token``: a one-time token created by an operator.

As in SPIRE, join-token attestation is built into the server: the token (the attestation
payload) is taken from the datastore in one step, so of two agents racing with the same
token exactly one gets it, then its expiry is checked (an expired token is consumed too).
The agent ID is ``spiffe://<td>/spire/agent/join_token/<token>``; the node gets no
selectors and cannot re-attest (a token works once). When the server refuses the node after
the token was taken (banned agent, signing refused), the token is given back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from grpclib.const import Status

from spiffed.server import datastore as ds
from spiffed.server.nodeattestor import AttestationError, AttestResult, Challenger
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = ["PLUGIN_NAME", "JoinTokenAttestor", "join_token_agent_id"]

PLUGIN_NAME = "join_token"

_NOT_FOUND = "failed to attest: join token does not exist or has already been used"


def join_token_agent_id(td: TrustDomain, token: str) -> SpiffeId:
    """The agent ID a join token attests as: ``spiffe://<td>/spire/agent/join_token/<token>``."""
    return SpiffeId.parse(f"{td.id_string()}/spire/agent/join_token/{token}")


class JoinTokenAttestor:
    """Consumes join tokens from the datastore."""

    name = PLUGIN_NAME

    def __init__(
        self,
        trust_domain: TrustDomain,
        datastore: Any,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._td = trust_domain
        self._ds = datastore
        self._now = now

    async def attest(self, payload: bytes, challenge: Challenger) -> AttestResult:
        """Consume the token in ``payload``; no challenge is needed."""
        del challenge
        try:
            token = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise AttestationError(Status.INVALID_ARGUMENT, _NOT_FOUND) from None
        try:
            stored = await self._ds.consume_join_token(token)
        except (ds.NotFoundError, ds.InvalidArgumentError):
            raise AttestationError(Status.INVALID_ARGUMENT, _NOT_FOUND) from None
        except ds.DataStoreError as exc:
            raise AttestationError(Status.INTERNAL, f"failed to fetch join token: {exc}") from None
        if stored.expiry < self._now():
            raise AttestationError(Status.INVALID_ARGUMENT, "join token expired")
        try:
            agent_id = join_token_agent_id(self._td, token)
        except SpiffeIdError as exc:
            raise AttestationError(
                Status.INTERNAL, f"failed to create join token ID: {exc}"
            ) from None

        async def undo() -> None:
            await self._ds.create_join_token(stored)

        return AttestResult(agent_id=agent_id, selectors=(), can_reattest=False, undo=undo)
