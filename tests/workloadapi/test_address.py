"""SPIFFE_ENDPOINT_SOCKET parsing: WE-09..WE-12, the §6.1 vectors, AMB-11 (strict).

Spec pin: spiffe/spiffe standards at commit 665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

import ipaddress
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffed.workloadapi import address
from spiffed.workloadapi.address import AddressError, TcpAddress, UnixAddress

# §6.1 reject column, in order, with what the message must mention.
REJECT_VECTORS: list[tuple[str, str]] = [
    ("", "empty"),
    ("/tmp/agent.sock", "no URI scheme"),
    ("unix:tmp/agent.sock", "relative or opaque"),
    ("unix://tmp/agent.sock", "authority ('tmp')"),
    ("unix://", "no socket path"),
    ("unix:///tmp/a.sock?x=1", "query"),
    ("unix:///tmp/a.sock#f", "fragment"),
    ("unix://u@/tmp/a.sock", "userinfo"),
    ("tcp://localhost:8000", "not an IP address"),
    ("tcp://127.0.0.1", "no port"),
    ("tcp://127.0.0.1:8000/foo", "path"),
    ("tcp://127.0.0.1:8000?x=1", "query"),
    ("tcp://u@127.0.0.1:8000", "userinfo"),
    ("tcp:127.0.0.1:8000", "tcp://<ip>:<port>"),
    ("http://127.0.0.1:8000", "'http'"),
    ("udp://127.0.0.1:8000", "'udp'"),
]

ACCEPT_VECTORS: list[tuple[str, address.Address]] = [
    ("unix:///tmp/agent.sock", UnixAddress("/tmp/agent.sock")),
    ("unix:/tmp/agent.sock", UnixAddress("/tmp/agent.sock")),
    ("tcp://127.0.0.1:8000", TcpAddress(ipaddress.IPv4Address("127.0.0.1"), 8000)),
    ("tcp://[::1]:8000", TcpAddress(ipaddress.IPv6Address("::1"), 8000)),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [pytest.param(t, m, id=f"reject{n}-{t!r}") for n, (t, m) in enumerate(REJECT_VECTORS, 1)],
)
def test_we_10_11_12_rejects_section_6_1_vectors(text: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        address.parse(text)
    assert message in str(info.value)
    if text:
        assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(t, e, id=t) for t, e in ACCEPT_VECTORS]
)
def test_we_10_11_12_accepts_section_6_1_vectors(text: str, expected: address.Address) -> None:
    parsed = address.parse(text)
    assert parsed == expected
    assert address.parse(str(parsed)) == parsed


def test_amb_11_unix_authority_rejected_even_when_go_spiffe_accepts() -> None:
    """AMB-11: `unix://foo/bar` names host 'foo'; go-spiffe takes '/bar', we reject it."""
    for text in ("unix://foo/bar", "unix://localhost/tmp/a.sock", "unix://:0/tmp/a.sock"):
        with pytest.raises(AddressError, match="AMB-11"):
            address.parse(text)


def test_we_11_unix_path_forms() -> None:
    assert address.parse("unix:////tmp/a.sock") == UnixAddress("//tmp/a.sock")
    assert address.parse("unix:///run/spire/sockets/agent.sock").path == (
        "/run/spire/sockets/agent.sock"
    )
    # RFC 3986 percent-encoding is decoded; the canonical string encodes it again.
    spaced = address.parse("unix:///tmp/my%20agent.sock")
    assert spaced == UnixAddress("/tmp/my agent.sock")
    assert str(spaced) == "unix:///tmp/my%20agent.sock"
    assert address.parse("UNIX:///tmp/a.sock") == UnixAddress("/tmp/a.sock")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:///", "directory"),
        ("unix:///tmp/dir/", "directory"),
        ("unix:///tmp/a%zz", "malformed percent-encoding at position 13"),
        ("unix:///tmp/a%0", "malformed percent-encoding"),
        ("unix:///tmp/a%00b", "NUL"),
        ("unix:///tmp/a%ff", "not valid UTF-8"),
        ("unix:///tmp/a b.sock", "' ' at position 13"),
        ("unix:///tmp/\u00fc.sock", "U+00FC at position 12"),
        ("unix:///tmp/a.sock\n", "U+000A at position 18"),
        (" unix:///tmp/a.sock", "no valid URI scheme"),
        ("unix:", "no socket path"),
        ("unix:?x", "query"),
        ("1unix:///tmp/a.sock", "no valid URI scheme"),
        (":///tmp/a.sock", "no URI scheme"),
    ],
)
def test_we_11_unix_bad_paths_rejected(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=re.escape(message)):
        address.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp://example.org:8000", "not an IP address"),
        ("tcp://127.1:8000", "not an IP address"),
        ("tcp://0127.0.0.1:8000", "not an IP address"),
        ("tcp://::1:8000", "not an IP address"),
        ("tcp://[::1]", "no port"),
        ("tcp://[::1]:", "no port"),
        ("tcp://127.0.0.1:", "no port"),
        ("tcp://[::1:8000", "unterminated"),
        ("tcp://[127.0.0.1]:8000", "not an IPv6"),
        ("tcp://[fe80::1%25eth0]:8000", "zone"),
        ("tcp://127.0.0.1:0", "outside the range"),
        ("tcp://127.0.0.1:65536", "outside the range"),
        ("tcp://127.0.0.1:-1", "invalid port"),
        ("tcp://127.0.0.1:80a", "invalid port"),
        ("tcp://127.0.0.1:8000/", "path at position 20"),
        ("tcp://127.0.0.1:8000#f", "fragment at position 20"),
        ("tcp://", "not an IP address"),
        ("tcp:", "tcp://<ip>:<port>"),
    ],
)
def test_we_12_tcp_bad_addresses_rejected(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=re.escape(message)):
        address.parse(text)


def test_we_12_tcp_accepts_ipv6_forms() -> None:
    parsed = address.parse("tcp://[0:0:0:0:0:0:0:1]:65535")
    assert parsed == TcpAddress(ipaddress.IPv6Address("::1"), 65535)
    assert str(parsed) == "tcp://[::1]:65535"
    assert str(address.parse("tcp://10.0.0.1:1")) == "tcp://10.0.0.1:1"


def test_value_objects_validate_themselves() -> None:
    with pytest.raises(AddressError, match="absolute"):
        UnixAddress("tmp/a.sock")
    with pytest.raises(AddressError, match="NUL"):
        UnixAddress("/tmp/a\x00")
    with pytest.raises(AddressError, match="range"):
        TcpAddress(ipaddress.IPv4Address("127.0.0.1"), 0)
    with pytest.raises(AddressError, match="integer"):
        TcpAddress(ipaddress.IPv4Address("127.0.0.1"), True)
    with pytest.raises(AddressError, match="IP address object"):
        TcpAddress("127.0.0.1", 80)  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="zone"):
        TcpAddress(ipaddress.IPv6Address("fe80::1%eth0"), 80)
    with pytest.raises(AttributeError):
        UnixAddress("/a").path = "/b"  # type: ignore[misc]
    with pytest.raises(AddressError, match="bytes"):
        address.parse(b"unix:///a")  # type: ignore[arg-type]


def test_we_09_from_env_reads_spiffe_endpoint_socket() -> None:
    env = {"SPIFFE_ENDPOINT_SOCKET": "unix:///run/agent.sock"}
    assert address.from_env(env) == UnixAddress("/run/agent.sock")


def test_we_09_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:8081")
    assert address.from_env() == TcpAddress(ipaddress.IPv4Address("127.0.0.1"), 8081)
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET")
    with pytest.raises(AddressError, match="SPIFFE_ENDPOINT_SOCKET is not set"):
        address.from_env()


def test_we_09_from_env_unset_empty_and_invalid() -> None:
    with pytest.raises(AddressError, match="SPIFFE_ENDPOINT_SOCKET is not set"):
        address.from_env({})
    with pytest.raises(AddressError, match="SPIFFE_ENDPOINT_SOCKET: endpoint address is empty"):
        address.from_env({"SPIFFE_ENDPOINT_SOCKET": ""})
    with pytest.raises(AddressError, match=r"SPIFFE_ENDPOINT_SOCKET: .*'tmp'"):
        address.from_env({"SPIFFE_ENDPOINT_SOCKET": "unix://tmp/agent.sock"})


def test_we_09_explicit_address_wins_over_env() -> None:
    env = {"SPIFFE_ENDPOINT_SOCKET": "unix:///from/env.sock"}
    assert address.resolve("unix:///explicit.sock", environ=env) == UnixAddress("/explicit.sock")
    given_obj = UnixAddress("/obj.sock")
    assert address.resolve(given_obj, environ=env) is given_obj
    assert address.resolve(None, environ=env) == UnixAddress("/from/env.sock")
    with pytest.raises(AddressError, match="not set"):
        address.resolve(environ={})


@given(st.text())
def test_we_10_any_text_raises_only_address_error(text: str) -> None:
    for candidate in (text, "unix://" + text, "unix:///" + text, "tcp://" + text):
        try:
            parsed = address.parse(candidate)
        except AddressError:
            continue
        assert address.parse(str(parsed)) == parsed


@given(
    st.lists(
        st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@ %\u00e9", min_size=1),
        min_size=1,
        max_size=6,
    )
)
def test_we_11_unix_paths_round_trip(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    unix = UnixAddress(path)
    assert address.parse(str(unix)) == unix


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_we_12_tcp_addresses_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    tcp = TcpAddress(ip, port)
    assert address.parse(str(tcp)) == tcp
