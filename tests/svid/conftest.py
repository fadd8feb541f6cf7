"""A small test PKI: root and intermediate CAs per trust domain, and leaves with any layout.

Generic on purpose (the JWT tests share this folder): nothing here encodes a SPIFFE rule;
the builders take extensions as data so that a test can make a certificate break any rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spiffed.keys import PrivateKey

Ext = tuple[x509.ExtensionType, bool]  # (value, critical)

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)


def new_key() -> PrivateKey:
    """A fresh EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(**flags: bool) -> x509.KeyUsage:
    """A keyUsage value with the named flags set (``digital_signature=True`` ...)."""
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    unknown = set(flags) - set(names)
    assert not unknown, unknown
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def build_cert(
    *,
    subject_key: PrivateKey,
    issuer: Authority | None,
    subject: x509.Name,
    extensions: Iterable[Ext],
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + HOUR,
    serial: int | None = None,
) -> x509.Certificate:
    """Sign a certificate with exactly ``extensions``; ``issuer=None`` makes it self-signed."""
    issuer_name = subject if issuer is None else issuer.cert.subject
    signing_key = subject_key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def name(cn: str) -> x509.Name:
    """``CN=<cn>``."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_extensions(
    uri: str | None, key: PrivateKey, issuer: Authority | None, path_len: int | None = None
) -> dict[type[x509.ExtensionType], Ext]:
    """A conventional CA extension set, keyed by extension class so tests can replace entries."""
    exts: dict[type[x509.ExtensionType], Ext] = {
        x509.BasicConstraints: (x509.BasicConstraints(ca=True, path_length=path_len), True),
        x509.KeyUsage: (key_usage(key_cert_sign=True, crl_sign=True), True),
        x509.SubjectKeyIdentifier: (
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            False,
        ),
    }
    if issuer is not None:
        exts[x509.AuthorityKeyIdentifier] = (
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            False,
        )
    if uri is not None:
        exts[x509.SubjectAlternativeName] = (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
            False,
        )
    return exts


def leaf_extensions(
    key: PrivateKey, issuer: Authority, uris: Iterable[str], dns: Iterable[str] = ()
) -> dict[type[x509.ExtensionType], Ext]:
    """A conventional end-entity extension set (URI and DNS SANs, clientAuth+serverAuth)."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    exts: dict[type[x509.ExtensionType], Ext] = {
        x509.BasicConstraints: (x509.BasicConstraints(ca=False, path_length=None), True),
        x509.KeyUsage: (key_usage(digital_signature=True, key_encipherment=True), True),
        x509.ExtendedKeyUsage: (
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        ),
        x509.SubjectKeyIdentifier: (
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            False,
        ),
        x509.AuthorityKeyIdentifier: (
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            False,
        ),
    }
    if sans:
        exts[x509.SubjectAlternativeName] = (x509.SubjectAlternativeName(sans), False)
    return exts


def _apply(
    exts: dict[type[x509.ExtensionType], Ext],
    replace: Mapping[type[x509.ExtensionType], Ext | None] | None,
    extra: Iterable[Ext],
) -> list[Ext]:
    for kind, value in (replace or {}).items():
        if value is None:
            exts.pop(kind, None)
        else:
            exts[kind] = value
    return [*exts.values(), *extra]


@dataclass
class Authority:
    """A CA certificate with its key."""

    cert: x509.Certificate
    key: PrivateKey
    parents: list[x509.Certificate] = field(default_factory=list)  # intermediates above, no root

    def issue_ca(
        self,
        uri: str | None,
        *,
        cn: str = "intermediate",
        path_len: int | None = None,
        replace: Mapping[type[x509.ExtensionType], Ext | None] | None = None,
        extra: Iterable[Ext] = (),
        not_before: datetime = NOW - HOUR,
        not_after: datetime = NOW + HOUR,
    ) -> Authority:
        """An intermediate CA under this one, with a conventional or altered extension set."""
        key = new_key()
        exts = _apply(ca_extensions(uri, key, self, path_len), replace, extra)
        cert = build_cert(
            subject_key=key,
            issuer=self,
            subject=name(cn),
            extensions=exts,
            not_before=not_before,
            not_after=not_after,
        )
        return Authority(cert, key, self.intermediates)

    def issue_leaf(
        self,
        uris: Iterable[str],
        *,
        dns: Iterable[str] = (),
        subject: x509.Name | None = None,
        replace: Mapping[type[x509.ExtensionType], Ext | None] | None = None,
        extra: Iterable[Ext] = (),
        not_before: datetime = NOW - HOUR,
        not_after: datetime = NOW + HOUR,
        key: PrivateKey | None = None,
    ) -> Leaf:
        """A leaf under this CA; ``replace`` maps an extension class to a new value or None."""
        key = key or new_key()
        exts = _apply(leaf_extensions(key, self, uris, dns), replace, extra)
        cert = build_cert(
            subject_key=key,
            issuer=self,
            subject=name("leaf") if subject is None else subject,
            extensions=exts,
            not_before=not_before,
            not_after=not_after,
        )
        return Leaf(cert, key, [cert, *self.intermediates])

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """The certificates a leaf of this CA presents after itself (this CA unless a root)."""
        if self.cert.issuer == self.cert.subject:
            return []
        return [self.cert, *self.parents]


@dataclass
class Leaf:
    """An end-entity certificate, its key and the chain it presents (leaf first)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate]


def make_root(
    uri: str | None,
    *,
    cn: str = "root",
    path_len: int | None = None,
    replace: Mapping[type[x509.ExtensionType], Ext | None] | None = None,
    extra: Iterable[Ext] = (),
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + 24 * HOUR,
) -> Authority:
    """A self-signed root CA (URI SAN ``uri`` unless None)."""
    key = new_key()
    exts = _apply(ca_extensions(uri, key, None, path_len), replace, extra)
    cert = build_cert(
        subject_key=key,
        issuer=None,
        subject=name(cn),
        extensions=exts,
        not_before=not_before,
        not_after=not_after,
    )
    return Authority(cert, key)


@pytest.fixture(scope="session")
def root_a() -> Authority:
    """Root CA of trust domain ``td-a.test``."""
    return make_root("spiffe://td-a.test", cn="root td-a")


@pytest.fixture(scope="session")
def root_b() -> Authority:
    """Root CA of trust domain ``td-b.test``."""
    return make_root("spiffe://td-b.test", cn="root td-b")


@pytest.fixture(scope="session")
def inter_a(root_a: Authority) -> Authority:
    """An intermediate CA of ``td-a.test`` under ``root_a``."""
    return root_a.issue_ca("spiffe://td-a.test", cn="inter td-a")
