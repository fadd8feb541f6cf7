"""Key managers: memory keeps keys for the process, disk keeps them across restarts."""

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffed.keys import KeyType, UnsupportedKeyError, load_private_key_der
from spiffed.server.keymanager import KeyManagerError, create_key_manager
from spiffed.server.keymanager.disk import DiskKeyManager
from spiffed.server.keymanager.memory import MemoryKeyManager


@pytest.mark.parametrize(
    ("name", "cls", "size"),
    [
        ("ec-p256", ec.EllipticCurvePrivateKey, 256),
        ("ec-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-2048", rsa.RSAPrivateKey, 2048),
    ],
)
def test_key_types_generate_what_they_name(name: str, cls: type, size: int) -> None:
    key = KeyType.parse(name).generate()
    assert isinstance(key, cls)
    assert key.key_size == size
    assert KeyType.of(key) is KeyType.parse(name)
    assert KeyType.of(key.public_key()) is KeyType.parse(name)


def test_unknown_key_type_is_named_in_the_error() -> None:
    with pytest.raises(UnsupportedKeyError, match=r"unknown key type 'ec-p999'.*ec-p256"):
        KeyType.parse("ec-p999")


def test_load_private_key_rejects_garbage() -> None:
    with pytest.raises(UnsupportedKeyError, match="cannot load PKCS#8"):
        load_private_key_der(b"\x30\x03\x02\x01\x00")


async def test_memory_key_manager_generates_and_replaces() -> None:
    km = MemoryKeyManager()
    assert await km.get_key("x509-CA-A") is None
    first = await km.generate_key("x509-CA-A", KeyType.EC_P256)
    assert await km.get_key("x509-CA-A") is first
    second = await km.generate_key("x509-CA-A", KeyType.EC_P384)
    assert await km.get_key("x509-CA-A") is second
    assert KeyType.of(second) is KeyType.EC_P384


async def test_disk_key_manager_survives_restart_with_private_file(tmp_path) -> None:
    path = tmp_path / "state" / "keys.json"
    km = DiskKeyManager(path)
    a = await km.generate_key("x509-CA-A", KeyType.EC_P256)
    j = await km.generate_key("JWT-Signer-A", KeyType.RSA_2048)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = DiskKeyManager(path)
    got_a = await again.get_key("x509-CA-A")
    got_j = await again.get_key("JWT-Signer-A")
    assert got_a is not None and got_j is not None
    assert got_a.private_numbers() == a.private_numbers()
    assert got_j.private_numbers() == j.private_numbers()
    assert sorted(os.listdir(path.parent)) == ["keys.json"], "no temporary files left behind"


async def test_disk_key_manager_refuses_corrupt_file_and_keeps_it(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"version": 1, "keys": {"x509-CA-A": "not base64!"}}))
    with pytest.raises(KeyManagerError, match=r"keys\.json is corrupt"):
        DiskKeyManager(path)
    path.write_text("[1, 2]")
    with pytest.raises(KeyManagerError, match="not a version 1 spiffed keys file"):
        DiskKeyManager(path)
    assert path.read_text() == "[1, 2]", "a bad file is reported, never overwritten"


async def test_disk_key_manager_write_failure_keeps_previous_key(tmp_path) -> None:
    path = tmp_path / "keys.json"
    km = DiskKeyManager(path)
    old = await km.generate_key("x509-CA-A", KeyType.EC_P256)
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores directory permissions
            path.unlink()
            path.mkdir()  # os.replace onto a directory fails for root too
        with pytest.raises(KeyManagerError, match="cannot write keys file"):
            await km.generate_key("x509-CA-A", KeyType.EC_P256)
    finally:
        os.chmod(tmp_path, 0o700)
    assert await km.get_key("x509-CA-A") is old


def test_create_key_manager_by_config_name(tmp_path) -> None:
    assert isinstance(create_key_manager("memory", {}), MemoryKeyManager)
    disk = create_key_manager("disk", {"keys_path": str(tmp_path / "k.json")})
    assert isinstance(disk, DiskKeyManager)
    with pytest.raises(KeyManagerError, match='KeyManager "disk" needs keys_path'):
        create_key_manager("disk", {})
    with pytest.raises(KeyManagerError, match="unknown KeyManager 'awskms'"):
        create_key_manager("awskms", {})
