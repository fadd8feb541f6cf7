"""The agent's manager: keeps the agent's SVID, syncs entries, SVIDs and bundles into the cache.

On start it reuses the SVID stored in ``data_dir`` when it is still valid and verifies
against the stored bundle; otherwise it attests (``AttestAgent``). Then, every sync:

1. renew the agent SVID with ``agent.v1.Agent/RenewAgent`` once past its renewal time (half
   of its life, moved earlier by up to 10% jitter), persisting SVID, key and bundle;
2. ``entry.v1.Entry/GetAuthorizedEntries`` and replace the cache's entries;
3. ``svid.v1.SVID/BatchNewX509SVID`` for entries without an SVID, or whose SVID is past its
   renewal time (half-life with jitter), in batches, each with a new key;
4. ``bundle.v1.Bundle/GetBundle`` and ``GetFederatedBundle`` for the trust domains entries
   federate with; the bundle is persisted when it changes.

Every sync uses a fresh mTLS connection built from the current SVID and bundle, so a renewed
SVID or a new CA root is used from the next sync on. :meth:`Manager.run` repeats syncs every
``sync_interval`` seconds and backs off (jittered, exponential) after errors.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
from spiffed._proto.spire.api.types import entry_pb2 as types_entry
from spiffed.agent.attest import AttestationError, attest, fetch_bundle
from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.agent.client import (
    ServerChannel,
    ServerClientError,
    bundle_from_proto,
    make_csr,
    svid_from_proto,
)
from spiffed.agent.manager.storage import (
    AgentState,
    StateError,
    load_state,
    save_bundle,
    save_state,
)
from spiffed.agent.nodeattestor import AgentNodeAttestor
from spiffed.backoff import Backoff, renewal_time
from spiffed.bundle import SpiffeBundle
from spiffed.keys import KeyType
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, verify_chain

__all__ = ["Manager", "ManagerError", "SyncResult", "entry_from_proto"]

log = structlog.get_logger("spiffed.agent.manager")

BATCH_SIZE = 500
"""Most CSRs sent in one ``BatchNewX509SVID`` call."""


_RETRYABLE = (
    ServerClientError,
    ConnectionError,
    OSError,
    TimeoutError,
    StreamTerminatedError,
    GRPCError,
)
"""Errors after which the next attempt may succeed (server down, restarting, overloaded)."""


class ManagerError(Exception):
    """The manager cannot get or keep an identity (attestation or storage failed)."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did."""

    entries: int
    minted: int
    failed: int
    agent_renewed: bool


def entry_from_proto(msg: types_entry.Entry) -> WorkloadEntry:
    """A ``spire.api.types.Entry`` as the cache's :class:`WorkloadEntry`."""
    td = TrustDomain.parse(msg.spiffe_id.trust_domain)
    return WorkloadEntry(
        id=msg.id,
        spiffe_id=SpiffeId.parse(f"spiffe://{td}{msg.spiffe_id.path}"),
        selectors=frozenset(Selector(s.type, s.value) for s in msg.selectors),
        federates_with=frozenset(TrustDomain.parse(t) for t in msg.federates_with),
        hint=msg.hint,
        revision=msg.revision_number,
        created_at=msg.created_at,
        x509_svid_ttl=msg.x509_svid_ttl,
        jwt_svid_ttl=msg.jwt_svid_ttl,
        dns_names=tuple(msg.dns_names),
    )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Manager:
    """Owns the agent's identity and fills an :class:`IdentityCache` from the server."""

    trust_domain: TrustDomain
    server_address: str
    server_port: int
    data_dir: Path
    attestor: AgentNodeAttestor
    cache: IdentityCache
    bootstrap_roots: Sequence[x509.Certificate] | None = None
    """X.509 roots trusted for attestation (``trust_bundle_path``); None: insecure bootstrap."""
    workload_key_type: KeyType = KeyType.EC_P256
    sync_interval: float = 5.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=30.0))
    rng: random.Random = field(default_factory=random.Random)
    attestations: int = 0
    """How many times this manager attested (0 when it reused the stored SVID)."""
    failures: int = 0
    """Syncs that failed in a row (0 after a success)."""
    last_sync: SyncResult | None = None
    """The result of the last successful sync."""
    _state: AgentState | None = None
    _agent_renew_at: datetime | None = None
    _renew_at: dict[str, datetime] = field(default_factory=dict)

    # --- identity ---------------------------------------------------------------------

    @property
    def svid(self) -> X509Svid:
        """The agent's current X509-SVID."""
        if self._state is None:
            raise ManagerError("the agent has no SVID yet; call initialize() first")
        return self._state.svid

    @property
    def bundle(self) -> SpiffeBundle:
        """The trust domain's bundle as last fetched."""
        if self._state is None:
            raise ManagerError("the agent has no bundle yet; call initialize() first")
        return self._state.bundle

    async def initialize(self) -> None:
        """Load the stored SVID when still usable, else attest; put the bundle in the cache."""
        state = self._load_usable_state()
        if state is None:
            state = await self._attest()
        self._set_state(state)
        self.cache.set_bundles(state.bundle, self.cache.federated_bundles)

    def _load_usable_state(self) -> AgentState | None:
        try:
            state = load_state(self.data_dir, self.trust_domain)
        except StateError as exc:
            log.warning("ignoring stored agent state, attesting again", error=str(exc))
            return None
        if state is None:
            return None
        try:
            verify_chain(state.svid.cert_chain, state.bundle)
        except X509SvidError as exc:
            log.warning("stored agent SVID is no longer valid, attesting again", error=str(exc))
            return None
        log.info("reusing stored agent SVID", spiffe_id=str(state.svid.spiffe_id))
        return state

    async def _attest(self) -> AgentState:
        roots = None if self.bootstrap_roots is None else list(self.bootstrap_roots)
        channel = ServerChannel(
            self.server_address,
            self.server_port,
            trust_domain=self.trust_domain,
            roots=roots,
        )
        try:
            result = await attest(channel, self.attestor, self.trust_domain)
        finally:
            channel.close()
        self.attestations += 1
        state = AgentState(result.svid, result.bundle)
        self._persist(state)
        log.info("node attested", spiffe_id=str(result.svid.spiffe_id))
        return state

    def _persist(self, state: AgentState) -> None:
        try:
            save_state(self.data_dir, state)
        except OSError as exc:
            raise ManagerError(
                f"cannot store the agent SVID in {str(self.data_dir)!r}: {exc}"
            ) from None

    def _set_state(self, state: AgentState) -> None:
        self._state = state
        leaf = state.svid.leaf
        self._agent_renew_at = renewal_time(
            leaf.not_valid_before_utc, leaf.not_valid_after_utc, rng=self.rng
        )

    def _channel(self) -> ServerChannel:
        state = self._state
        if state is None:
            raise ManagerError("the agent has no SVID yet; call initialize() first")
        return ServerChannel(
            self.server_address,
            self.server_port,
            trust_domain=self.trust_domain,
            roots=state.bundle.x509_authorities,
            chain=state.svid.cert_chain,
            key=state.svid.private_key,
        )

    # --- sync -------------------------------------------------------------------------

    async def sync_once(self) -> SyncResult:
        """Renew the agent SVID when due, then sync entries, SVIDs and bundles once."""
        if self._state is None:
            await self.initialize()
        renewed = False
        if self._agent_renew_at is not None and _now() >= self._agent_renew_at:
            await self.renew_agent()
            renewed = True
        channel = self._channel()
        try:
            entries = await self._fetch_entries(channel)
            self.cache.set_entries(entries)
            live = {e.id for e in entries}
            for gone in set(self._renew_at) - live:
                del self._renew_at[gone]
            now = _now()
            due = [
                e
                for e in entries
                if self.cache.svid(e.id) is None or now >= self._renew_at.get(e.id, now)
            ]
            minted, failed = 0, 0
            for start in range(0, len(due), BATCH_SIZE):
                ok, bad = await self._mint(channel, due[start : start + BATCH_SIZE])
                minted, failed = minted + ok, failed + bad
            await self._sync_bundles(channel, entries)
        except GRPCError as exc:
            raise ServerClientError(f"sync failed: {exc.status.name}: {exc.message}") from None
        finally:
            channel.close()
        return SyncResult(len(entries), minted, failed, renewed)

    async def _fetch_entries(self, channel: ServerChannel) -> list[WorkloadEntry]:
        resp = await entry_grpc.EntryStub(channel).GetAuthorizedEntries(
            entry_pb2.GetAuthorizedEntriesRequest()
        )
        entries = []
        for msg in resp.entries:
            try:
                entries.append(entry_from_proto(msg))
            except (SpiffeIdError, ValueError) as exc:
                log.warning("skipping malformed entry", entry_id=msg.id, error=str(exc))
        return entries

    async def _mint(self, channel: ServerChannel, entries: list[WorkloadEntry]) -> tuple[int, int]:
        keys = {e.id: self.workload_key_type.generate() for e in entries}
        params = [svid_pb2.NewX509SVIDParams(entry_id=i, csr=make_csr(k)) for i, k in keys.items()]
        resp = await svid_grpc.SVIDStub(channel).BatchNewX509SVID(
            svid_pb2.BatchNewX509SVIDRequest(params=params)
        )
        ok = bad = 0
        for entry, result in zip(entries, resp.results, strict=False):
            if result.status.code != Status.OK.value:
                bad += 1
                log.warning(
                    "server refused an SVID",
                    entry_id=entry.id,
                    code=result.status.code,
                    message=result.status.message,
                )
                continue
            try:
                svid = svid_from_proto(result.svid, keys[entry.id])
                self.cache.set_svid(entry.id, svid)
            except (ServerClientError, KeyError, ValueError) as exc:
                bad += 1
                log.warning("unusable SVID from the server", entry_id=entry.id, error=str(exc))
                continue
            leaf = svid.leaf
            self._renew_at[entry.id] = renewal_time(
                leaf.not_valid_before_utc, leaf.not_valid_after_utc, rng=self.rng
            )
            ok += 1
        return ok, bad

    async def _sync_bundles(self, channel: ServerChannel, entries: list[WorkloadEntry]) -> None:
        own = await fetch_bundle(channel, self.trust_domain)
        federated: dict[TrustDomain, SpiffeBundle] = {}
        wanted = sorted({td for e in entries for td in e.federates_with}, key=str)
        stub = bundle_grpc.BundleStub(channel)
        for td in wanted:
            try:
                msg = await stub.GetFederatedBundle(
                    bundle_pb2.GetFederatedBundleRequest(trust_domain=str(td))
                )
            except GRPCError as exc:
                if exc.status == Status.NOT_FOUND:
                    continue
                raise
            federated[td] = bundle_from_proto(msg)
        state = self._state
        if state is not None and own != state.bundle:
            self._state = AgentState(state.svid, own)
            save_bundle(self.data_dir, own)
        self.cache.set_bundles(own, federated)

    # --- agent SVID renewal -----------------------------------------------------------

    async def renew_agent(self) -> X509Svid:
        """``RenewAgent`` with a new key; persist and use the new SVID from now on."""
        state = self._state
        if state is None:
            raise ManagerError("the agent has no SVID yet; call initialize() first")
        key = KeyType.of(state.svid.private_key).generate()
        channel = self._channel()
        try:
            resp = await agent_grpc.AgentStub(channel).RenewAgent(
                agent_pb2.RenewAgentRequest(params=agent_pb2.AgentX509SVIDParams(csr=make_csr(key)))
            )
        except GRPCError as exc:
            raise ServerClientError(
                f"RenewAgent failed: {exc.status.name}: {exc.message}"
            ) from None
        finally:
            channel.close()
        svid = svid_from_proto(resp.svid, key)
        if svid.spiffe_id != state.svid.spiffe_id:
            raise ServerClientError(
                f"RenewAgent returned {svid.spiffe_id}, expected {state.svid.spiffe_id}"
            )
        new_state = AgentState(svid, state.bundle)
        self._persist(new_state)
        self._set_state(new_state)
        log.info("agent SVID renewed", expires_at=svid.expires_at.isoformat())
        return svid

    # --- loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Initialize, then sync forever: every ``sync_interval`` s, backing off on errors."""
        while self._state is None:
            try:
                await self.initialize()
            except (AttestationError, *_RETRYABLE) as exc:
                if isinstance(exc, AttestationError) and exc.status is not None:
                    raise ManagerError(str(exc)) from None  # refused: retrying cannot help
                delay = self.backoff.next_delay()
                log.warning("cannot attest yet", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self.backoff.reset()
        while True:
            try:
                self.last_sync = await self.sync_once()
            except _RETRYABLE as exc:
                self.failures += 1
                delay = self.backoff.next_delay()
                log.warning("sync failed", error=str(exc), retry_in=round(delay, 2))
            else:
                self.failures = 0
                self.backoff.reset()
                delay = self.sync_interval
            await asyncio.sleep(delay)
