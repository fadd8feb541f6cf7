"""Cross-check of SPIFFE_ENDPOINT_SOCKET parsing against py-spiffe's ``ConfigSetter``.

py-spiffe 0.3 validates the address with ``urllib.parse.urlparse``. It agrees with us on the
§6.1 vectors except two, where it is lenient and the spec decides for us:

- ``unix:tmp/agent.sock``: WE-11 requires an absolute path; py-spiffe accepts the relative one.
- ``tcp://127.0.0.1``: WE-12 requires a port; py-spiffe does not check for one.
"""

from __future__ import annotations

import pytest
from spiffe.config import ConfigSetter
from spiffe.errors import PySpiffeError

from spiffed.workloadapi import address
from spiffed.workloadapi.address import AddressError
from tests.workloadapi.test_address import ACCEPT_VECTORS, REJECT_VECTORS

pytestmark = pytest.mark.interop

PYSPIFFE_LENIENT = {"unix:tmp/agent.sock": "WE-11", "tcp://127.0.0.1": "WE-12"}


def pyspiffe_accepts(text: str) -> bool:
    try:
        ConfigSetter(text)
    except PySpiffeError:
        return False
    return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """py-spiffe falls back to the environment; keep it out of the comparison."""
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)


@pytest.mark.parametrize("text", [t for t, _ in REJECT_VECTORS if t not in PYSPIFFE_LENIENT])
def test_we_10_11_12_both_reject(text: str) -> None:
    with pytest.raises(AddressError):
        address.parse(text)
    assert not pyspiffe_accepts(text)


@pytest.mark.parametrize(("text", "expected"), ACCEPT_VECTORS)
def test_we_10_11_12_both_accept(text: str, expected: address.Address) -> None:
    assert address.parse(text) == expected
    assert pyspiffe_accepts(text)


@pytest.mark.parametrize(("text", "rule"), sorted(PYSPIFFE_LENIENT.items()))
def test_we_11_12_pyspiffe_lenient_we_reject(text: str, rule: str) -> None:
    """py-spiffe accepts these; ``rule`` makes them invalid, and we reject them."""
    with pytest.raises(AddressError):
        address.parse(text)
    assert pyspiffe_accepts(text)
