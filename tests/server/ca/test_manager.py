"""The CA across rotations, restarts and forced rotation, on a clock the test moves."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from grpclib.const import Status

from spiffed.server.ca.journal import SlotStatus
from spiffed.server.ca.manager import CaManager, CaSettings, MemoryCaStore
from spiffed.server.errors import ServerError
from spiffed.server.keymanager.disk import DiskKeyManager
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def roots_of(store: MemoryCaStore) -> list[x509.Certificate]:
    assert store.bundle is not None
    return [x509.load_der_x509_certificate(a.asn1) for a in store.bundle.x509_authorities]


def verifies(chain: list[x509.Certificate], roots: list[x509.Certificate], at: dt.datetime) -> bool:
    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca()
    ee_policy = verification.ExtensionPolicy.permit_all()
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(at)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except verification.VerificationError:
        return False
    return True


def settings(**kw) -> CaSettings:
    base = {
        "trust_domain": TD,
        "ca_ttl": dt.timedelta(hours=1),
        "x509_svid_ttl": dt.timedelta(minutes=5),
        "prune_after": dt.timedelta(0),
    }
    base.update(kw)
    return CaSettings(**base)


async def test_rotation_publishes_before_signing_and_prunes_after_last_svid() -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    ca = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await ca.start()
    first_published: dict[bytes, dt.datetime] = {}
    first_signed: dict[bytes, dt.datetime] = {}
    issued: list[tuple[x509.Certificate, bytes]] = []
    activations = 0
    active = ca.current_x509.authority_id
    for _ in range(4 * 60):  # four CA lifetimes, one step a minute
        clock.now += dt.timedelta(minutes=1)
        await ca.rotate()
        if ca.current_x509.authority_id != active:
            activations += 1
            active = ca.current_x509.authority_id
        roots = roots_of(store)
        for r in roots:
            first_published.setdefault(r.fingerprint(r.signature_hash_algorithm), clock.now)
        signer = ca.current_x509.certificate
        fp = signer.fingerprint(signer.signature_hash_algorithm)
        first_signed.setdefault(fp, clock.now)
        key = ec.generate_private_key(ec.SECP256R1())
        chain = ca.sign_x509_svid(WORKLOAD, key.public_key())
        assert verifies(chain, roots, clock.now), "an SVID verifies against the bundle of its time"
        issued.append((chain[0], fp))
        # Every root that left the bundle has no unexpired SVID left.
        present = {r.fingerprint(r.signature_hash_algorithm) for r in roots}
        for leaf, signer_fp in issued:
            if signer_fp not in present:
                assert leaf.not_valid_after_utc <= clock.now
    assert activations >= 2
    for fp, signed_at in first_signed.items():
        if fp in first_published and signed_at != T0 + dt.timedelta(minutes=1):
            assert first_published[fp] < signed_at, "a new root is published before it signs"
    assert len(roots_of(store)) <= 3, "expired roots are pruned"


async def test_jwt_keys_rotate_on_the_same_schedule() -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    ca = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await ca.start()
    kids = [ca.jwt_signing_key()[0]]
    for _ in range(3 * 60):
        clock.now += dt.timedelta(minutes=1)
        await ca.rotate()
        kid = ca.jwt_signing_key()[0]
        assert store.bundle is not None
        assert kid in {k.key_id for k in store.bundle.jwt_authorities}
        if kid != kids[-1]:
            kids.append(kid)
    assert len(kids) >= 3


async def test_disk_key_manager_restart_keeps_the_same_authorities(tmp_path) -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    first = CaManager(settings(), DiskKeyManager(tmp_path / "keys.json"), store, clock=clock)
    await first.start()
    x509_id, jwt_id = first.current_x509.authority_id, first.jwt_signing_key()[0]
    again = CaManager(settings(), DiskKeyManager(tmp_path / "keys.json"), store, clock=clock)
    await again.start()
    assert again.current_x509.authority_id == x509_id
    assert again.jwt_signing_key()[0] == jwt_id
    assert len(roots_of(store)) == 1


async def test_memory_key_manager_restart_keeps_still_valid_roots() -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    first = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await first.start()
    before = first.sign_x509_svid(WORKLOAD, ec.generate_private_key(ec.SECP256R1()).public_key())
    again = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await again.start()
    assert again.current_x509.authority_id != first.current_x509.authority_id
    roots = roots_of(store)
    assert len(roots) == 2
    assert verifies(before, roots, clock.now), "SVIDs from before the restart still verify"
    old = again.x509_states()["old"]
    assert old is not None and old.authority_id == first.current_x509.authority_id


async def test_forced_rotation_taint_and_revoke() -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    ca = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await ca.start()
    compromised = ca.current_x509.authority_id
    with pytest.raises(ServerError, match="unable to taint current local authority"):
        await ca.taint_x509_authority(compromised)
    prepared = await ca.prepare_x509_authority()
    with pytest.raises(ServerError, match="unexpected authority ID"):
        await ca.activate_x509_authority("nope")
    await ca.activate_x509_authority(prepared.authority_id)
    assert ca.current_x509.authority_id == prepared.authority_id
    with pytest.raises(ServerError, match="not possible to revoke an untainted root CA"):
        await ca.revoke_x509_authority(compromised)
    await ca.taint_x509_authority(compromised)
    assert store.bundle is not None
    assert sum(a.tainted for a in store.bundle.x509_authorities) == 1
    await ca.revoke_x509_authority(compromised)
    assert len(store.bundle.x509_authorities) == 1
    assert not store.bundle.x509_authorities[0].tainted

    old_kid = ca.jwt_signing_key()[0]
    new = await ca.prepare_jwt_authority()
    with pytest.raises(ServerError, match="unable to use a prepared key"):
        await ca.revoke_jwt_authority(new.authority_id)
    await ca.activate_jwt_authority(new.authority_id)
    await ca.taint_jwt_authority(old_kid)
    await ca.revoke_jwt_authority(old_kid)
    assert [k.key_id for k in store.bundle.jwt_authorities] == [new.authority_id]


async def test_svids_are_capped_at_the_ca_expiry_and_foreign_ids_refused() -> None:
    clock = Clock()
    ca = CaManager(
        settings(x509_svid_ttl=dt.timedelta(hours=5)),
        MemoryKeyManager(),
        MemoryCaStore("example.org"),
        clock=clock,
    )
    await ca.start()
    leaf = ca.sign_x509_svid(WORKLOAD, ec.generate_private_key(ec.SECP256R1()).public_key())[0]
    assert leaf.not_valid_after_utc == ca.current_x509.not_after
    with pytest.raises(ServerError) as err:
        ca.sign_x509_svid(
            SpiffeId.parse("spiffe://other.org/w"),
            ec.generate_private_key(ec.SECP256R1()).public_key(),
        )
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_journal_records_slot_states() -> None:
    clock = Clock()
    store = MemoryCaStore("example.org")
    ca = CaManager(settings(), MemoryKeyManager(), store, clock=clock)
    await ca.start()
    clock.now += dt.timedelta(minutes=31)
    await ca.rotate()
    statuses = {s.slot: s.status for s in ca.journal.x509}
    assert statuses == {"A": SlotStatus.ACTIVE, "B": SlotStatus.PREPARED}
    assert store.journal == ca.journal.to_bytes()
