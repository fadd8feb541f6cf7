"""The server SVID is spiffe://<td>/spire/server and is renewed at half-life."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from spiffed.server.ca.manager import CaManager, CaSettings, MemoryCaStore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import TrustDomain


async def test_server_svid_is_issued_and_renewed_at_half_life() -> None:
    now = [dt.datetime(2026, 5, 1, tzinfo=dt.UTC)]
    ca = CaManager(
        CaSettings(trust_domain=TrustDomain("example.org"), x509_svid_ttl=dt.timedelta(hours=1)),
        MemoryKeyManager(),
        MemoryCaStore("example.org"),
        clock=lambda: now[0],
    )
    await ca.start()
    svid = ServerSvid(ca, clock=lambda: now[0])
    seen: list[x509.Certificate] = []
    svid.on_rotate(lambda chain, key: seen.append(chain[0]))
    assert svid.rotate()
    leaf = svid.chain[0]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/spire/server"
    ]
    assert svid.key.public_key() == leaf.public_key()
    now[0] += dt.timedelta(minutes=29)
    assert not svid.rotate(), "not before half of its life"
    now[0] += dt.timedelta(minutes=2)
    assert svid.rotate()
    assert svid.chain[0].serial_number != leaf.serial_number
    assert len(seen) == 2
