"""The server's CA: two slots each for the X.509 CA and the JWT signing key, rotated on
SPIRE's schedule, recorded in the journal, published in the bundle before they sign.

Rotation (see :mod:`spiffed.server.ca.schedule`): once the active authority is half way
through its life, the next one is *prepared* (key generated, CA certificate made, root or
JWT key added to the bundle); at five sixths it is *activated* and the previous one becomes
OLD. OLD authorities stay in the bundle until they have been expired for ``prune_after``.
Operators can force each step (``localauthority``), and taint and revoke an OLD authority
after a key compromise.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status

from spiffed._proto.spire.api.types import bundle_pb2
from spiffed.keys import KeyType, PrivateKey, PublicKey
from spiffed.server.ca import bundleops
from spiffed.server.ca.journal import Journal, JournalError, JwtSlot, SlotStatus, X509Slot
from spiffed.server.ca.leafsigner import LeafSigner
from spiffed.server.ca.schedule import activation_threshold, preparation_threshold
from spiffed.server.errors import ServerError
from spiffed.server.keymanager import KeyManager
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509_issue import X509IssueError, create_root_ca

__all__ = [
    "AuthorityState",
    "CaManager",
    "CaSettings",
    "CaStore",
    "MemoryCaStore",
    "UpstreamAuthority",
]

Bundle = bundle_pb2.Bundle
Clock = Callable[[], datetime]
_T = TypeVar("_T")


class CaStore(Protocol):
    """Where the CA keeps its journal and the trust domain's bundle (the datastore)."""

    async def load_journal(self) -> bytes | None:
        """The journal last saved by this server, or None."""
        ...

    async def save_journal(self, data: bytes) -> None:
        """Replace the journal."""
        ...

    async def update_bundle(self, change: Callable[[Bundle], bool]) -> Bundle:
        """Apply ``change`` to the stored bundle atomically; return the bundle after it."""
        ...


@dataclass
class MemoryCaStore:
    """A CaStore in memory, for ephemeral servers and tests."""

    trust_domain: str
    journal: bytes | None = None
    bundle: Bundle | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def load_journal(self) -> bytes | None:
        """The journal last saved, or None."""
        return self.journal

    async def save_journal(self, data: bytes) -> None:
        """Replace the journal."""
        self.journal = data

    async def update_bundle(self, change: Callable[[Bundle], bool]) -> Bundle:
        """Apply ``change`` to a copy; keep the copy only if the change succeeded."""
        async with self._lock:
            draft = Bundle()
            draft.CopyFrom(self.bundle or bundleops.new_bundle(self.trust_domain))
            if change(draft):
                self.bundle = draft
            return self.bundle or draft


class UpstreamAuthority(Protocol):
    """An authority above this server's CA (SPIRE's ``UpstreamAuthority`` plugins)."""

    def mint_x509_ca(
        self, trust_domain: TrustDomain, public_key: PublicKey, ttl: timedelta, now: datetime
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """An intermediate CA certificate for ``public_key`` and the chain above it."""
        ...

    def roots(self) -> Sequence[x509.Certificate]:
        """The upstream roots, which go into the trust domain's bundle."""
        ...


@dataclass(frozen=True, slots=True)
class CaSettings:
    """The CA's configuration (server config keys in comments)."""

    trust_domain: TrustDomain
    ca_key_type: KeyType = KeyType.EC_P256  # ca_key_type
    jwt_key_type: KeyType | None = None  # jwt_key_type; defaults to ca_key_type
    ca_ttl: timedelta = timedelta(hours=24)  # ca_ttl
    ca_subject: x509.Name | None = None  # ca_subject
    x509_svid_ttl: timedelta = timedelta(hours=1)  # default_x509_svid_ttl
    jwt_svid_ttl: timedelta = timedelta(minutes=5)  # default_jwt_svid_ttl
    jwt_issuer: str | None = None  # jwt_issuer
    prune_after: timedelta = timedelta(hours=24)  # expired authorities leave after this


@dataclass(frozen=True, slots=True)
class AuthorityState:
    """One authority as the localauthority API reports it."""

    authority_id: str
    expires_at: datetime
    upstream_authority_subject_key_id: str = ""


def _new_kid() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _free_slot(current: str | None, taken: Sequence[tuple[str, datetime]]) -> str:
    """The slot to prepare into: the one the active authority is not in; with no active
    one, a slot nobody uses, else the one whose authority expires first."""
    if current is not None:
        return "B" if current == "A" else "A"
    used = dict(taken)
    for slot in ("A", "B"):
        if slot not in used:
            return slot
    return min(used, key=lambda s: used[s])


def _public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CaManager:
    """Holds the active and next authorities and signs with the active ones."""

    def __init__(
        self,
        settings: CaSettings,
        key_manager: KeyManager,
        store: CaStore,
        *,
        upstream: UpstreamAuthority | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._km = key_manager
        self._store = store
        self._upstream = upstream
        self._clock = clock or (lambda: datetime.now(UTC))
        self._journal = Journal()
        self._keys: dict[str, PrivateKey] = {}
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._signer: tuple[X509Slot, LeafSigner] | None = None

    # --- state -------------------------------------------------------------------------

    def _slot_x509(self, status: SlotStatus) -> X509Slot | None:
        return next((s for s in self._journal.x509 if s.status is status), None)

    def _slot_jwt(self, status: SlotStatus) -> JwtSlot | None:
        return next((s for s in self._journal.jwt if s.status is status), None)

    @property
    def has_upstream(self) -> bool:
        """True when the X.509 CA is an intermediate under an upstream authority."""
        return self._upstream is not None

    @property
    def journal(self) -> Journal:
        """The journal as it stands."""
        return self._journal

    @property
    def current_x509(self) -> X509Slot:
        """The X.509 CA that signs now."""
        slot = self._slot_x509(SlotStatus.ACTIVE)
        if slot is None:
            raise ServerError(Status.UNAVAILABLE, "the X.509 CA is not ready")
        return slot

    @property
    def next_x509(self) -> X509Slot | None:
        """The other X.509 slot (PREPARED or OLD), if any."""
        current = self._slot_x509(SlotStatus.ACTIVE)
        return next((s for s in self._journal.x509 if s is not current), None)

    @property
    def current_jwt(self) -> JwtSlot:
        """The JWT key that signs now."""
        slot = self._slot_jwt(SlotStatus.ACTIVE)
        if slot is None:
            raise ServerError(Status.UNAVAILABLE, "the JWT signer is not ready")
        return slot

    @property
    def next_jwt(self) -> JwtSlot | None:
        """The other JWT slot (PREPARED or OLD), if any."""
        current = self._slot_jwt(SlotStatus.ACTIVE)
        return next((s for s in self._journal.jwt if s is not current), None)

    def on_bundle_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener`` after every change the CA makes to the bundle."""
        self._listeners.append(listener)

    # --- start-up and rotation -------------------------------------------------------

    async def start(self) -> None:
        """Load the journal, keep the slots whose keys are still held, fill the gaps."""
        async with self._lock:
            raw = await self._store.load_journal()
            journal = Journal()
            if raw is not None:
                try:
                    journal = Journal.from_bytes(raw)
                except JournalError as exc:
                    raise ServerError(
                        Status.INTERNAL, f"the stored CA journal is unreadable: {exc}"
                    ) from None
            now = self._clock()
            # A slot whose key is gone (memory key manager after a restart) cannot sign
            # any more, but its root stays trusted until it expires: it is kept as OLD, so
            # it can still be tainted and revoked.
            x509_slots: list[X509Slot] = []
            jwt_slots: list[JwtSlot] = []
            for s in journal.x509:
                if s.not_after <= now:
                    continue
                key = await self._km.get_key(s.key_id)
                if key is not None and key.public_key() == s.certificate.public_key():
                    self._keys[s.key_id] = key
                    x509_slots.append(s)
                else:
                    x509_slots.append(replace(s, status=SlotStatus.OLD))
            for j in journal.jwt:
                if j.not_after <= now:
                    continue
                key = await self._km.get_key(j.key_id)
                if key is not None and _public_der(key) == j.public_key_der:
                    self._keys[j.key_id] = key
                    jwt_slots.append(j)
                else:
                    jwt_slots.append(replace(j, status=SlotStatus.OLD))
            self._journal = Journal(x509=tuple(x509_slots), jwt=tuple(jwt_slots))
            if self._slot_x509(SlotStatus.ACTIVE) is None:
                await self._prepare_x509(now)
                await self._activate_x509()
            if self._slot_jwt(SlotStatus.ACTIVE) is None:
                await self._prepare_jwt(now)
                await self._activate_jwt()
            await self._save()
        await self._rotate_now()

    async def rotate(self) -> None:
        """Prepare, activate and prune as the schedule says (SPIRE runs this every 10 s)."""
        await self._rotate_now()

    async def _rotate_now(self) -> None:
        async with self._lock:
            now = self._clock()
            x = self.current_x509
            nx = self.next_x509
            if (nx is None or nx.status is SlotStatus.OLD) and now >= preparation_threshold(
                x.issued_at, x.not_after
            ):
                await self._prepare_x509(now)
                nx = self.next_x509
            if (
                nx is not None
                and nx.status is SlotStatus.PREPARED
                and now >= activation_threshold(x.issued_at, x.not_after)
            ):
                await self._activate_x509()
            j = self.current_jwt
            nj = self.next_jwt
            if (nj is None or nj.status is SlotStatus.OLD) and now >= preparation_threshold(
                j.issued_at, j.not_after
            ):
                await self._prepare_jwt(now)
                nj = self.next_jwt
            if (
                nj is not None
                and nj.status is SlotStatus.PREPARED
                and now >= activation_threshold(j.issued_at, j.not_after)
            ):
                await self._activate_jwt()
            await self._update_bundle(lambda b: bundleops.prune(b, now - self.settings.prune_after))

    async def _save(self) -> None:
        await self._store.save_journal(self._journal.to_bytes())

    async def _update_bundle(self, change: Callable[[Bundle], bool]) -> Bundle:
        changed: list[bool] = []

        def tracked(bundle: Bundle) -> bool:
            result = change(bundle)
            changed.append(result)
            return result

        bundle = await self._store.update_bundle(tracked)
        if any(changed):
            for listener in self._listeners:
                await listener()
        return bundle

    async def _prepare_x509(self, now: datetime) -> X509Slot:
        current = self._slot_x509(SlotStatus.ACTIVE)
        slot_id = _free_slot(
            current.slot if current else None,
            [(s.slot, s.not_after) for s in self._journal.x509],
        )
        key_id = f"x509-CA-{slot_id}"
        key = await self._km.generate_key(key_id, self.settings.ca_key_type)
        td = self.settings.trust_domain
        if self._upstream is None:
            cert = create_root_ca(
                td, key, ttl=self.settings.ca_ttl, now=now, subject=self.settings.ca_subject
            )
            chain: tuple[x509.Certificate, ...] = ()
            roots: Sequence[x509.Certificate] = [cert]
        else:
            cert, chain = self._upstream.mint_x509_ca(
                td, key.public_key(), self.settings.ca_ttl, now
            )
            roots = self._upstream.roots()
        # Publish before use (FED-02): the root is in the bundle before the CA signs.
        await self._update_bundle(lambda b: bundleops.append_x509_authorities(b, roots))
        slot = X509Slot(slot_id, SlotStatus.PREPARED, cert, chain)
        self._keys[key_id] = key
        self._journal = self._journal.with_x509(slot)
        await self._save()
        return slot

    async def _activate_x509(self) -> None:
        current = self._slot_x509(SlotStatus.ACTIVE)
        nxt = self._slot_x509(SlotStatus.PREPARED)
        if nxt is None:
            raise ServerError(Status.INTERNAL, "no prepared X.509 authority to activate")
        journal = self._journal
        if current is not None:
            journal = journal.with_x509(replace(current, status=SlotStatus.OLD))
        self._journal = journal.with_x509(replace(nxt, status=SlotStatus.ACTIVE))
        await self._save()

    async def _prepare_jwt(self, now: datetime) -> JwtSlot:
        current = self._slot_jwt(SlotStatus.ACTIVE)
        slot_id = _free_slot(
            current.slot if current else None,
            [(s.slot, s.not_after) for s in self._journal.jwt],
        )
        key_id = f"JWT-Signer-{slot_id}"
        key = await self._km.generate_key(
            key_id, self.settings.jwt_key_type or self.settings.ca_key_type
        )
        not_after = now + self.settings.ca_ttl
        slot = JwtSlot(slot_id, SlotStatus.PREPARED, _new_kid(), _public_der(key), now, not_after)
        await self._update_bundle(
            lambda b: bundleops.append_jwt_authority(b, slot.kid, slot.public_key_der, not_after)
        )
        self._keys[key_id] = key
        self._journal = self._journal.with_jwt(slot)
        await self._save()
        return slot

    async def _activate_jwt(self) -> None:
        current = self._slot_jwt(SlotStatus.ACTIVE)
        nxt = self._slot_jwt(SlotStatus.PREPARED)
        if nxt is None:
            raise ServerError(Status.INTERNAL, "no prepared JWT authority to activate")
        journal = self._journal
        if current is not None:
            journal = journal.with_jwt(replace(current, status=SlotStatus.OLD))
        self._journal = journal.with_jwt(replace(nxt, status=SlotStatus.ACTIVE))
        await self._save()

    # --- signing -----------------------------------------------------------------------

    def x509_ca_chain(self) -> list[x509.Certificate]:
        """What goes after a leaf: the active CA and upstream intermediates, not the roots."""
        slot = self.current_x509
        if self._upstream is None:
            return []
        return [slot.certificate, *(c for c in slot.upstream_chain if c.issuer != c.subject)]

    def sign_x509_svid(
        self,
        spiffe_id: SpiffeId,
        public_key: PublicKey | x509.CertificateSigningRequest,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> list[x509.Certificate]:
        """A leaf for ``spiffe_id``, followed by :meth:`x509_ca_chain`.

        The lifetime is ``ttl`` (default ``default_x509_svid_ttl``), capped at the CA's expiry.
        """
        leaf = self.sign_x509_svid_der(spiffe_id, public_key, ttl=ttl, dns_names=dns_names)
        return [x509.load_der_x509_certificate(leaf), *self.x509_ca_chain()]

    def sign_x509_svid_der(
        self,
        spiffe_id: SpiffeId,
        public_key: PublicKey | x509.CertificateSigningRequest,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> bytes:
        """The leaf alone, as DER: the hot path of the signing RPCs."""
        if not spiffe_id.member_of(self.settings.trust_domain):
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f"{spiffe_id} is not in trust domain {self.settings.trust_domain}",
            )
        slot = self.current_x509
        if self._signer is None or self._signer[0] is not slot:
            signer = LeafSigner(
                self.settings.trust_domain, slot.certificate, self._keys[slot.key_id]
            )
            self._signer = (slot, signer)
        try:
            return self._signer[1].sign_der(
                spiffe_id,
                public_key,
                ttl=ttl or self.settings.x509_svid_ttl,
                now=self._clock(),
                dns_names=tuple(dns_names),
            )
        except X509IssueError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, str(exc)) from None

    def jwt_signing_key(self) -> tuple[str, PrivateKey, datetime]:
        """The active JWT key: its key ID, private key and expiry."""
        slot = self.current_jwt
        return slot.kid, self._keys[slot.key_id], slot.not_after

    # --- forced rotation and revocation (localauthority) -------------------------------

    def x509_states(self) -> dict[str, AuthorityState | None]:
        """The active, prepared and old X.509 authorities."""
        out: dict[str, AuthorityState | None] = {}
        for status in SlotStatus:
            s = self._slot_x509(status)
            out[status.value] = (
                None
                if s is None
                else AuthorityState(s.authority_id, s.not_after, s.upstream_authority_id)
            )
        return out

    def jwt_states(self) -> dict[str, AuthorityState | None]:
        """The active, prepared and old JWT authorities."""
        out: dict[str, AuthorityState | None] = {}
        for status in SlotStatus:
            s = self._slot_jwt(status)
            out[status.value] = None if s is None else AuthorityState(s.kid, s.not_after)
        return out

    async def prepare_x509_authority(self) -> AuthorityState:
        """Prepare a new X.509 authority now, replacing the other slot."""
        async with self._lock:
            s = await self._prepare_x509(self._clock())
        return AuthorityState(s.authority_id, s.not_after, s.upstream_authority_id)

    async def activate_x509_authority(self, authority_id: str) -> AuthorityState:
        """Activate the prepared X.509 authority ``authority_id``."""
        async with self._lock:
            nxt = self.next_x509
            if not authority_id:
                raise ServerError(Status.INVALID_ARGUMENT, "no authority ID provided")
            if nxt is None or authority_id != nxt.authority_id:
                raise ServerError(Status.INVALID_ARGUMENT, "unexpected authority ID")
            if nxt.status is not SlotStatus.PREPARED:
                raise ServerError(Status.INTERNAL, "only Prepared authorities can be activated")
            await self._activate_x509()
            cur = self.current_x509
        return AuthorityState(cur.authority_id, cur.not_after, cur.upstream_authority_id)

    def _old_x509(self, authority_id: str, verb: str) -> X509Slot:
        if not authority_id:
            raise ServerError(Status.INVALID_ARGUMENT, "no authority ID provided")
        if authority_id == self.current_x509.authority_id:
            raise ServerError(Status.INVALID_ARGUMENT, f"unable to {verb} current local authority")
        nxt = self.next_x509
        if nxt is None or authority_id != nxt.authority_id:
            raise ServerError(Status.INVALID_ARGUMENT, "unexpected authority ID")
        if nxt.status is not SlotStatus.OLD:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"only Old local authorities can be {verb}ed"
            )
        return nxt

    async def taint_x509_authority(self, authority_id: str) -> AuthorityState:
        """Mark the OLD X.509 authority as tainted in the bundle (agents re-issue its SVIDs)."""
        async with self._lock:
            if self._upstream is not None:
                raise ServerError(
                    Status.FAILED_PRECONDITION,
                    "local authority can't be tainted if there is an upstream authority",
                )
            old = self._old_x509(authority_id, "taint")
            await self._update_bundle(
                lambda b: _raising(bundleops.taint_x509_authority, b, old.certificate)
            )
        return AuthorityState(old.authority_id, old.not_after)

    async def revoke_x509_authority(self, authority_id: str) -> AuthorityState:
        """Remove the tainted OLD X.509 authority from the bundle."""
        async with self._lock:
            if self._upstream is not None:
                raise ServerError(
                    Status.FAILED_PRECONDITION,
                    "local authority can't be revoked if there is an upstream authority",
                )
            old = self._old_x509(authority_id, "revoke")
            await self._update_bundle(
                lambda b: _raising(bundleops.revoke_x509_authority, b, old.certificate)
            )
        return AuthorityState(old.authority_id, old.not_after)

    async def prepare_jwt_authority(self) -> AuthorityState:
        """Prepare a new JWT key now, replacing the other slot."""
        async with self._lock:
            s = await self._prepare_jwt(self._clock())
        return AuthorityState(s.kid, s.not_after)

    async def activate_jwt_authority(self, authority_id: str) -> AuthorityState:
        """Activate the prepared JWT key ``authority_id``."""
        async with self._lock:
            nxt = self.next_jwt
            if not authority_id:
                raise ServerError(Status.INVALID_ARGUMENT, "no authority ID provided")
            if nxt is None or authority_id != nxt.kid:
                raise ServerError(Status.INVALID_ARGUMENT, "unexpected authority ID")
            if nxt.status is not SlotStatus.PREPARED:
                raise ServerError(Status.INTERNAL, "only Prepared authorities can be activated")
            await self._activate_jwt()
            cur = self.current_jwt
        return AuthorityState(cur.kid, cur.not_after)

    async def taint_jwt_authority(self, authority_id: str) -> AuthorityState:
        """Mark the OLD JWT key as tainted in the bundle."""
        async with self._lock:
            if not authority_id:
                raise ServerError(Status.INVALID_ARGUMENT, "no authority ID provided")
            if authority_id == self.current_jwt.kid:
                raise ServerError(
                    Status.INVALID_ARGUMENT, "unable to taint current local authority"
                )
            nxt = self.next_jwt
            if nxt is None or authority_id != nxt.kid:
                raise ServerError(Status.INVALID_ARGUMENT, "unexpected authority ID")
            if nxt.status is not SlotStatus.OLD:
                raise ServerError(
                    Status.INVALID_ARGUMENT, "only Old local authorities can be tainted"
                )
            await self._update_bundle(
                lambda b: _raising(bundleops.taint_jwt_authority, b, authority_id)
            )
        return AuthorityState(nxt.kid, nxt.not_after)

    async def revoke_jwt_authority(self, authority_id: str) -> AuthorityState:
        """Remove a tainted JWT key (not the active or prepared one) from the bundle."""
        async with self._lock:
            if not authority_id:
                raise ServerError(Status.INVALID_ARGUMENT, "no authority ID provided")
            if authority_id == self.current_jwt.kid:
                raise ServerError(Status.INVALID_ARGUMENT, "unable to use current authority")
            nxt = self.next_jwt
            if nxt is not None and nxt.kid == authority_id and nxt.status is SlotStatus.PREPARED:
                raise ServerError(Status.INVALID_ARGUMENT, "unable to use a prepared key")
            await self._update_bundle(
                lambda b: _raising(bundleops.revoke_jwt_authority, b, authority_id)
            )
        return AuthorityState(authority_id, nxt.not_after if nxt else self._clock())


def _raising(op: Callable[[Bundle, _T], None], bundle: Bundle, arg: _T) -> bool:
    op(bundle, arg)
    return True
