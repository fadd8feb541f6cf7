"""Bundle sets (trust domain -> SPIFFE bundle) and the SPIFFE Bundle Map (BM-01..BM-07).

A :class:`BundleSet` keeps each trust domain's bundle apart: looking up trust domain A never
returns keys of trust domain B (FED-07). The bundle map is the JSON document
``{"trust_domains": {"<name>": <SPIFFE bundle>, ...}}`` of SPIFFE_Trust_Domain_and_Bundle §5.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spiffed.bundle import _json
from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwt import JwtBundle
from spiffed.bundle.spiffe import SpiffeBundle
from spiffed.bundle.x509 import X509Bundle
from spiffed.spiffeid import SpiffeIdError, TrustDomain

__all__ = ["BundleSet", "marshal_bundle_map", "parse_bundle_map"]


@dataclass(frozen=True, slots=True)
class BundleSet(Mapping[TrustDomain, SpiffeBundle]):
    """An immutable mapping trust domain -> :class:`SpiffeBundle`; an X.509 and JWT source."""

    bundles: Mapping[TrustDomain, SpiffeBundle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked: dict[TrustDomain, SpiffeBundle] = {}
        for td, bundle in self.bundles.items():
            if not isinstance(bundle, SpiffeBundle):
                raise BundleError(
                    f"bundle set: value for {td} must be a SpiffeBundle, not "
                    f"{type(bundle).__name__}"
                )
            if bundle.trust_domain != td:
                raise BundleError(
                    f"bundle set: the bundle of {bundle.trust_domain} cannot be stored under "
                    f"{td} (FED-07)"
                )
            checked[td] = bundle
        object.__setattr__(self, "bundles", MappingProxyType(checked))

    @classmethod
    def of(cls, *bundles: SpiffeBundle) -> BundleSet:
        """A set of ``bundles``; two bundles of one trust domain are an error."""
        by_td: dict[TrustDomain, SpiffeBundle] = {}
        for bundle in bundles:
            if bundle.trust_domain in by_td:
                raise BundleError(f"bundle set: two bundles for trust domain {bundle.trust_domain}")
            by_td[bundle.trust_domain] = bundle
        return cls(by_td)

    @classmethod
    def parse_bundle_map(cls, data: bytes) -> BundleSet:
        """A set holding every bundle of a SPIFFE bundle map document."""
        return cls(parse_bundle_map(data))

    def marshal_bundle_map(self) -> bytes:
        """This set as a SPIFFE bundle map document (refresh hints left out, BM-05)."""
        return marshal_bundle_map(self.bundles)

    def with_bundle(self, bundle: SpiffeBundle) -> BundleSet:
        """A copy with ``bundle`` added or replacing the one of its trust domain."""
        return BundleSet({**self.bundles, bundle.trust_domain: bundle})

    def without(self, trust_domain: TrustDomain) -> BundleSet:
        """A copy without the bundle of ``trust_domain``."""
        return BundleSet({td: b for td, b in self.bundles.items() if td != trust_domain})

    def __getitem__(self, trust_domain: TrustDomain) -> SpiffeBundle:
        return self.bundles[trust_domain]

    def __iter__(self) -> Iterator[TrustDomain]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BundleSet):
            return NotImplemented
        return dict(self.bundles) == dict(other.bundles)

    def __hash__(self) -> int:
        return hash(frozenset(self.bundles.items()))

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle of exactly ``trust_domain``, or None (no bundle, or no authorities)."""
        bundle = self.bundles.get(trust_domain)
        return None if bundle is None else bundle.get_x509_bundle_for_trust_domain(trust_domain)

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle of exactly ``trust_domain``, or None (no bundle, or no authorities)."""
        bundle = self.bundles.get(trust_domain)
        return None if bundle is None else bundle.get_jwt_bundle_for_trust_domain(trust_domain)


def parse_bundle_map(data: bytes) -> dict[TrustDomain, SpiffeBundle]:
    """Parse a SPIFFE bundle map; the whole map or nothing (BM-07).

    Rejected: invalid JSON, duplicate members anywhere (BM-04), a missing or non-object
    ``trust_domains`` (BM-01), keys that are not bare trust domain names (BM-02: not
    ``Example.org``, not ``spiffe://example.org``) and any malformed bundle. Refresh hints
    inside the map are validated and then dropped: they never set how often the map is
    refreshed (BM-06). Each bundle keeps its own ``spiffe_sequence`` (BM-07).
    """
    what = "SPIFFE bundle map"
    obj = _json.loads(data, what=what)
    if not isinstance(obj, dict):
        raise BundleError(f"{what}: must be a JSON object, not {_json.type_name(obj)}")
    if "trust_domains" not in obj:
        raise BundleError(f"{what}: member 'trust_domains' is required (BM-01)")
    tds = obj["trust_domains"]
    if not isinstance(tds, dict):
        raise BundleError(f"{what}: 'trust_domains' must be an object, not {_json.type_name(tds)}")
    result: dict[TrustDomain, SpiffeBundle] = {}
    for name, doc in tds.items():
        try:
            td = TrustDomain(name)
        except SpiffeIdError as exc:
            raise BundleError(
                f"{what}: key {name!r} is not a trust domain name (BM-02): {exc}"
            ) from None
        bundle = SpiffeBundle.from_json_object(td, doc)
        result[td] = SpiffeBundle(
            td, bundle.x509_authorities, bundle.jwt_authorities, bundle.sequence, None
        )
    return result


def marshal_bundle_map(
    bundles: Mapping[TrustDomain, SpiffeBundle] | Iterable[SpiffeBundle],
    *,
    indent: int | None = None,
) -> bytes:
    """A SPIFFE bundle map of ``bundles``, keys sorted, refresh hints left out (BM-05).

    Each key must be the trust domain of its bundle, and each trust domain appears once
    (BM-03).
    """
    items: list[tuple[TrustDomain, SpiffeBundle]]
    if isinstance(bundles, Mapping):
        items = list(bundles.items())
    else:
        items = [(b.trust_domain, b) for b in bundles]
    out: dict[str, Any] = {}
    for td, bundle in sorted(items, key=lambda item: item[0].name):
        if bundle.trust_domain != td:
            raise BundleError(
                f"bundle map: the bundle of {bundle.trust_domain} cannot be written under {td}"
            )
        if td.name in out:
            raise BundleError(f"bundle map: trust domain {td} appears twice (BM-03)")
        out[td.name] = bundle.to_json_object(include_refresh_hint=False)
    return _json.dumps({"trust_domains": out}, indent=indent)
