"""Per-IP rate limits of the server API (SPIRE's ``ratelimit`` block and ``limits`` package).

One limiter per kind of work, shared by every RPC doing that work, as SPIRE's middleware:

* attestation: AttestAgent, 1 per second per IP (``ratelimit { attestation = true }``);
* X.509 signing: BatchNewX509SVID (cost = number of CSRs) and RenewAgent (cost 1), 500 per
  second per IP (``ratelimit { signing = true }``);
* JWT signing: NewJWTSVID, 500 per second per IP (same switch);
* PostStatus: 10 per second per IP (always on).

A call over the limit is refused at once with RESOURCE_EXHAUSTED (SPIRE makes it wait for
tokens instead; refusing keeps a flooding client from holding server tasks). A cost larger
than the burst can never be met: SPIRE's ``rate (n) exceeds burst size (m)``.

Callers are keyed by IP; an IPv6 caller by its /64 network, since one host usually holds a
whole /64 and could otherwise rotate addresses to escape the limit. Local (Unix socket)
callers are not limited.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpclib.const import Status

from spiffed.ratelimit import KeyedRateLimiter
from spiffed.server.errors import ServerError

__all__ = [
    "ATTEST_LIMIT_PER_IP",
    "POST_STATUS_LIMIT_PER_IP",
    "SIGN_LIMIT_PER_IP",
    "RateLimits",
    "caller_ip",
    "rate_limit_key",
    "take",
]

ATTEST_LIMIT_PER_IP = 1
"""SPIRE's ``limits.AttestLimitPerIP``: AttestAgent calls per second (and burst) per IP."""
SIGN_LIMIT_PER_IP = 500
"""SPIRE's ``limits.SignLimitPerIP``: X.509 CSRs (or JWTs) signed per second per IP."""
POST_STATUS_LIMIT_PER_IP = 10
"""SPIRE's ``limits.PostStatusLimitPerIP``."""
IPV6_PREFIX = 64
"""IPv6 callers share one bucket per network of this prefix length."""


def caller_ip(address: str | None) -> str | None:
    """The IP of an ``ip:port`` (or ``[ip]:port``) caller address, as the listener writes
    it (the port always last); None for local callers."""
    if not address:
        return None
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


def rate_limit_key(address: str | None) -> str | None:
    """The key a caller is limited by: its IPv4 address, or its IPv6 /64 network (an IPv4
    address mapped into IPv6 counts as IPv4); None for local callers (not limited)."""
    ip = caller_ip(address)
    if ip is None:
        return None
    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return str(parsed)


@dataclass(slots=True)
class RateLimits:
    """The server's per-IP limiters (None where the configuration turns one off)."""

    attestation: KeyedRateLimiter | None
    x509_signing: KeyedRateLimiter | None
    jwt_signing: KeyedRateLimiter | None
    post_status: KeyedRateLimiter

    @classmethod
    def from_config(
        cls, config: Any = None, clock: Callable[[], float] = time.monotonic
    ) -> RateLimits:
        """The limiters ``config.ratelimit`` asks for (both switches on without a config)."""
        switches = getattr(config, "ratelimit", None)
        attest = switches is None or bool(switches.attestation)
        sign = switches is None or bool(switches.signing)

        def per_ip(limit: int) -> KeyedRateLimiter:
            return KeyedRateLimiter(limit, limit, clock=clock)

        return cls(
            attestation=per_ip(ATTEST_LIMIT_PER_IP) if attest else None,
            x509_signing=per_ip(SIGN_LIMIT_PER_IP) if sign else None,
            jwt_signing=per_ip(SIGN_LIMIT_PER_IP) if sign else None,
            post_status=per_ip(POST_STATUS_LIMIT_PER_IP),
        )


def take(
    limiter: KeyedRateLimiter | None,
    address: str | None,
    what: str,
    cost: int = 1,
) -> None:
    """Take ``cost`` from the caller's bucket, or refuse with RESOURCE_EXHAUSTED
    ``rejecting request due to <what> rate limiting: ...``."""
    if limiter is None:
        return
    key = rate_limit_key(address)
    if key is None:
        return
    prefix = f"rejecting request due to {what} rate limiting"
    if cost > limiter.burst:
        raise ServerError(
            Status.RESOURCE_EXHAUSTED,
            f"{prefix}: rate ({cost}) exceeds burst size ({limiter.burst:g})",
        )
    if not limiter.allow(key, cost):
        raise ServerError(
            Status.RESOURCE_EXHAUSTED, f"{prefix}: too many requests from {caller_ip(address)}"
        )
