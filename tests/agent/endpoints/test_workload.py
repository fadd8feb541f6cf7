"""The Workload API service on a real Unix socket, called by grpclib from this process.

The caller is this test process: the unix attestor reads its real UID from /proc, and the
entries the test registers for that UID are what it must get (and nothing else).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.workload import workload_pb2 as pb
from spiffed.agent.workloadattestor import WorkloadAttestationError
from spiffed.bundle.x509 import split_der_certificates
from spiffed.ratelimit import KeyedRateLimiter
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvid
from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MD,
    MY_UID,
    NOBODY_UID,
    OTHER_FED,
    REQ_JWT_BUNDLES,
    REQ_X509,
    REQ_X509_BUNDLES,
    TD,
    Agent,
    Authority,
    entry,
    open_stream,
    running_agent,
    stub,
)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


def serial(svid_msg: pb.X509SVID) -> int:
    return split_der_certificates(svid_msg.x509_svid)[0].serial_number


async def expect_status(coro, status: Status) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await coro
    assert err.value.status is status, err.value
    return err.value


# --- X.509 -------------------------------------------------------------------------------


async def test_wa_20_to_26_first_message_is_the_full_consistent_state(agent: Agent) -> None:
    svids = agent.add(
        entry("b", "/web", MY_UID, federates_with=[FED]),
        entry("a", "/db", MY_UID),
        entry("c", "/not-mine", NOBODY_UID, federates_with=[OTHER_FED]),
    )
    agent.set_federation(agent.fed.bundle(), Authority(OTHER_FED).bundle())
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            msg = await s.next()
    # WA-70: ordered as the cache gives them (entry ID), default first; only mine.
    assert [m.spiffe_id for m in msg.svids] == [
        "spiffe://example.org/db",
        "spiffe://example.org/web",
    ]
    for m, e_id in zip(msg.svids, ["a", "b"], strict=True):
        chain = split_der_certificates(m.x509_svid)
        assert chain == list(svids[e_id].cert_chain)  # WA-23: DER, leaf first
        key = serialization.load_der_private_key(m.x509_svid_key, None)  # WA-24: PKCS#8
        assert key.public_key() == chain[0].public_key()
        uri = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert uri.value.get_values_for_type(x509.UniformResourceIdentifier) == [m.spiffe_id]
        assert split_der_certificates(m.bundle) == [agent.ca.ca_cert]  # WA-25
    # WA-26: only the trust domains my entries federate with, keyed spiffe://<td>.
    assert dict(msg.federated_bundles) == {
        "spiffe://federated.org": agent.fed.ca_cert.public_bytes(serialization.Encoding.DER)
    }


async def test_7_6_rotation_and_federation_changes_arrive_on_the_open_stream(agent: Agent) -> None:
    web = entry("w", "/web", MY_UID, federates_with=[FED])
    db = entry("d", "/db", MY_UID)
    first = agent.add(web, db)
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            msg = await s.next()
            assert [serial(m) for m in msg.svids] == [
                first["d"].leaf.serial_number,
                first["w"].leaf.serial_number,
            ]
            assert not msg.federated_bundles
            rotated = agent.rotate(web)
            msg = await s.next()
            # WA-06: the whole set again, not a delta.
            assert [serial(m) for m in msg.svids] == [
                first["d"].leaf.serial_number,
                rotated.leaf.serial_number,
            ]
            agent.set_federation(agent.fed.bundle())
            msg = await s.next()
            assert list(msg.federated_bundles) == ["spiffe://federated.org"]
            assert len(msg.svids) == 2
            agent.set_federation()
            msg = await s.next()
            assert not msg.federated_bundles  # WA-09: empty means "drop them"
            agent.remove("w")
            msg = await s.next()
            assert [m.spiffe_id for m in msg.svids] == ["spiffe://example.org/db"]
            agent.remove("d")
            # 7.6 item 4: deleting the last one ends the stream with PERMISSION_DENIED.
            await expect_status(s.next(), Status.PERMISSION_DENIED)


async def test_changes_for_other_workloads_send_nothing_new(agent: Agent) -> None:
    mine = entry("m", "/mine", MY_UID)
    theirs = entry("t", "/theirs", NOBODY_UID)
    agent.add(mine, theirs)
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            before = await s.next()
            agent.rotate(theirs)  # wakes the stream, but my state is unchanged
            rotated = agent.rotate(mine)
            after = await s.next()
    assert serial(after.svids[0]) == rotated.leaf.serial_number != serial(before.svids[0])


async def test_an_entry_waiting_for_its_svid_is_not_sent_half_done(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    b = entry("b", "/b", MY_UID)
    agent.add(b, sign=False)
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            agent.rotate(b)
            msg = await s.next()
    assert [m.spiffe_id for m in msg.svids] == ["spiffe://example.org/a", "spiffe://example.org/b"]


async def test_wa_27_wa_71_duplicate_hints_keep_the_oldest_and_long_hints_are_not_served(
    agent: Agent,
) -> None:
    agent.add(
        entry("a", "/a", MY_UID, hint="internal", created_at=20),
        entry("b", "/b", MY_UID, hint="internal", created_at=10),
        entry("c", "/c", MY_UID, hint="x" * 1025),
        entry("d", "/d", MY_UID, hint="external"),
    )
    expected = [("b", "internal"), ("c", ""), ("d", "external")]
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            msg = await s.next()
        jwts = await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
    assert [(m.spiffe_id.rsplit("/", 1)[1], m.hint) for m in msg.svids] == expected
    assert [(m.spiffe_id.rsplit("/", 1)[1], m.hint) for m in jwts.svids] == expected


@pytest.mark.parametrize(
    ("method", "request_msg"),
    [
        ("FetchX509SVID", REQ_X509),
        ("FetchX509Bundles", REQ_X509_BUNDLES),
        ("FetchJWTBundles", REQ_JWT_BUNDLES),
    ],
)
async def test_7_7_row_2_unregistered_caller_is_denied(agent: Agent, method, request_msg) -> None:
    agent.add(entry("t", "/theirs", NOBODY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, method, request_msg) as s:
            await expect_status(s.next(), Status.PERMISSION_DENIED)


async def test_6_2_row_8_not_ready_is_unavailable(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "a.sock", ready=False) as agent:
        with agent.channel() as ch:
            async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
                await expect_status(s.next(), Status.UNAVAILABLE)
            await expect_status(
                stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=MD),
                Status.UNAVAILABLE,
            )


async def test_failed_attestation_is_unavailable(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        async def attest(self, pid: int) -> list[Selector]:
            raise WorkloadAttestationError(f"cannot attest {pid}")

    async with running_agent(tmp_path / "a.sock", attestors=[Broken()]) as agent:
        with agent.channel() as ch:
            err = await expect_status(
                stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=MD),
                Status.UNAVAILABLE,
            )
    assert "cannot attest" in (err.message or "")


async def test_we_14_wa_04_the_caller_is_attested_by_its_kernel_pid_not_by_metadata(
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    class Recording:
        name = "rec"

        async def attest(self, pid: int) -> list[Selector]:
            seen.append(pid)
            return [Selector("rec", "me")]

    async with running_agent(tmp_path / "a.sock", attestors=[Recording()]) as agent:
        agent.add(entry("r", "/rec", Selector("rec", "me")))
        agent.add(entry("x", "/root", Selector("unix", "uid:0")))
        lies = [*MD.items(), ("pid", "1"), ("uid", "0"), ("selectors", "unix:uid:0")]
        with agent.channel() as ch:
            async with open_stream(ch, "FetchX509SVID", REQ_X509, metadata=lies) as s:
                msg = await s.next()
    assert seen == [os.getpid()]
    assert [m.spiffe_id for m in msg.svids] == ["spiffe://example.org/rec"]


async def test_header_missing_is_invalid_argument_before_attestation(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509, metadata={}) as s:
            await expect_status(s.next(), Status.INVALID_ARGUMENT)


# --- bundles -----------------------------------------------------------------------------


async def test_wa_31_x509_bundles_stream_own_and_federated_and_follow_changes(
    agent: Agent,
) -> None:
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509Bundles", REQ_X509_BUNDLES) as s:
            msg = await s.next()
            assert list(msg.bundles) == ["spiffe://example.org"]
            assert split_der_certificates(msg.bundles["spiffe://example.org"]) == [agent.ca.ca_cert]
            agent.set_federation(agent.fed.bundle(), Authority(OTHER_FED).bundle())
            msg = await s.next()
            assert sorted(msg.bundles) == ["spiffe://example.org", "spiffe://federated.org"]


async def test_wa_45_jwt_bundles_are_plain_jwks_without_use(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    with agent.channel() as ch:
        async with open_stream(ch, "FetchJWTBundles", REQ_JWT_BUNDLES) as s:
            msg = await s.next()
            assert sorted(msg.bundles) == ["spiffe://example.org", "spiffe://federated.org"]
            own = json.loads(msg.bundles["spiffe://example.org"])
            assert [k["kid"] for k in own["keys"]] == [agent.ca.jwt_kid]
            assert all("use" not in k and "x5c" not in k for k in own["keys"])
            assert set(own) == {"keys"}
            agent.set_federation()
            msg = await s.next()
            assert list(msg.bundles) == ["spiffe://example.org"]


# --- JWT ---------------------------------------------------------------------------------


async def test_wa_41_wa_42_jwt_svid_request_checks(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        api = stub(ch)
        for bad in ([], [""]):
            await expect_status(
                api.FetchJWTSVID(pb.JWTSVIDRequest(audience=bad), metadata=MD),
                Status.INVALID_ARGUMENT,
            )
        await expect_status(
            api.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["a"], spiffe_id="not a spiffe id"), metadata=MD
            ),
            Status.INVALID_ARGUMENT,
        )
        await expect_status(
            api.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://example.org/not-mine"),
                metadata=MD,
            ),
            Status.PERMISSION_DENIED,
        )
    assert agent.minter.calls == []


async def test_wa_43_no_identity_no_jwt(agent: Agent) -> None:
    agent.add(entry("t", "/theirs", NOBODY_UID))
    with agent.channel() as ch:
        await expect_status(
            stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=MD),
            Status.PERMISSION_DENIED,
        )


async def test_7_6_items_6_7_jwt_svids_for_every_identity_then_validate(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID), entry("b", "/b", MY_UID))
    with agent.channel() as ch:
        api = stub(ch)
        resp = await api.FetchJWTSVID(pb.JWTSVIDRequest(audience=["x", "y"]), metadata=MD)
        assert [s.spiffe_id for s in resp.svids] == [
            "spiffe://example.org/a",
            "spiffe://example.org/b",
        ]
        for s in resp.svids:
            svid = JwtSvid.parse_and_validate(s.svid, agent.ca.bundle(), ["x", "y"])
            assert str(svid.spiffe_id) == s.spiffe_id
            assert svid.key_id == agent.ca.jwt_kid
        one = await api.FetchJWTSVID(
            pb.JWTSVIDRequest(audience=["x"], spiffe_id="spiffe://example.org/b"), metadata=MD
        )
        assert [s.spiffe_id for s in one.svids] == ["spiffe://example.org/b"]
        ok = await api.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=resp.svids[1].svid), metadata=MD
        )
    assert ok.spiffe_id == "spiffe://example.org/b"
    claims = dict(ok.claims)
    assert claims["sub"] == "spiffe://example.org/b"
    assert list(claims["aud"]) == ["x", "y"]  # WA-50: aud always a list
    assert claims["exp"] > dt.datetime.now(dt.UTC).timestamp()


async def test_jwt_svids_are_cached_per_id_and_audience_set_until_half_life(
    tmp_path: Path,
) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    async with running_agent(tmp_path / "a.sock", clock=lambda: now[0]) as agent:
        agent.add(entry("a", "/a", MY_UID))
        with agent.channel() as ch:
            api = stub(ch)

            async def fetch(*aud: str) -> str:
                resp = await api.FetchJWTSVID(pb.JWTSVIDRequest(audience=aud), metadata=MD)
                return resp.svids[0].svid

            first = await fetch("x", "y")
            assert await fetch("y", "x") == first  # same audience set
            assert await fetch("x") != first
            assert len(agent.minter.calls) == 2
            now[0] += 151  # past half of the 300 s lifetime
            assert await fetch("x", "y") != first
            assert len(agent.minter.calls) == 3


async def test_jwt_cache_is_bounded(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "a.sock", jwt_cache_size=2) as agent:
        agent.add(entry("a", "/a", MY_UID))
        with agent.channel() as ch:
            api = stub(ch)
            for aud in ("p", "q", "r", "p"):
                await api.FetchJWTSVID(pb.JWTSVIDRequest(audience=[aud]), metadata=MD)
        assert [c[1] for c in agent.minter.calls] == [("p",), ("q",), ("r",), ("p",)]
        assert len(agent.service._jwts) == 2


async def test_minter_failure_is_unavailable(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))

    async def broken(e, audience) -> str:
        raise RuntimeError("server unreachable")

    agent.service._mint = broken
    with agent.channel() as ch:
        await expect_status(
            stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=MD),
            Status.UNAVAILABLE,
        )


async def test_7_7_rows_6_to_8_and_amb_14_bad_tokens_are_invalid_argument(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    sid = SpiffeId.parse("spiffe://example.org/a")
    good = agent.ca.jwt(sid, ["x"])
    stranger = Authority(TD)  # same trust domain name, key not in the bundle
    cases = [
        ("", good),
        ("x", ""),
        ("other", good),  # row 8: aud does not contain the audience
        ("x", "not.a.token"),
        ("x", stranger.jwt(sid, ["x"])),
        ("x", agent.fed.jwt(SpiffeId.parse("spiffe://federated.org/w"), ["x"])),  # no bundle
    ]
    with agent.channel() as ch:
        api = stub(ch)
        for audience, token in cases:
            await expect_status(
                api.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=MD
                ),
                Status.INVALID_ARGUMENT,
            )


async def test_wa_51_svid_07_federated_tokens_validate_with_non_spiffe_claims_dropped(
    agent: Agent,
) -> None:
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    foreign = agent.fed.jwt(
        SpiffeId.parse("spiffe://federated.org/w"), ["x"], extra_claims={"role": "admin"}
    )
    local = agent.ca.jwt(
        SpiffeId.parse("spiffe://example.org/a"), ["x"], extra_claims={"role": "user"}
    )
    with agent.channel() as ch:
        api = stub(ch)
        resp = await api.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=foreign), metadata=MD
        )
        assert resp.spiffe_id == "spiffe://federated.org/w"
        assert "role" not in resp.claims and {"sub", "aud", "exp"} <= set(resp.claims)
        resp = await api.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=local), metadata=MD
        )
        assert resp.claims["role"] == "user"


# --- WIT, rate limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_msg"),
    [("FetchWITSVID", pb.WITSVIDRequest()), ("FetchWITBundles", pb.WITBundlesRequest())],
)
async def test_wa_02_wa_60_wit_is_optional_and_unimplemented(
    agent: Agent, method, request_msg
) -> None:
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, method, request_msg) as s:
            await expect_status(s.next(), Status.UNIMPLEMENTED)


async def test_callers_are_rate_limited_by_uid(tmp_path: Path) -> None:
    clock = [0.0]
    limiter = KeyedRateLimiter(1, 3, clock=lambda: clock[0])
    async with running_agent(tmp_path / "a.sock", rate_limiter=limiter) as agent:
        agent.add(entry("a", "/a", MY_UID))
        with agent.channel() as ch:
            api = stub(ch)
            request = pb.JWTSVIDRequest(audience=["a"])
            for _ in range(3):
                await api.FetchJWTSVID(request, metadata=MD)
            err = await expect_status(api.FetchJWTSVID(request, metadata=MD), Status.UNAVAILABLE)
            assert f"uid {os.getuid()}" in (err.message or "")
            clock[0] += 1.0
            await api.FetchJWTSVID(request, metadata=MD)


async def test_a_client_leaving_ends_its_subscription(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            await s.next()
            assert len(agent.cache._subscriptions) == 1
    async with asyncio.timeout(DEADLINE):
        while agent.cache._subscriptions:
            await asyncio.sleep(0.01)  # poll: the server notices the reset asynchronously
