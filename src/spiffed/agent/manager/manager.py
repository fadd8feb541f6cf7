"""The agent's manager: keeps the agent's SVID, syncs entries, SVIDs and bundles into the cache.

On start it reuses the SVID stored in ``data_dir`` when it is still valid and verifies
against the stored bundle; otherwise it attests (``AttestAgent``). Then, every sync:

1. renew the agent SVID with ``agent.v1.Agent/RenewAgent`` once past its renewal time (half
   of its life, moved earlier by up to 10% jitter), persisting SVID, key and bundle;
2. ``entry.v1.Entry/SyncAuthorizedEntries`` (SPIRE's sparse protocol: with many entries the
   server sends only revisions and the agent asks back for the entries it lacks or that
   changed), or ``GetAuthorizedEntries`` when the server answers UNIMPLEMENTED; the cache's
   entries are replaced;
3. ``svid.v1.SVID/BatchNewX509SVID`` for entries without an SVID, or whose SVID is past its
   renewal time (half-life with jitter), in batches, each with a new key;
4. ``bundle.v1.Bundle/GetBundle`` and ``GetFederatedBundle`` for the trust domains entries
   federate with; the bundle is persisted when it changes.

Every sync uses a fresh mTLS connection built from the current SVID and bundle, so a renewed
SVID or a new CA root is used from the next sync on. :meth:`Manager.run` repeats syncs every
``sync_interval`` seconds and backs off (jittered, exponential) after errors. Meanwhile it
keeps spiffed's ``spiffed.api.server.watch.v1.Watch/WatchAuthorizedEntries`` stream open:
each notification starts a sync at once. A SPIRE server answers UNIMPLEMENTED and the agent
just polls.

Re-attestable agents (``x509pop``...) attest again instead of ``RenewAgent``, as SPIRE's.
When the server refuses the agent itself (PERMISSION_DENIED on a sync: evicted, expired)
a re-attestable agent attests again in-process; a ``join_token`` agent cannot (its token was
used up), so its stored SVID is removed and :meth:`Manager.run` raises
:class:`ManagerError`; a banned agent stops too.

With the ``memory`` KeyManager (``persist=False``) nothing is written to ``data_dir`` and
every start attests; with ``disk`` the SVID, its key and the bundle survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from spiffed._proto.spiffed.api.server.watch.v1 import watch_grpc, watch_pb2
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
    denied_reason,
    fetch_bootstrap_bundle,
    make_csr,
    svid_from_proto,
)
from spiffed.agent.manager.storage import (
    AgentState,
    StateError,
    delete_state,
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

__all__ = ["AgentDeniedError", "Manager", "ManagerError", "SyncResult", "entry_from_proto"]

log = structlog.get_logger("spiffed.agent.manager")

BATCH_SIZE = 500

MIN_SYNC_DELAY = 0.05
"""Shortest pause between two syncs, even when a renewal is already due."""
"""Most CSRs sent in one ``BatchNewX509SVID`` call."""

RPC_TIMEOUT = 30.0
"""Deadline of each call to the server (SPIRE's)."""

REATTESTABLE = frozenset({"x509pop", "sshpop", "k8s_psat", "tpm_devid", "http_challenge"})
"""Node attestors whose agents attest again rather than calling ``RenewAgent``."""


_RETRYABLE = (
    ServerClientError,
    ConnectionError,
    OSError,
    TimeoutError,
    StreamTerminatedError,
    GRPCError,
)
"""Errors after which the next attempt may succeed (server down, restarting, overloaded)."""


_TRANSIENT = frozenset(
    {Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED, Status.DEADLINE_EXCEEDED, Status.ABORTED}
)
"""Statuses of a refused attestation that are worth retrying (rate limited, overloaded)."""


def _refused(exc: AttestationError) -> bool:
    """The server answered and said no (retrying the same attestation cannot help)."""
    if exc.local:
        return True
    return exc.status is not None and exc.status.status not in _TRANSIENT


class ManagerError(Exception):
    """The manager cannot get or keep an identity (attestation or storage failed)."""


class AgentDeniedError(ServerClientError):
    """The server refused the agent itself (PERMISSION_DENIED): evicted, expired, banned.

    ``reason`` is SPIRE's ``PermissionDeniedDetails`` reason (``AGENT_NOT_ATTESTED``...)
    when the server sent one."""

    def __init__(self, message: str, reason: str | None) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def banned(self) -> bool:
        """The agent is banned: it must stop, not attest again."""
        return self.reason == "AGENT_BANNED" or (
            self.reason is None and "banned" in str(self).lower()
        )


def _server_error(what: str, exc: GRPCError) -> ServerClientError:
    message = f"{what} failed: {exc.status.name}: {exc.message}"
    if exc.status == Status.PERMISSION_DENIED:
        return AgentDeniedError(message, denied_reason(exc.details))
    return ServerClientError(message)


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
    """X.509 roots trusted for attestation (``trust_bundle_path``); None: insecure bootstrap
    (or ``bootstrap_url``)."""
    bootstrap_url: str | None = None
    """``trust_bundle_url``: downloaded (HTTPS) before each attestation when set."""
    bootstrap_format: str = "pem"
    bootstrap_ssl: ssl.SSLContext | None = None
    """TLS settings for ``bootstrap_url`` (None: the system's roots)."""
    persist: bool = True
    """``disk`` KeyManager: keep SVID, key and bundle in ``data_dir``; ``memory``: keep nothing."""
    key_dir: Path | None = None
    """Where the key is kept (the ``disk`` KeyManager's ``directory``); None: ``data_dir``."""
    reattestable: bool | None = None
    """Attest again instead of ``RenewAgent``; None: from the attestor (x509pop...)."""
    use_watch: bool = True
    """Keep spiffed's WatchAuthorizedEntries stream open (sync on each notification)."""
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
    syncs: int = 0
    """Successful syncs so far."""
    sync_supported: bool | None = None
    """Whether the server has SyncAuthorizedEntries (None: not known yet)."""
    watch_supported: bool | None = None
    """Whether the server has spiffed's Watch extension (None: not known yet)."""
    notifications: int = 0
    """Watch notifications received."""
    last_fetched: int = 0
    """Full entries the last entry sync received (fewer than its entries when sparse)."""
    _state: AgentState | None = None
    _synced: dict[str, WorkloadEntry] = field(default_factory=dict)
    _stored_bundle: SpiffeBundle | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _jwt_channel: ServerChannel | None = None
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
        loaded = self._load_usable_state()
        state = loaded if loaded is not None else await self._attest()
        self._set_state(state, fresh=loaded is None)
        self.cache.set_bundles(state.bundle, self.cache.federated_bundles)

    @property
    def can_reattest(self) -> bool:
        """Whether this agent attests again rather than renewing (and after an eviction)."""
        if self.reattestable is not None:
            return self.reattestable
        return self.attestor.name in REATTESTABLE

    def _load_usable_state(self) -> AgentState | None:
        if not self.persist:
            return None
        try:
            state = load_state(self.data_dir, self.trust_domain, self.key_dir)
        except StateError as exc:
            log.warning("ignoring stored agent state, attesting again", error=str(exc))
            return None
        if state is None:
            return None
        try:
            verify_chain(state.svid.cert_chain, state.bundle)
        except X509SvidError as exc:
            log.warning("stored agent SVID is no longer valid, attesting again", error=str(exc))
            self._stored_bundle = state.bundle
            return None
        log.info("reusing stored agent SVID", spiffe_id=str(state.svid.spiffe_id))
        return state

    async def _bootstrap_roots(self) -> list[x509.Certificate] | None:
        if self.bootstrap_url is not None:
            bundle = await asyncio.to_thread(
                fetch_bootstrap_bundle,
                self.bootstrap_url,
                self.bootstrap_format,
                self.trust_domain,
                ssl_context=self.bootstrap_ssl,
            )
            return list(bundle.authorities)
        return None if self.bootstrap_roots is None else list(self.bootstrap_roots)

    async def _attest(self) -> AgentState:
        state = self._state
        # Once attested, the current bundle is the trust to re-attest with.
        if state is not None:
            roots: list[x509.Certificate] | None = list(state.bundle.x509_authorities)
        elif self._stored_bundle is not None and self._stored_bundle.x509_authorities:
            # as SPIRE: a bundle kept from an earlier run is trusted over the bootstrap one
            roots = list(self._stored_bundle.x509_authorities)
        else:
            roots = await self._bootstrap_roots()
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
        if self.reattestable is None:
            self.reattestable = result.reattestable
        state = AgentState(result.svid, result.bundle)
        self._persist(state)
        log.info("node attested", spiffe_id=str(result.svid.spiffe_id))
        return state

    def _persist(self, state: AgentState) -> None:
        if not self.persist:
            return
        try:
            save_state(self.data_dir, state, self.key_dir)
        except OSError as exc:
            raise ManagerError(
                f"cannot store the agent SVID in {str(self.data_dir)!r}: {exc}"
            ) from None

    def _set_state(self, state: AgentState, *, fresh: bool = True) -> None:
        """Use ``state``; ``fresh`` when its SVID was just issued (not loaded from disk)."""
        self._state = state
        if self._jwt_channel is not None:
            self._jwt_channel.close()
            self._jwt_channel = None
        leaf = state.svid.leaf
        self._agent_renew_at = renewal_time(
            leaf.not_valid_before_utc,
            leaf.not_valid_after_utc,
            rng=self.rng,
            received=_now() if fresh else None,
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
            if self.can_reattest:
                await self.reattest()
            else:
                await self.renew_agent()
            renewed = True
        self._wake.clear()  # a notification from now on asks for another sync
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
            raise _server_error("sync", exc) from None
        finally:
            channel.close()
        self.syncs += 1
        return SyncResult(len(entries), minted, failed, renewed)

    async def _fetch_entries(self, channel: ServerChannel) -> list[WorkloadEntry]:
        if self.sync_supported is not False:
            try:
                entries = await self._sync_entries(channel)
            except GRPCError as exc:
                if exc.status != Status.UNIMPLEMENTED:
                    raise
                self.sync_supported = False
                log.info("server has no SyncAuthorizedEntries; using GetAuthorizedEntries")
            else:
                self.sync_supported = True
                return entries
        resp = await entry_grpc.EntryStub(channel).GetAuthorizedEntries(
            entry_pb2.GetAuthorizedEntriesRequest(), timeout=RPC_TIMEOUT
        )
        entries = self._parse_entries(resp.entries)
        self._synced = {e.id: e for e in entries}
        self.last_fetched = len(resp.entries)
        return entries

    @staticmethod
    def _parse_entries(msgs: Sequence[types_entry.Entry]) -> list[WorkloadEntry]:
        entries = []
        for msg in msgs:
            try:
                entries.append(entry_from_proto(msg))
            except (SpiffeIdError, ValueError) as exc:
                log.warning("skipping malformed entry", entry_id=msg.id, error=str(exc))
        return entries

    async def _sync_entries(self, channel: ServerChannel) -> list[WorkloadEntry]:
        """``SyncAuthorizedEntries``: all entries at once, or revisions first (many entries)
        and then only the entries that are new or changed since the last sync."""
        full: list[types_entry.Entry] = []
        revisions: list[entry_pb2.EntryRevision] = []
        complete = False
        stream_cm = entry_grpc.EntryStub(channel).SyncAuthorizedEntries.open(timeout=RPC_TIMEOUT)
        try:
            async with stream_cm as stream:
                await stream.send_message(entry_pb2.SyncAuthorizedEntriesRequest())
                await self._recv_pages(stream, full, revisions)
                if revisions:
                    known = self._synced
                    wanted = [
                        r.id
                        for r in revisions
                        if r.id not in known
                        or known[r.id].revision != r.revision_number
                        or known[r.id].created_at != r.created_at
                    ]
                    if wanted:
                        await stream.send_message(
                            entry_pb2.SyncAuthorizedEntriesRequest(ids=wanted)
                        )
                        await self._recv_pages(stream, full, [])
                complete = True
                # A Go server may already have closed the stream after its last page.
                with contextlib.suppress(StreamClosedError):
                    await stream.end()
        except ProtocolError:
            if not complete:  # only closing a finished exchange may fail
                raise
        fetched = self._parse_entries(full)
        self.last_fetched = len(full)
        if revisions:
            merged = {e.id: e for e in fetched}
            entries = []
            for r in revisions:
                entry = merged.get(r.id) or self._synced.get(r.id)
                if entry is not None:
                    entries.append(entry)
        else:
            entries = fetched
        self._synced = {e.id: e for e in entries}
        return entries

    @staticmethod
    async def _recv_pages(
        stream: object,
        full: list[types_entry.Entry],
        revisions: list[entry_pb2.EntryRevision],
    ) -> None:
        while True:
            resp = await stream.recv_message()  # type: ignore[attr-defined]
            if resp is None:
                raise ServerClientError("the server ended SyncAuthorizedEntries too early")
            full.extend(resp.entries)
            revisions.extend(resp.entry_revisions)
            if not resp.more:
                return

    async def _mint(self, channel: ServerChannel, entries: list[WorkloadEntry]) -> tuple[int, int]:
        keys = {e.id: self.workload_key_type.generate() for e in entries}
        params = [svid_pb2.NewX509SVIDParams(entry_id=i, csr=make_csr(k)) for i, k in keys.items()]
        resp = await svid_grpc.SVIDStub(channel).BatchNewX509SVID(
            svid_pb2.BatchNewX509SVIDRequest(params=params), timeout=RPC_TIMEOUT
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
                leaf.not_valid_before_utc, leaf.not_valid_after_utc, rng=self.rng, received=_now()
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
                    bundle_pb2.GetFederatedBundleRequest(trust_domain=str(td)),
                    timeout=RPC_TIMEOUT,
                )
            except GRPCError as exc:
                if exc.status == Status.NOT_FOUND:
                    continue
                raise
            federated[td] = bundle_from_proto(msg)
        state = self._state
        if state is not None and own != state.bundle:
            self._state = AgentState(state.svid, own)
            if self.persist:
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
                agent_pb2.RenewAgentRequest(
                    params=agent_pb2.AgentX509SVIDParams(csr=make_csr(key))
                ),
                timeout=RPC_TIMEOUT,
            )
        except GRPCError as exc:
            raise _server_error("RenewAgent", exc) from None
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

    async def reattest(self) -> X509Svid:
        """Attest again (re-attestable agents, at renewal time or after an eviction)."""
        try:
            state = await self._attest()
        except AttestationError as exc:
            if _refused(exc):
                raise ManagerError(f"re-attestation refused: {exc}") from None
            raise ServerClientError(str(exc)) from None
        self._set_state(state)
        self.cache.set_bundles(state.bundle, self.cache.federated_bundles)
        return state.svid

    # --- JWT-SVIDs --------------------------------------------------------------------

    async def mint_jwt(self, entry: WorkloadEntry, audiences: tuple[str, ...]) -> str:
        """A JWT-SVID for ``entry`` from ``svid.v1.SVID/NewJWTSVID`` (the Workload API's
        :data:`~spiffed.agent.endpoints.workload.JwtMinter`)."""
        if self._jwt_channel is None:
            self._jwt_channel = self._channel()
        try:
            resp = await svid_grpc.SVIDStub(self._jwt_channel).NewJWTSVID(
                svid_pb2.NewJWTSVIDRequest(entry_id=entry.id, audience=list(audiences)),
                timeout=RPC_TIMEOUT,
            )
        except GRPCError as exc:
            raise _server_error("NewJWTSVID", exc) from None
        if not resp.svid.token:
            raise ServerClientError("NewJWTSVID returned no token")
        return str(resp.svid.token)

    # --- watch ------------------------------------------------------------------------

    def wake(self) -> None:
        """Sync now instead of at the next interval."""
        self._wake.set()

    async def _watch(self) -> None:
        """Keep WatchAuthorizedEntries open; every notification wakes the sync loop."""
        backoff = Backoff(initial=self.backoff.initial, maximum=self.backoff.maximum, rng=self.rng)
        while True:
            try:
                channel = self._channel()
            except ManagerError:  # re-attesting: no SVID to connect with right now
                await asyncio.sleep(backoff.next_delay())
                continue
            opened_with = self._state
            try:
                stub = watch_grpc.WatchStub(channel)
                async with stub.WatchAuthorizedEntries.open() as stream:
                    await stream.send_message(watch_pb2.WatchAuthorizedEntriesRequest(), end=True)
                    async for _note in stream:
                        if self.watch_supported is not True:
                            log.info("watching the server for entry changes")
                        self.watch_supported = True
                        self.notifications += 1
                        backoff.reset()
                        self._wake.set()
            except GRPCError as exc:
                if exc.status == Status.UNIMPLEMENTED:
                    self.watch_supported = False
                    log.info(
                        "server has no Watch extension; polling",
                        sync_interval=self.sync_interval,
                    )
                    return
                log.debug("watch stream failed", error=f"{exc.status.name}: {exc.message}")
            except (*_RETRYABLE, ProtocolError) as exc:
                log.debug("watch stream failed", error=str(exc))
            finally:
                channel.close()
            if self._state is not opened_with:
                # The server ends a watch once the SVID it was opened with is superseded:
                # reopen at once with the renewed one, so no change waits for a poll.
                continue
            await asyncio.sleep(backoff.next_delay())

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # --- loop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Initialize, retrying (with back-off) while the server cannot be reached.

        Raises :class:`ManagerError` when the server refuses the attestation."""
        while self._state is None:
            try:
                await self.initialize()
            except (AttestationError, *_RETRYABLE) as exc:
                if isinstance(exc, AttestationError) and _refused(exc):
                    raise ManagerError(str(exc)) from None  # refused: retrying cannot help
                delay = self.backoff.next_delay()
                log.warning("cannot attest yet", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self.backoff.reset()

    async def _denied(self, exc: AgentDeniedError) -> None:
        """The server refused the agent: attest again when possible, else stop."""
        if exc.banned:
            self._forget()
            raise ManagerError(f"agent is banned: removing SVID and shutting down ({exc})")
        if not self.can_reattest:
            self._forget()
            raise ManagerError(
                f"agent needs to re-attest: removing SVID and shutting down ({exc}); "
                f'NodeAttestor "{self.attestor.name}" cannot attest again, so give the agent '
                "a new join token and restart it"
            )
        log.warning("agent needs to re-attest; attesting again", error=str(exc))
        await self.reattest()

    def _forget(self) -> None:
        if self.persist:
            with contextlib.suppress(OSError):
                delete_state(self.data_dir, self.key_dir)

    def next_sync_delay(self) -> float:
        """Seconds until the next sync: the sync interval, or sooner when the agent SVID or a
        workload SVID reaches its renewal time first (so short TTLs rotate at half-life, not
        at the next poll)."""
        due = [*self._renew_at.values()]
        if self._agent_renew_at is not None:
            due.append(self._agent_renew_at)
        if not due:
            return self.sync_interval
        until = (min(due) - _now()).total_seconds()
        return max(MIN_SYNC_DELAY, min(self.sync_interval, until))

    async def run(self) -> None:
        """Initialize, then sync forever: every ``sync_interval`` s or when the Watch stream
        says something changed, backing off on errors. Raises :class:`ManagerError` when the
        agent must stop (attestation refused, evicted without a way to re-attest, banned)."""
        await self.start()
        watcher = asyncio.create_task(self._watch()) if self.use_watch else None

        async def restart_watch() -> None:
            # A failed sync means the watch stream's connection is likely dead too, and a
            # connection whose peer vanished without closing it would never report that.
            nonlocal watcher
            if watcher is None or (watcher.done() and self.watch_supported is False):
                return
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            watcher = asyncio.create_task(self._watch())

        try:
            while True:
                try:
                    self.last_sync = await self.sync_once()
                except AgentDeniedError as exc:
                    try:
                        await self._denied(exc)
                    except _RETRYABLE as again:
                        log.warning("re-attestation failed", error=str(again))
                        await asyncio.sleep(self.backoff.next_delay())
                    continue
                except _RETRYABLE as exc:
                    self.failures += 1
                    delay = self.backoff.next_delay()
                    log.warning("sync failed", error=str(exc), retry_in=round(delay, 2))
                    await restart_watch()
                else:
                    self.failures = 0
                    self.backoff.reset()
                    delay = self.next_sync_delay()
                await self._sleep(delay)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if self._jwt_channel is not None:
                self._jwt_channel.close()
                self._jwt_channel = None
