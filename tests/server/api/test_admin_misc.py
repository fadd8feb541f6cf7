"""localauthority.v1, debug.v1 and logger.v1 over the real CA and datastore."""

from __future__ import annotations

import logging

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.bundle.v1 import bundle_pb2 as B
from spiffed._proto.spire.api.server.debug.v1 import debug_pb2 as D
from spiffed._proto.spire.api.server.localauthority.v1 import localauthority_pb2 as L
from spiffed._proto.spire.api.server.logger.v1 import logger_pb2 as LG
from spiffed._proto.spire.api.types import logger_pb2
from spiffed.server import datastore as ds

from .conftest import Api


async def test_x509_prepare_activate_taint_revoke(api: Api) -> None:
    state = await api.la.GetX509AuthorityState(L.GetX509AuthorityStateRequest())
    first = state.active.authority_id
    assert first and not state.HasField("prepared")
    prepared = await api.la.PrepareX509Authority(L.PrepareX509AuthorityRequest())
    new_id = prepared.prepared_authority.authority_id
    assert new_id and new_id != first
    with pytest.raises(GRPCError) as err:
        await api.la.ActivateX509Authority(L.ActivateX509AuthorityRequest(authority_id="nope"))
    assert err.value.status is Status.INVALID_ARGUMENT
    activated = await api.la.ActivateX509Authority(
        L.ActivateX509AuthorityRequest(authority_id=new_id)
    )
    assert activated.activated_authority.authority_id == new_id
    state = await api.la.GetX509AuthorityState(L.GetX509AuthorityStateRequest())
    assert state.old.authority_id == first
    roots_before = len((await api.bundle.GetBundle(B.GetBundleRequest())).x509_authorities)
    with pytest.raises(GRPCError) as err:
        await api.la.TaintX509Authority(L.TaintX509AuthorityRequest(authority_id=new_id))
    assert err.value.status is Status.INVALID_ARGUMENT
    tainted = await api.la.TaintX509Authority(L.TaintX509AuthorityRequest(authority_id=first))
    assert tainted.tainted_authority.authority_id == first
    bundle = await api.bundle.GetBundle(B.GetBundleRequest())
    assert sum(a.tainted for a in bundle.x509_authorities) == 1
    await api.la.RevokeX509Authority(L.RevokeX509AuthorityRequest(authority_id=first))
    bundle = await api.bundle.GetBundle(B.GetBundleRequest())
    assert len(bundle.x509_authorities) == roots_before - 1


async def test_jwt_prepare_activate_taint_revoke(api: Api) -> None:
    first = (await api.la.GetJWTAuthorityState(L.GetJWTAuthorityStateRequest())).active
    prepared = await api.la.PrepareJWTAuthority(L.PrepareJWTAuthorityRequest())
    kid = prepared.prepared_authority.authority_id
    await api.la.ActivateJWTAuthority(L.ActivateJWTAuthorityRequest(authority_id=kid))
    assert api.ctx.ca.jwt_signing_key()[0] == kid
    await api.la.TaintJWTAuthority(L.TaintJWTAuthorityRequest(authority_id=first.authority_id))
    keys = (await api.bundle.GetBundle(B.GetBundleRequest())).jwt_authorities
    assert [k.key_id for k in keys if k.tainted] == [first.authority_id]
    await api.la.RevokeJWTAuthority(L.RevokeJWTAuthorityRequest(authority_id=first.authority_id))
    keys = (await api.bundle.GetBundle(B.GetBundleRequest())).jwt_authorities
    assert [k.key_id for k in keys] == [kid]
    with pytest.raises(GRPCError) as err:
        await api.la.RevokeJWTAuthority(L.RevokeJWTAuthorityRequest(authority_id=kid))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_upstream_and_wit_rpcs(api: Api) -> None:
    with pytest.raises(GRPCError) as err:
        await api.la.TaintX509UpstreamAuthority(
            L.TaintX509UpstreamAuthorityRequest(subject_key_id="ab")
        )
    assert err.value.status is Status.FAILED_PRECONDITION
    with pytest.raises(GRPCError) as err:
        await api.la.RevokeX509UpstreamAuthority(
            L.RevokeX509UpstreamAuthorityRequest(subject_key_id="ab")
        )
    assert err.value.status is Status.FAILED_PRECONDITION
    with pytest.raises(GRPCError) as err:
        await api.la.GetWITAuthorityState(L.GetWITAuthorityStateRequest())
    assert err.value.status is Status.UNIMPLEMENTED


async def test_debug_get_info(api: Api) -> None:
    await api.ds.create_node(ds.AttestedNode("spiffe://example.org/spire/agent/x/1", "x", "1"))
    await api.ds.set_bundle(ds.Bundle("fed.org", b"x"))
    await api.ds.create_entry(
        ds.RegistrationEntry(
            "spiffe://example.org/w", "spiffe://example.org/p", (ds.Selector("a", "b"),)
        )
    )
    info = await api.debug.GetInfo(D.GetInfoRequest())
    assert (info.agents_count, info.entries_count, info.federated_bundles_count) == (1, 1, 1)
    assert info.uptime >= 0
    chain = api.ctx.server_svid.chain
    assert len(info.svid_chain) == len(chain)
    assert info.svid_chain[0].id.path == "/spire/server"
    assert info.svid_chain[0].expires_at == int(chain[0].not_valid_after_utc.timestamp())


async def test_logger_levels(api: Api) -> None:
    root = logging.getLogger()
    saved = root.level
    try:
        launch = (await api.logger.GetLogger(LG.GetLoggerRequest())).launch_level
        got = await api.logger.SetLogLevel(LG.SetLogLevelRequest(new_level=logger_pb2.DEBUG))
        assert got.current_level == logger_pb2.DEBUG and root.level == logging.DEBUG
        got = await api.logger.SetLogLevel(LG.SetLogLevelRequest(new_level=logger_pb2.TRACE))
        assert got.current_level == logger_pb2.TRACE and root.level == 5
        with pytest.raises(GRPCError) as err:
            await api.logger.SetLogLevel(LG.SetLogLevelRequest())
        assert err.value.status is Status.INVALID_ARGUMENT
        assert root.level == 5
        reset = await api.logger.ResetLogLevel(LG.ResetLogLevelRequest())
        assert reset.current_level == launch == reset.launch_level
    finally:
        root.setLevel(saved)
