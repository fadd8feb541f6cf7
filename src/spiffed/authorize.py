"""Authorizers: which peer SPIFFE IDs a TLS endpoint accepts (go-spiffe's ``tlsconfig``).

An authorizer is called with the peer's SPIFFE ID and the verified chains, after the peer's
X509-SVID was verified against the trust bundle of its trust domain; it raises
:class:`AuthorizationError` to refuse the peer and returns None to accept it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = [
    "AuthorizationError",
    "Authorizer",
    "authorize_any",
    "authorize_id",
    "authorize_if",
    "authorize_member_of",
    "authorize_one_of",
]


class AuthorizationError(Exception):
    """The peer's SPIFFE ID is not one this endpoint accepts."""


Authorizer = Callable[[SpiffeId, Sequence[Sequence[x509.Certificate]]], None]
"""``authorizer(peer_id, verified_chains)``: raise :class:`AuthorizationError` to refuse."""


def _as_id(value: SpiffeId | str) -> SpiffeId:
    return value if isinstance(value, SpiffeId) else SpiffeId.parse(value)


def _as_td(value: TrustDomain | str) -> TrustDomain:
    return value if isinstance(value, TrustDomain) else TrustDomain.parse(value)


@dataclass(frozen=True, slots=True)
class _Any:
    def __call__(self, peer: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
        return None

    def __str__(self) -> str:
        return "any SPIFFE ID"


@dataclass(frozen=True, slots=True)
class _OneOf:
    ids: frozenset[SpiffeId]

    def __call__(self, peer: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
        if peer not in self.ids:
            raise AuthorizationError(f"unexpected ID {str(peer)!r}: {self} is expected")

    def __str__(self) -> str:
        return " or ".join(sorted(repr(str(i)) for i in self.ids))


@dataclass(frozen=True, slots=True)
class _MemberOf:
    trust_domain: TrustDomain

    def __call__(self, peer: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
        if peer.trust_domain != self.trust_domain:
            raise AuthorizationError(
                f"unexpected trust domain {peer.trust_domain.name!r} of {str(peer)!r}: "
                f"a member of {self.trust_domain.name!r} is expected"
            )

    def __str__(self) -> str:
        return f"a member of {self.trust_domain.name!r}"


@dataclass(frozen=True, slots=True)
class _If:
    predicate: Callable[[SpiffeId], bool]
    description: str

    def __call__(self, peer: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
        if not self.predicate(peer):
            raise AuthorizationError(f"ID {str(peer)!r} is not {self.description}")

    def __str__(self) -> str:
        return self.description


def authorize_any() -> Authorizer:
    """Accept any peer whose X509-SVID verifies (against the bundle of its trust domain)."""
    return _Any()


def authorize_id(expected: SpiffeId | str) -> Authorizer:
    """Accept only the peer with the SPIFFE ID ``expected``."""
    return _OneOf(frozenset([_as_id(expected)]))


def authorize_one_of(*expected: SpiffeId | str) -> Authorizer:
    """Accept a peer whose SPIFFE ID is one of ``expected`` (at least one is needed)."""
    if not expected:
        raise ValueError("authorize_one_of needs at least one SPIFFE ID")
    return _OneOf(frozenset(_as_id(e) for e in expected))


def authorize_member_of(trust_domain: TrustDomain | str) -> Authorizer:
    """Accept any peer of ``trust_domain``."""
    return _MemberOf(_as_td(trust_domain))


def authorize_if(
    predicate: Callable[[SpiffeId], bool], description: str = "accepted by the predicate"
) -> Authorizer:
    """Accept a peer when ``predicate(peer_id)`` is true; ``description`` goes into the
    refusal message (for example ``"a /frontend workload"``)."""
    return _If(predicate, description)
