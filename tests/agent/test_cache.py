"""The agent's identity cache: matching, ordering, SVID lifecycle and change wake-ups."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.bundle import SpiffeBundle
from spiffed.keys import KeyType
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid

TD = TrustDomain("example.org")
UID = Selector("unix", "uid:1000")
GID = Selector("unix", "gid:1000")


def entry(entry_id: str, path: str, *selectors: Selector) -> WorkloadEntry:
    return WorkloadEntry(entry_id, SpiffeId.from_path(TD, path), frozenset(selectors))


@pytest.fixture(scope="module")
def ca():
    key = KeyType.EC_P256.generate()
    return create_root_ca(TD, key, ttl=dt.timedelta(hours=1)), key


def svid_for(ca, e: WorkloadEntry) -> X509Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = create_x509_svid(e.spiffe_id, key.public_key(), signer_cert=ca[0], signer_key=ca[1])
    return X509Svid.from_certificates([leaf], key)


def test_identities_match_by_subset_and_come_ordered_by_entry_id(ca) -> None:
    cache = IdentityCache(TD)
    b, a, c = entry("b", "/web", UID), entry("a", "/db", UID, GID), entry("c", "/other", GID)
    assert cache.set_entries([b, a, c]) == {"a", "b", "c"}
    for e in (a, b, c):
        cache.set_svid(e.id, svid_for(ca, e))
    assert [i.entry.id for i in cache.identities_for([UID, GID])] == ["a", "b", "c"]
    assert [i.entry.id for i in cache.identities_for([UID])] == ["b"]
    assert cache.identities_for([Selector("unix", "uid:0")]) == []


def test_changed_or_removed_entries_lose_their_svid(ca) -> None:
    cache = IdentityCache(TD)
    a = entry("a", "/web", UID)
    cache.set_entries([a])
    cache.set_svid("a", svid_for(ca, a))
    moved = entry("a", "/web2", UID)
    assert cache.set_entries([moved]) == {"a"}
    assert cache.svid("a") is None, "a changed entry needs a new SVID"
    with pytest.raises(ValueError, match="does not belong to entry a"):
        cache.set_svid("a", svid_for(ca, a))
    assert cache.set_entries([]) == set()
    assert cache.identities_for([UID]) == []
    with pytest.raises(KeyError):
        cache.set_svid("a", svid_for(ca, moved))


async def test_subscribers_wake_after_changes_and_coalesce(ca) -> None:
    cache = IdentityCache(TD)
    assert not cache.ready
    with cache.subscribe([UID]) as sub:
        woke = asyncio.ensure_future(sub.__anext__())
        a = entry("a", "/web", UID)
        cache.set_entries([a])
        cache.set_svid("a", svid_for(ca, a))
        await asyncio.wait_for(woke, 5)
        cache.set_bundles(SpiffeBundle(TD))
        assert cache.ready
        await asyncio.wait_for(sub.__anext__(), 5)
    assert not cache._subscriptions, "closing unsubscribes"


def test_the_stored_svid_equals_the_given_one_and_stays_valid(ca) -> None:
    cache = IdentityCache(TD)
    a = entry("a", "/web", UID)
    cache.set_entries([a])
    svid = svid_for(ca, a)
    cache.set_svid("a", svid)
    stored = cache.svid("a")
    assert stored == svid
    assert stored.marshal_der() == svid.marshal_der()
    assert X509Svid.parse_der(*stored.marshal_der()).spiffe_id == a.spiffe_id
    assert X509Svid.from_certificates(stored.cert_chain, stored.private_key) == svid
    assert cache.identities_for([UID])[0].svid is stored
