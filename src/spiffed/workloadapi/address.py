"""Workload API endpoint addresses: ``SPIFFE_ENDPOINT_SOCKET`` values (WE-09..WE-12).

The value is an RFC 3986 URI with scheme ``unix`` or ``tcp`` (WE-10):

- ``unix:///path/to/endpoint.sock`` or ``unix:/path/to/endpoint.sock``: no authority, an
  absolute path, nothing else (WE-11). ``unix://tmp/agent.sock`` names the host ``tmp`` and
  is rejected, although go-spiffe accepts it (AMB-11: our client is strict).
- ``tcp://<ip>:<port>``: the host is an IPv4 address or a bracketed IPv6 address, never a DNS
  name, and the port is given; nothing else may appear (WE-12).

Implements the SPIFFE standards at spiffe/spiffe commit
665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

import ipaddress
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ENDPOINT_SOCKET_ENV",
    "Address",
    "AddressError",
    "TcpAddress",
    "UnixAddress",
    "from_env",
    "parse",
    "resolve",
]

ENDPOINT_SOCKET_ENV: Final = "SPIFFE_ENDPOINT_SOCKET"

_SCHEME_FIRST: Final = frozenset(string.ascii_letters)
_SCHEME_REST: Final = frozenset(string.ascii_letters + string.digits + "+-.")
_UNRESERVED: Final = string.ascii_letters + string.digits + "-._~"
_SUB_DELIMS: Final = "!$&'()*+,;="
# RFC 3986 path characters (pchar and "/"); "%" is checked separately as pct-encoded.
_PATH_CHARS: Final = frozenset(_UNRESERVED + _SUB_DELIMS + ":@/")
_HEX: Final = frozenset(string.hexdigits)
_EXAMPLE: Final = "unix:///tmp/spire-agent/public/api.sock or tcp://127.0.0.1:8000"


class AddressError(ValueError):
    """A Workload API endpoint address is missing or malformed; the message says how."""


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A Workload API endpoint on a Unix domain socket at an absolute ``path``."""

    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise AddressError(f"unix socket path {self.path!r} must be an absolute path")
        if "\x00" in self.path:
            raise AddressError(f"unix socket path {self.path!r} must not contain a NUL byte")

    def __str__(self) -> str:
        return "unix://" + _quote_path(self.path)


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A Workload API endpoint on TCP at an IP address (never a DNS name) and a port."""

    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise AddressError(f"tcp host {self.host!r} must be an IP address object")
        if isinstance(self.host, ipaddress.IPv6Address) and self.host.scope_id is not None:
            raise AddressError(f"tcp host {self.host} must not have an IPv6 zone identifier")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise AddressError(f"tcp port {self.port!r} must be an integer")
        if not 1 <= self.port <= 65535:
            raise AddressError(f"tcp port {self.port} is out of range; it must be 1..65535")

    def __str__(self) -> str:
        if isinstance(self.host, ipaddress.IPv6Address):
            return f"tcp://[{self.host.compressed}]:{self.port}"
        return f"tcp://{self.host}:{self.port}"


Address = UnixAddress | TcpAddress


def _quote_path(path: str) -> str:
    """Percent-encode what cannot appear literally in a URI path (inverse of parsing)."""
    out: list[str] = []
    for c in path:
        if c in _PATH_CHARS:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _show_char(c: str) -> str:
    return repr(c) if c.isprintable() and c.isascii() else f"U+{ord(c):04X}"


def _split_scheme(text: str) -> tuple[str, str]:
    """Return (lowercased scheme, rest after ':'), following RFC 3986 §3.1."""
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme:
        raise AddressError(
            f"endpoint address {text!r} has no URI scheme; expected a URI such as {_EXAMPLE}"
        )
    if scheme[0] not in _SCHEME_FIRST or any(c not in _SCHEME_REST for c in scheme):
        raise AddressError(
            f"endpoint address {text!r} has no valid URI scheme; expected a URI such as {_EXAMPLE}"
        )
    # RFC 3986 §3.1: schemes are case-insensitive; "UNIX:" is "unix:".
    return scheme.lower(), rest


def _check_no_query_or_fragment(text: str, rest: str, offset: int) -> None:
    for c, what in (("?", "query"), ("#", "fragment")):
        i = rest.find(c)
        if i != -1:
            raise AddressError(
                f"endpoint address {text!r} has a {what} at position {offset + i}; "
                "only the scheme and the socket location may appear"
            )


def _decode_path(text: str, path: str, offset: int) -> str:
    """Check RFC 3986 path characters and percent-decode the path to a file name."""
    raw = bytearray()
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            hexpair = path[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(h in _HEX for h in hexpair):
                raise AddressError(
                    f"endpoint address {text!r} has a malformed percent-encoding at "
                    f"position {offset + i}"
                )
            raw.append(int(hexpair, 16))
            i += 3
            continue
        if c not in _PATH_CHARS:
            raise AddressError(
                f"endpoint address {text!r} has the character {_show_char(c)} at position "
                f"{offset + i}, which is not allowed in a URI path; percent-encode it"
            )
        raw.extend(c.encode("ascii"))
        i += 1
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AddressError(
            f"endpoint address {text!r} has a percent-encoded path that is not valid UTF-8"
        ) from None
    if "\x00" in decoded:
        raise AddressError(f"endpoint address {text!r} has a NUL byte (%00) in its path")
    return decoded


def _parse_unix(text: str, rest: str) -> UnixAddress:
    offset = len(text) - len(rest)
    _check_no_query_or_fragment(text, rest, offset)
    path = rest
    if rest.startswith("//"):
        end = rest.find("/", 2)
        authority = rest[2:] if end == -1 else rest[2:end]
        if authority:
            what = "userinfo" if "@" in authority else "an authority"
            raise AddressError(
                f"endpoint address {text!r} has {what} ({authority!r}); a unix URI must have "
                f"no authority and an absolute path, as in unix:///path/to/socket (AMB-11)"
            )
        path = "" if end == -1 else rest[end:]
        offset += len(rest) - len(path)
    if not path:
        raise AddressError(
            f"endpoint address {text!r} has no socket path; expected unix:///path/to/socket"
        )
    if not path.startswith("/"):
        raise AddressError(
            f"endpoint address {text!r} has a relative or opaque path ({path!r}); the socket "
            "path must be absolute, as in unix:///path/to/socket"
        )
    decoded = _decode_path(text, path, offset)
    if decoded.endswith("/"):
        raise AddressError(
            f"endpoint address {text!r} names a directory (trailing '/'), not a socket"
        )
    return UnixAddress(decoded)


def _parse_ip(text: str, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if host.startswith("["):
        if not host.endswith("]"):
            raise AddressError(f"endpoint address {text!r} has an unterminated IPv6 literal")
        literal = host[1:-1]
        if "%" in literal:
            raise AddressError(
                f"endpoint address {text!r} has an IPv6 zone identifier, which is not supported"
            )
        try:
            return ipaddress.IPv6Address(literal)
        except ValueError:
            raise AddressError(
                f"endpoint address {text!r} has {host!r} in brackets, which is not an IPv6 address"
            ) from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise AddressError(
            f"endpoint address {text!r} has the host {host!r}, which is not an IP address; "
            "a tcp endpoint needs an IP address (a DNS name is not allowed), as in "
            "tcp://127.0.0.1:8000 or tcp://[::1]:8000"
        ) from None


def _parse_tcp(text: str, rest: str) -> TcpAddress:
    offset = len(text) - len(rest)
    if not rest.startswith("//"):
        raise AddressError(
            f"endpoint address {text!r} must be written tcp://<ip>:<port>, with '//'"
        )
    _check_no_query_or_fragment(text, rest, offset)
    end = rest.find("/", 2)
    if end != -1:
        raise AddressError(
            f"endpoint address {text!r} has a path at position {offset + end}; a tcp URI may "
            "only have an IP address and a port"
        )
    authority = rest[2:]
    if "@" in authority:
        raise AddressError(f"endpoint address {text!r} has userinfo; it is not allowed")
    if authority.startswith("["):
        close = authority.find("]")
        host = authority if close == -1 else authority[: close + 1]
        after = "" if close == -1 else authority[close + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        after = colon + port_text
    ip = _parse_ip(text, host)
    if not after.startswith(":") or len(after) == 1:
        raise AddressError(
            f"endpoint address {text!r} has no port; a tcp endpoint needs one, as in "
            "tcp://127.0.0.1:8000"
        )
    port_text = after[1:]
    if not port_text.isascii() or not port_text.isdigit():
        raise AddressError(f"endpoint address {text!r} has the invalid port {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise AddressError(
            f"endpoint address {text!r} has the port {port}, outside the range 1..65535"
        )
    return TcpAddress(ip, port)


def parse(text: str) -> Address:
    """Parse a Workload API endpoint URI such as ``unix:///run/agent.sock`` (WE-10..WE-12)."""
    if not isinstance(text, str):
        raise AddressError(f"endpoint address must be a string, not {type(text).__name__}")
    if not text:
        raise AddressError(f"endpoint address is empty; expected a URI such as {_EXAMPLE}")
    for i, c in enumerate(text):
        if not c.isascii() or not c.isprintable():
            raise AddressError(
                f"endpoint address {text!r} has the character {_show_char(c)} at position {i}; "
                "a URI holds printable ASCII only (percent-encode anything else)"
            )
    scheme, rest = _split_scheme(text)
    if scheme == "unix":
        return _parse_unix(text, rest)
    if scheme == "tcp":
        return _parse_tcp(text, rest)
    raise AddressError(
        f"endpoint address {text!r} has the scheme {scheme!r}; only 'unix' and 'tcp' are allowed"
    )


def from_env(environ: Mapping[str, str] | None = None) -> Address:
    """Read and parse ``SPIFFE_ENDPOINT_SOCKET`` (WE-09) from ``environ`` or ``os.environ``."""
    env = os.environ if environ is None else environ
    value = env.get(ENDPOINT_SOCKET_ENV)
    if value is None:
        raise AddressError(
            f"{ENDPOINT_SOCKET_ENV} is not set; set it to the Workload API address "
            f"(for example {_EXAMPLE}) or pass the address explicitly"
        )
    try:
        return parse(value)
    except AddressError as err:
        raise AddressError(f"{ENDPOINT_SOCKET_ENV}: {err}") from None


def resolve(
    address: str | Address | None = None, *, environ: Mapping[str, str] | None = None
) -> Address:
    """An explicit address wins; without one, fall back to ``SPIFFE_ENDPOINT_SOCKET`` (WE-09)."""
    if address is None:
        return from_env(environ)
    if isinstance(address, UnixAddress | TcpAddress):
        return address
    return parse(address)
