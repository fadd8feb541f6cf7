"""The server API's authorization policy is SPIRE's default, method by method."""

from spiffed.grpcutil import PeerCredentials
from spiffed.server.api import POLICY, Caller, Role, allowed
from spiffed.spiffeid import SpiffeId

LOCAL = Caller(local=PeerCredentials(1, 0, 0), roles=frozenset({Role.ANY, Role.LOCAL}))
ANON = Caller(address="10.0.0.1")
AGENT = Caller(
    spiffe_id=SpiffeId.parse("spiffe://example.org/spire/agent/join_token/x"),
    roles=frozenset({Role.ANY, Role.AGENT}),
)
ADMIN = Caller(
    spiffe_id=SpiffeId.parse("spiffe://example.org/admin"), roles=frozenset({Role.ANY, Role.ADMIN})
)


def test_admin_rpcs_need_admin_or_local() -> None:
    method = "/spire.api.server.entry.v1.Entry/BatchCreateEntry"
    assert allowed(method, LOCAL) and allowed(method, ADMIN)
    assert not allowed(method, ANON) and not allowed(method, AGENT)


def test_agent_rpcs_need_an_agent() -> None:
    method = "/spire.api.server.svid.v1.SVID/BatchNewX509SVID"
    assert allowed(method, AGENT)
    assert not allowed(method, LOCAL) and not allowed(method, ADMIN) and not allowed(method, ANON)


def test_attestation_and_bundle_are_open_to_anyone() -> None:
    assert allowed("/spire.api.server.agent.v1.Agent/AttestAgent", ANON)
    assert allowed("/spire.api.server.bundle.v1.Bundle/GetBundle", ANON)


def test_local_only_services() -> None:
    for method in (
        "/spire.api.server.logger.v1.Logger/SetLogLevel",
        "/grpc.health.v1.Health/Check",
    ):
        assert allowed(method, LOCAL)
        assert not allowed(method, ADMIN)


def test_unknown_methods_are_refused() -> None:
    assert not allowed("/spire.api.server.entry.v1.Entry/DropAllEntries", LOCAL)
    # SPIRE's 65 RPCs plus spiffed's own Watch extension.
    assert len(POLICY) == 66
    assert POLICY["/spiffed.api.server.watch.v1.Watch/WatchAuthorizedEntries"] == {Role.AGENT}
