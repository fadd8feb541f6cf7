"""svid.v1.SVID for agents (BatchNewX509SVID, NewJWTSVID) and Bundle.GetFederatedBundle as an
agent calls it, tested from the attacker's side: an agent gets SVIDs only for entries it is
authorized for, only with the entry's identity, and only for CSRs it holds the key of.

The calls go through an in-process channel whose handlers run as the caller the test names
(after the same policy check the TLS listener makes).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc
from spiffed._proto.spire.api.server.agent.v1 import agent_pb2 as A
from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc
from spiffed._proto.spire.api.server.bundle.v1 import bundle_pb2 as B
from spiffed._proto.spire.api.server.svid.v1 import svid_grpc
from spiffed._proto.spire.api.server.svid.v1 import svid_pb2 as S
from spiffed._proto.spire.api.types import bundle_pb2 as TB
from spiffed.bundle.jwt import JwtBundle
from spiffed.server import datastore as ds
from spiffed.server.api import Caller, Role, allowed, caller_context
from spiffed.server.api.limits import SIGN_LIMIT_PER_IP, RateLimits, rate_limit_key
from spiffed.server.api.services import build_services
from spiffed.server.api.svid import MAX_BATCH, YIELD_EVERY
from spiffed.server.cache import ServerCache
from spiffed.server.config import RateLimitConfig
from spiffed.server.signing import SigningLimiter
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import JwtSvid

from .conftest import Api
from .helpers import sid

TD = "example.org"
AGENT = SpiffeId.parse("spiffe://example.org/spire/agent/me")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/spire/agent/other")
AGENT_CALLER = Caller(address="127.0.0.1:4000", spiffe_id=AGENT, roles=frozenset({Role.AGENT}))
ADMIN_CALLER = Caller(roles=frozenset({Role.ANY, Role.LOCAL}))

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def csr_der(key: Any = KEY, *uris: str, dns: tuple[str, ...] = ()) -> bytes:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def mismatched_csr() -> bytes:
    """A CSR carrying KEY's public key but signed by OTHER_KEY: the attacker does not hold
    the private key of the public key it wants certified."""
    tbs = x509.load_der_x509_csr(csr_der(KEY)).tbs_certrequest_bytes
    signature = OTHER_KEY.sign(tbs, ec.ECDSA(hashes.SHA256()))
    ecdsa_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    return _der(0x30, tbs + ecdsa_sha256 + _der(0x03, b"\x00" + signature))


class FakeCache:
    """The two lookups the SVID API needs, over the datastore (own children and their
    descendants), for when the server cache is not written yet."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._entries: dict[str, ds.RegistrationEntry] = {}

    async def refresh(self) -> None:
        page = await self._store.list_entries()
        self._entries = {e.id: e for e in page.items}

    def entry(self, entry_id: str) -> ds.RegistrationEntry | None:
        return self._entries.get(entry_id)

    def authorized_entries(self, agent_id: SpiffeId) -> list[ds.RegistrationEntry]:
        children: defaultdict[str, list[ds.RegistrationEntry]] = defaultdict(list)
        for e in self._entries.values():
            children[e.parent_id].append(e)
        out: dict[str, ds.RegistrationEntry] = {}
        todo = [str(agent_id)]
        while todo:
            for e in children.get(todo.pop(), []):
                if e.id not in out:
                    out[e.id] = e
                    todo.append(e.spiffe_id)
        return list(out.values())


class AsCaller:
    """A service whose handlers run as ``holder[0]``, after the listener's policy check."""

    def __init__(self, service: Any, holder: list[Caller]) -> None:
        self._service = service
        self._holder = holder

    def __mapping__(self) -> dict[str, Any]:
        return {
            name: handler._replace(func=self._wrap(name, handler.func))
            for name, handler in self._service.__mapping__().items()
        }

    def _wrap(self, method: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def run(stream: Any) -> None:
            caller = self._holder[0]
            if not allowed(method, caller):
                raise GRPCError(Status.PERMISSION_DENIED, f"{method} not allowed")
            token = caller_context.set(caller)
            try:
                await func(stream)
            finally:
                caller_context.reset(token)

        return run


@dataclass
class AgentApi:
    api: Api
    svid: svid_grpc.SVIDStub
    bundle: bundle_grpc.BundleStub
    holder: list[Caller]
    signed: list[SpiffeId]
    agent: agent_grpc.AgentStub

    def as_caller(self, caller: Caller) -> None:
        self.holder[0] = caller

    async def add_entry(self, path: str, parent: SpiffeId = AGENT, **kw: Any) -> str:
        created = await self.api.ds.create_entry(
            ds.RegistrationEntry(
                spiffe_id=f"spiffe://{TD}{path}",
                parent_id=str(parent),
                selectors=(ds.Selector("unix", "uid:1000"),),
                **kw,
            )
        )
        cache: Any = self.api.ctx.cache
        await cache.refresh()
        return str(created.id)


@pytest.fixture
async def agent_api(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AgentApi]:
    started: ServerCache | None = None
    if api.ctx.cache is None:
        try:
            started = ServerCache(api.ds, TrustDomain(TD))
            await started.start()
            api.ctx.cache = started
        except NotImplementedError:  # the server cache is not written yet
            started = None
            fake: Any = FakeCache(api.ds)
            await fake.refresh()
            api.ctx.cache = fake
    signed: list[SpiffeId] = []
    real = api.ctx.ca.sign_x509_svid_der

    def counting(spiffe_id: SpiffeId, *args: Any, **kw: Any) -> bytes:
        signed.append(spiffe_id)
        return real(spiffe_id, *args, **kw)

    monkeypatch.setattr(api.ctx.ca, "sign_x509_svid_der", counting)
    holder = [AGENT_CALLER]
    services = [AsCaller(s, holder) for s in build_services(api.ctx)]
    try:
        async with ChannelFor(services) as channel:
            yield AgentApi(
                api,
                svid_grpc.SVIDStub(channel),
                bundle_grpc.BundleStub(channel),
                holder,
                signed,
                agent_grpc.AgentStub(channel),
            )
    finally:
        if started is not None:
            await started.stop()


def one(resp: S.BatchNewX509SVIDResponse) -> S.BatchNewX509SVIDResponse.Result:
    assert len(resp.results) == 1
    return resp.results[0]


def params(*pairs: tuple[str, bytes]) -> S.BatchNewX509SVIDRequest:
    return S.BatchNewX509SVIDRequest(
        params=[S.NewX509SVIDParams(entry_id=e, csr=c) for e, c in pairs]
    )


# --- BatchNewX509SVID ------------------------------------------------------------------


async def test_svid_has_the_entry_id_and_dns_names_never_the_csrs(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry(
        "/web", dns_names=("web.example.org", "alt.example.org"), x509_svid_ttl=600
    )
    attack = csr_der(KEY, "spiffe://example.org/admin", dns=("evil.example.com",))
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, attack))))
    assert result.status.code == Status.OK.value
    assert (result.svid.id.trust_domain, result.svid.id.path) == (TD, "/web")
    leaf = x509.load_der_x509_certificate(result.svid.cert_chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/web"]
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org", "alt.example.org"]
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["web.example.org"]
    assert leaf.public_key() == KEY.public_key()
    leaf.verify_directly_issued_by(agent_api.api.ctx.ca.current_x509.certificate)
    assert result.svid.expires_at == int(leaf.not_valid_after_utc.timestamp())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc >= timedelta(seconds=600)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(seconds=600 + 60)


async def test_svid_ttl_defaults_to_the_server_default(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der()))))
    leaf = x509.load_der_x509_certificate(result.svid.cert_chain[0])
    default = agent_api.api.ctx.ca.settings.x509_svid_ttl
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert default <= lifetime <= default + timedelta(seconds=60)


async def test_svid_ttl_is_capped_at_the_ca_expiry(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web", x509_svid_ttl=30 * 24 * 3600)
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der()))))
    leaf = x509.load_der_x509_certificate(result.svid.cert_chain[0])
    ca_cert = agent_api.api.ctx.ca.current_x509.certificate
    assert leaf.not_valid_after_utc == ca_cert.not_valid_after_utc


async def test_entry_of_another_agent_is_refused_and_nothing_is_signed(
    agent_api: AgentApi,
) -> None:
    theirs = await agent_api.add_entry("/theirs", parent=OTHER_AGENT)
    result = one(await agent_api.svid.BatchNewX509SVID(params((theirs, csr_der()))))
    assert result.status.code == Status.NOT_FOUND.value
    assert result.status.message == "entry not found or not authorized"
    assert not result.HasField("svid")
    # A nonexistent entry answers the same: the agent learns nothing about others' entries.
    missing = one(await agent_api.svid.BatchNewX509SVID(params(("no-such-entry", csr_der()))))
    assert (missing.status.code, missing.status.message) == (
        result.status.code,
        result.status.message,
    )
    assert agent_api.signed == []


async def test_descendant_entries_are_authorized(agent_api: AgentApi) -> None:
    await agent_api.add_entry("/node-group")
    child = await agent_api.add_entry("/child", parent=SpiffeId.parse(f"spiffe://{TD}/node-group"))
    result = one(await agent_api.svid.BatchNewX509SVID(params((child, csr_der()))))
    assert result.status.code == Status.OK.value
    assert result.svid.id.path == "/child"


async def test_csr_signed_by_another_key_is_refused(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, mismatched_csr()))))
    assert result.status.code == Status.INVALID_ARGUMENT.value
    assert result.status.message.startswith("invalid CSR signature")
    assert agent_api.signed == []


@pytest.mark.parametrize(
    ("entry", "csr", "message"),
    [
        ("", b"csr", "missing entry ID"),
        ("ID", b"", "missing CSR"),
        ("ID", b"not a CSR at all", "malformed CSR"),
        ("ID", b"\x30\x82\xff\xff", "malformed CSR"),
    ],
)
async def test_bad_params_get_their_own_invalid_argument(
    agent_api: AgentApi, entry: str, csr: bytes, message: str
) -> None:
    entry_id = await agent_api.add_entry("/web")
    good = (entry_id, csr_der())
    bad = (entry_id if entry == "ID" else entry, csr)
    resp = await agent_api.svid.BatchNewX509SVID(params(good, bad, good))
    codes = [r.status.code for r in resp.results]
    assert codes == [Status.OK.value, Status.INVALID_ARGUMENT.value, Status.OK.value]
    assert resp.results[1].status.message.startswith(message)
    assert not resp.results[1].HasField("svid")
    assert len(agent_api.signed) == 2


async def test_csr_with_an_unknown_key_algorithm_is_malformed(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    der = csr_der()
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")
    assert der.count(ec_public_key) == 1
    unknown = der.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209"))
    resp = await agent_api.svid.BatchNewX509SVID(params((entry_id, unknown), (entry_id, der)))
    assert resp.results[0].status.code == Status.INVALID_ARGUMENT.value
    assert resp.results[0].status.message.startswith("malformed CSR")
    assert resp.results[1].status.code == Status.OK.value


async def test_unsupported_csr_key_type_is_an_internal_error_per_param(
    agent_api: AgentApi,
) -> None:
    entry_id = await agent_api.add_entry("/web")
    ed = csr_der(ed25519.Ed25519PrivateKey.generate())
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, ed))))
    assert result.status.code == Status.INTERNAL.value
    assert result.status.message.startswith("failed to sign X509-SVID")


async def test_same_entry_twice_gets_two_svids(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    resp = await agent_api.svid.BatchNewX509SVID(
        params((entry_id, csr_der()), (entry_id, csr_der(OTHER_KEY)))
    )
    assert [r.status.code for r in resp.results] == [Status.OK.value] * 2
    leaves = [x509.load_der_x509_certificate(r.svid.cert_chain[0]) for r in resp.results]
    assert leaves[0].serial_number != leaves[1].serial_number
    assert leaves[1].public_key() == OTHER_KEY.public_key()


async def test_empty_batch_is_invalid(agent_api: AgentApi) -> None:
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.BatchNewX509SVID(S.BatchNewX509SVIDRequest())
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == "missing parameters"


async def test_batch_over_the_signing_burst_is_refused_whole(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    csr = csr_der()
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.BatchNewX509SVID(params(*[(entry_id, csr)] * (MAX_BATCH + 1)))
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert err.value.message is not None
    assert f"rate ({MAX_BATCH + 1}) exceeds burst size ({MAX_BATCH})" in err.value.message
    assert agent_api.signed == []


async def test_batch_gives_other_tasks_turns_while_signing(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    ticks = 0
    seen: list[int] = []
    real = agent_api.api.ctx.ca.sign_x509_svid_der

    def record(*args: Any, **kw: Any) -> bytes:
        seen.append(ticks)
        return real(*args, **kw)

    agent_api.api.ctx.ca.sign_x509_svid_der = record  # type: ignore[method-assign]
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        n = 2 * YIELD_EVERY + 1
        resp = await agent_api.svid.BatchNewX509SVID(params(*[(entry_id, csr_der())] * n))
    finally:
        done.set()
        await task
    assert len(resp.results) == n
    # The signatures of one turn see the same tick count; the next turn sees more.
    assert seen[0] == seen[YIELD_EVERY - 1] < seen[YIELD_EVERY] < seen[2 * YIELD_EVERY]


async def test_admin_cannot_call_agent_rpcs(agent_api: AgentApi) -> None:
    agent_api.as_caller(ADMIN_CALLER)
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.BatchNewX509SVID(params(("x", csr_der())))
    assert err.value.status is Status.PERMISSION_DENIED


# --- signing limit ---------------------------------------------------------------------


async def test_signing_limit_exhausted_answers_resource_exhausted(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    limiter = SigningLimiter(max_concurrent=1, max_wait=0.01)
    agent_api.api.ctx.signing = limiter
    async with limiter.slot():  # another request is signing and does not finish
        with pytest.raises(GRPCError) as err:
            await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der())))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert err.value.message is not None
        assert "certificate signing rate limiting" in err.value.message
        with pytest.raises(GRPCError) as err:
            await agent_api.svid.NewJWTSVID(S.NewJWTSVIDRequest(entry_id=entry_id, audience=["a"]))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        agent_api.as_caller(ADMIN_CALLER)
        with pytest.raises(GRPCError) as err:
            await agent_api.svid.MintX509SVID(
                S.MintX509SVIDRequest(csr=csr_der(KEY, "spiffe://example.org/x"))
            )
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        with pytest.raises(GRPCError) as err:
            await agent_api.svid.MintJWTSVID(S.MintJWTSVIDRequest(id=sid(TD, "/x"), audience=["a"]))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert agent_api.signed == []
    assert limiter.refused == 4
    # Once the slot is free again, signing works.
    agent_api.as_caller(AGENT_CALLER)
    result = one(await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der()))))
    assert result.status.code == Status.OK.value


# --- NewJWTSVID ------------------------------------------------------------------------


async def _jwt_bundle(agent_api: AgentApi) -> JwtBundle:
    agent_api.as_caller(ADMIN_CALLER)
    bundle = await agent_api.bundle.GetBundle(B.GetBundleRequest())
    agent_api.as_caller(AGENT_CALLER)
    keys = {
        k.key_id: serialization.load_der_public_key(k.public_key) for k in bundle.jwt_authorities
    }
    return JwtBundle(TrustDomain(TD), keys)  # type: ignore[arg-type]


async def test_new_jwt_svid_for_an_authorized_entry(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web", jwt_svid_ttl=120)
    resp = await agent_api.svid.NewJWTSVID(
        S.NewJWTSVIDRequest(entry_id=entry_id, audience=["db", "queue"])
    )
    svid = JwtSvid.parse_and_validate(resp.svid.token, await _jwt_bundle(agent_api), "db")
    assert str(svid.spiffe_id) == "spiffe://example.org/web"
    assert set(svid.audience) == {"db", "queue"}
    assert resp.svid.expires_at - resp.svid.issued_at == 120
    assert (resp.svid.id.trust_domain, resp.svid.id.path) == (TD, "/web")


async def test_new_jwt_svid_default_ttl(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    resp = await agent_api.svid.NewJWTSVID(S.NewJWTSVIDRequest(entry_id=entry_id, audience=["a"]))
    default = agent_api.api.ctx.ca.settings.jwt_svid_ttl
    assert resp.svid.expires_at - resp.svid.issued_at == int(default.total_seconds())


async def test_new_jwt_svid_for_another_agents_entry_is_refused(agent_api: AgentApi) -> None:
    theirs = await agent_api.add_entry("/theirs", parent=OTHER_AGENT)
    for entry_id in (theirs, "no-such-entry", ""):
        with pytest.raises(GRPCError) as err:
            await agent_api.svid.NewJWTSVID(S.NewJWTSVIDRequest(entry_id=entry_id, audience=["a"]))
        assert err.value.status is Status.NOT_FOUND
        assert err.value.message == "entry not found or not authorized"


async def test_new_jwt_svid_needs_an_audience(agent_api: AgentApi) -> None:
    entry_id = await agent_api.add_entry("/web")
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.NewJWTSVID(S.NewJWTSVIDRequest(entry_id=entry_id))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == "at least one audience is required"


# --- GetFederatedBundle as an agent ----------------------------------------------------


async def test_agent_gets_a_federated_bundle(agent_api: AgentApi) -> None:
    ca_der = agent_api.api.ctx.ca.current_x509.certificate.public_bytes(serialization.Encoding.DER)
    stored = TB.Bundle(
        trust_domain="partner.org", x509_authorities=[TB.X509Certificate(asn1=ca_der)]
    )
    await agent_api.api.ds.create_bundle(ds.Bundle("partner.org", stored.SerializeToString()))
    got = await agent_api.bundle.GetFederatedBundle(
        B.GetFederatedBundleRequest(trust_domain="partner.org")
    )
    assert got.trust_domain == "partner.org"
    assert [a.asn1 for a in got.x509_authorities] == [ca_der]


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("unknown.org", Status.NOT_FOUND, "bundle not found"),
        (TD, Status.INVALID_ARGUMENT, "getting a federated bundle for the server's own"),
        ("spiffe://example.org", Status.INVALID_ARGUMENT, "getting a federated bundle"),
        ("", Status.INVALID_ARGUMENT, "trust domain argument is not valid"),
        ("Bad Name", Status.INVALID_ARGUMENT, "trust domain argument is not valid"),
    ],
)
async def test_agent_federated_bundle_errors(
    agent_api: AgentApi, name: str, status: Status, message: str
) -> None:
    with pytest.raises(GRPCError) as err:
        await agent_api.bundle.GetFederatedBundle(B.GetFederatedBundleRequest(trust_domain=name))
    assert err.value.status is status
    assert err.value.message is not None and err.value.message.startswith(message)


async def test_caller_without_agent_role_cannot_sign(agent_api: AgentApi) -> None:
    agent_api.as_caller(Caller(address="127.0.0.1:1", spiffe_id=AGENT, roles=frozenset()))
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.NewJWTSVID(S.NewJWTSVIDRequest(entry_id="x", audience=["a"]))
    assert err.value.status is Status.PERMISSION_DENIED


async def test_federated_bundle_datastore_failure_is_internal(
    agent_api: AgentApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(trust_domain: str) -> Any:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(agent_api.api.ds, "get_bundle", broken)
    with pytest.raises(GRPCError) as err:
        await agent_api.bundle.GetFederatedBundle(
            B.GetFederatedBundleRequest(trust_domain="partner.org")
        )
    assert err.value.status is Status.INTERNAL
    assert err.value.message == "failed to fetch bundle: database is gone"


# --- per-IP signing rate limit (SPIRE's SignLimitPerIP) ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _limited(agent_api: AgentApi) -> tuple[RateLimits, Clock]:
    clock = Clock()
    limits = RateLimits.from_config(None, clock)
    agent_api.api.ctx.rate_limits = limits
    return limits, clock


async def test_batch_costs_one_per_csr_against_the_per_ip_signing_limit(
    agent_api: AgentApi,
) -> None:
    """An agent floods batches from one IP: once its 500 CSRs a second are used, a batch is
    refused whole (nothing signed) until the bucket refills; another IP is not affected."""
    limits, clock = _limited(agent_api)
    entry_id = await agent_api.add_entry("/web")
    csr = csr_der()
    assert limits.x509_signing is not None
    assert limits.x509_signing.allow("127.0.0.1", SIGN_LIMIT_PER_IP - 3)  # already used
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.BatchNewX509SVID(params(*[(entry_id, csr)] * 4))
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert err.value.message == (
        "rejecting request due to certificate signing rate limiting: "
        "too many requests from 127.0.0.1"
    )
    assert agent_api.signed == []
    resp = await agent_api.svid.BatchNewX509SVID(params(*[(entry_id, csr)] * 3))
    assert [r.status.code for r in resp.results] == [0, 0, 0]
    agent_api.as_caller(dataclasses.replace(AGENT_CALLER, address="192.0.2.7:5000"))
    await agent_api.svid.BatchNewX509SVID(params((entry_id, csr)))
    agent_api.as_caller(AGENT_CALLER)
    clock.now += 1.0  # a second later: 500 more
    resp = await agent_api.svid.BatchNewX509SVID(params(*[(entry_id, csr)] * 2))
    assert len(agent_api.signed) == 6


async def test_renew_agent_draws_on_the_same_signing_budget(agent_api: AgentApi) -> None:
    limits, _ = _limited(agent_api)
    entry_id = await agent_api.add_entry("/web")
    assert limits.x509_signing is not None
    assert limits.x509_signing.allow("127.0.0.1", SIGN_LIMIT_PER_IP - 1)
    await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der())))  # the last token
    with pytest.raises(GRPCError) as err:
        await agent_api.agent.RenewAgent(
            A.RenewAgentRequest(params=A.AgentX509SVIDParams(csr=csr_der()))
        )
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert (err.value.message or "").startswith(
        "rejecting request due to renew agent rate limiting"
    )


async def test_jwt_signing_is_limited_per_ip(agent_api: AgentApi) -> None:
    limits, clock = _limited(agent_api)
    entry_id = await agent_api.add_entry("/web")
    assert limits.jwt_signing is not None
    assert limits.jwt_signing.allow("127.0.0.1", SIGN_LIMIT_PER_IP)
    req = S.NewJWTSVIDRequest(entry_id=entry_id, audience=["a"])
    with pytest.raises(GRPCError) as err:
        await agent_api.svid.NewJWTSVID(req)
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert err.value.message == (
        "rejecting request due to JWT signing request rate limiting: "
        "too many requests from 127.0.0.1"
    )
    # X.509 signing has its own budget (as SPIRE's middleware).
    await agent_api.svid.BatchNewX509SVID(params((entry_id, csr_der())))
    clock.now += 0.01  # 5 tokens back
    assert (await agent_api.svid.NewJWTSVID(req)).svid.token


async def test_signing_limits_off_when_configured() -> None:
    limits = RateLimits.from_config(
        ServerConfigStub(RateLimitConfig(attestation=False, signing=False))
    )
    assert (limits.attestation, limits.x509_signing, limits.jwt_signing) == (None, None, None)
    assert limits.post_status is not None  # SPIRE limits PostStatus regardless
    on = RateLimits.from_config(None)
    assert on.attestation is not None and on.x509_signing is not None
    assert on.x509_signing is not on.jwt_signing


@dataclasses.dataclass
class ServerConfigStub:
    ratelimit: RateLimitConfig


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1:443", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1:443", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:bbbb::7]:443", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.9:443", "192.0.2.9"),
        (None, None),
        ("", None),
    ],
)
def test_callers_are_keyed_by_ip_and_ipv6_by_64(address: str | None, key: str | None) -> None:
    """An IPv6 host rotating addresses within its /64 shares one bucket."""
    assert rate_limit_key(address) == key
