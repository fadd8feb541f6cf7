"""UpstreamAuthority "disk": the server CA as an intermediate under an operator's CA."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.server.ca.manager import CaManager, CaSettings, MemoryCaStore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.upstreamauthority import UpstreamAuthorityError
from spiffed.server.upstreamauthority.disk import DiskUpstreamAuthority
from spiffed.spiffeid import SpiffeId, TrustDomain
from tests.server.nodeattestor.pki import Issued, make_cert

TD = TrustDomain("example.org")


def write(path: Path, *certs: Issued, key: Issued | None = None) -> str:
    if key is not None:
        path.write_bytes(
            key.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


async def mint_and_verify(upstream: DiskUpstreamAuthority, tmp_path: Path) -> None:
    ca = CaManager(
        CaSettings(trust_domain=TD),
        MemoryKeyManager(),
        MemoryCaStore("example.org"),
        upstream=upstream,
    )
    await ca.start()
    chain = ca.sign_x509_svid(
        SpiffeId.parse("spiffe://example.org/w"),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
    )
    assert len(chain) >= 2, "the leaf carries the server's intermediate"
    pem = lambda certs: b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)  # noqa: E731
    (tmp_path / "leaf.pem").write_bytes(pem(chain[:1]))
    (tmp_path / "untrusted.pem").write_bytes(pem(chain[1:]))
    (tmp_path / "roots.pem").write_bytes(pem(upstream.roots()))
    result = subprocess.run(
        [
            "openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"),
            "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


async def test_self_signed_upstream_root(tmp_path: Path) -> None:
    root = make_cert("upstream", ca=True)
    upstream = DiskUpstreamAuthority(
        write(tmp_path / "ca.pem", root), write(tmp_path / "ca.key", key=root)
    )
    assert upstream.roots() == [root.cert]
    await mint_and_verify(upstream, tmp_path)


async def test_upstream_intermediate_with_bundle(tmp_path: Path) -> None:
    root = make_cert("corp root", ca=True)
    inter = make_cert("corp issuing", issuer=root, ca=True)
    upstream = DiskUpstreamAuthority(
        write(tmp_path / "ca.pem", inter),
        write(tmp_path / "ca.key", key=inter),
        write(tmp_path / "bundle.pem", root),
    )
    await mint_and_verify(upstream, tmp_path)


def test_bad_upstream_configurations_are_named(tmp_path: Path) -> None:
    root = make_cert("root", ca=True)
    inter = make_cert("inter", issuer=root, ca=True)
    stranger = make_cert("stranger", ca=True)
    with pytest.raises(UpstreamAuthorityError, match="only self-signed CAs are supported"):
        DiskUpstreamAuthority(
            write(tmp_path / "two.pem", inter, root), write(tmp_path / "i.key", key=inter)
        )
    with pytest.raises(UpstreamAuthorityError, match="certificate and private key do not match"):
        DiskUpstreamAuthority(
            write(tmp_path / "r.pem", root), write(tmp_path / "s.key", key=stranger)
        )
    with pytest.raises(
        UpstreamAuthorityError, match="cannot be validated with the provided bundle"
    ):
        DiskUpstreamAuthority(
            write(tmp_path / "i.pem", inter),
            write(tmp_path / "i2.key", key=inter),
            write(tmp_path / "b.pem", stranger),
        )
    with pytest.raises(UpstreamAuthorityError, match="unable to load upstream CA key"):
        DiskUpstreamAuthority(write(tmp_path / "r2.pem", root), str(tmp_path / "missing.key"))
    with pytest.raises(UpstreamAuthorityError, match="cert_file_path is required"):
        DiskUpstreamAuthority.from_config({"key_file_path": "x"})


def test_unreadable_files_later_keep_the_last_good_ca(tmp_path: Path) -> None:
    root = make_cert("root", ca=True)
    upstream = DiskUpstreamAuthority(
        write(tmp_path / "ca.pem", root), write(tmp_path / "ca.key", key=root)
    )
    (tmp_path / "ca.pem").unlink()
    cert, _chain = upstream.mint_x509_ca(
        TD,
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        dt.timedelta(hours=1),
        dt.datetime.now(dt.UTC),
    )
    assert cert.issuer == root.cert.subject
