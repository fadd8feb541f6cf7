"""Own-bundle changes: append, taint, revoke, prune; sequence numbers move on every change."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status

from spiffed.server.ca import bundleops
from spiffed.server.errors import ServerError
from tests.server.nodeattestor.pki import make_cert

NOW = dt.datetime.now(dt.UTC)


def pub_der() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_tb_03_sequence_changes_on_every_content_update_only() -> None:
    b = bundleops.new_bundle("example.org")
    root = make_cert("root A", ca=True).cert
    assert bundleops.append_x509_authorities(b, [root])
    assert b.sequence_number == 1
    assert not bundleops.append_x509_authorities(b, [root]), "no change, no new sequence"
    assert b.sequence_number == 1
    assert bundleops.append_jwt_authority(b, "kid-1", pub_der(), NOW + dt.timedelta(hours=1))
    assert b.sequence_number == 2


def test_same_key_id_with_another_key_is_refused() -> None:
    b = bundleops.new_bundle("example.org")
    bundleops.append_jwt_authority(b, "kid-1", pub_der(), NOW)
    with pytest.raises(ServerError) as err:
        bundleops.append_jwt_authority(b, "kid-1", pub_der(), NOW)
    assert err.value.status is Status.ALREADY_EXISTS


def test_x509_taint_then_revoke_and_their_preconditions() -> None:
    b = bundleops.new_bundle("example.org")
    old, new = make_cert("old", ca=True).cert, make_cert("new", ca=True).cert
    bundleops.append_x509_authorities(b, [old, new])
    with pytest.raises(ServerError, match="not possible to revoke an untainted root CA"):
        bundleops.revoke_x509_authority(b, old)
    bundleops.taint_x509_authority(b, old)
    assert [a.tainted for a in b.x509_authorities] == [True, False]
    with pytest.raises(ServerError, match="already tainted"):
        bundleops.taint_x509_authority(b, old)
    seq = b.sequence_number
    bundleops.revoke_x509_authority(b, old)
    assert len(b.x509_authorities) == 1
    assert b.sequence_number == seq + 1
    with pytest.raises(ServerError) as err:
        bundleops.taint_x509_authority(b, old)
    assert err.value.status is Status.NOT_FOUND


def test_jwt_taint_then_revoke() -> None:
    b = bundleops.new_bundle("example.org")
    bundleops.append_jwt_authority(b, "a", pub_der(), NOW)
    with pytest.raises(ServerError, match="not possible to revoke an untainted key"):
        bundleops.revoke_jwt_authority(b, "a")
    bundleops.taint_jwt_authority(b, "a")
    bundleops.revoke_jwt_authority(b, "a")
    assert list(b.jwt_authorities) == []
    with pytest.raises(ServerError) as err:
        bundleops.taint_jwt_authority(b, "a")
    assert err.value.status is Status.NOT_FOUND


def test_prune_drops_expired_authorities_but_never_the_last_root() -> None:
    b = bundleops.new_bundle("example.org")
    expired = make_cert(
        "expired",
        ca=True,
        not_before=NOW - dt.timedelta(days=3),
        not_after=NOW - dt.timedelta(days=2),
    ).cert
    live = make_cert("live", ca=True).cert
    bundleops.append_x509_authorities(b, [expired, live])
    bundleops.append_jwt_authority(b, "old", pub_der(), NOW - dt.timedelta(days=2))
    bundleops.append_jwt_authority(b, "new", pub_der(), NOW + dt.timedelta(days=1))
    assert bundleops.prune(b, NOW - dt.timedelta(days=1))
    assert [a.asn1 for a in b.x509_authorities] == [live.public_bytes(serialization.Encoding.DER)]
    assert [k.key_id for k in b.jwt_authorities] == ["new"]
    assert not bundleops.prune(b, NOW - dt.timedelta(days=1)), "nothing left to prune"

    only_expired = bundleops.new_bundle("example.org")
    bundleops.append_x509_authorities(only_expired, [expired])
    assert not bundleops.prune(only_expired, NOW)
    assert len(only_expired.x509_authorities) == 1
