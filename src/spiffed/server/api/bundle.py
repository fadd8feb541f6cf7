"""``spire.api.server.bundle.v1.Bundle``: the trust domain's bundle and federated bundles.

Bundles are stored as serialized ``spire.api.types.Bundle`` messages. PublishJWTAuthority and
PublishWITAuthority (downstream servers) answer UNIMPLEMENTED for now.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
from spiffed._proto.spire.api.types import bundle_pb2 as types_bundle
from spiffed.server import datastore as ds
from spiffed.server.api._bundlestore import load_bundle
from spiffed.server.api.convert import (
    apply_mask,
    error_status,
    ok_status,
    rpc,
    status_of,
)
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeIdError, TrustDomain

__all__ = ["BundleService", "validate_bundle"]

_DELETE_MODES = {
    bundle_pb2.BatchDeleteFederatedBundleRequest.RESTRICT: ds.BundleDeleteMode.RESTRICT,
    bundle_pb2.BatchDeleteFederatedBundleRequest.DISSOCIATE: ds.BundleDeleteMode.DISSOCIATE,
    bundle_pb2.BatchDeleteFederatedBundleRequest.DELETE: ds.BundleDeleteMode.DELETE,
}

_REPEATED = frozenset({"x509_authorities", "jwt_authorities", "wit_authorities"})


def _trust_domain(name: str) -> TrustDomain:
    try:
        return TrustDomain.parse(name)
    except SpiffeIdError as exc:
        raise ServerError(
            Status.INVALID_ARGUMENT, f"trust domain argument is not valid: {exc}"
        ) from None


def _check_x509(items: Any, prefix: str = "failed to convert bundle") -> None:
    for cert in items:
        try:
            x509.load_der_x509_certificate(cert.asn1)
        except ValueError as exc:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"{prefix}: unable to parse X.509 authority: {exc}"
            ) from None


def _check_jwt(items: Any, prefix: str = "failed to convert bundle") -> None:
    for key in items:
        if not key.key_id:
            raise ServerError(Status.INVALID_ARGUMENT, f"{prefix}: missing key ID")
        try:
            load_der_public_key(key.public_key)
        except ValueError as exc:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f'{prefix}: failed to parse JWT authority "{key.key_id}": {exc}',
            ) from None


def validate_bundle(msg: types_bundle.Bundle) -> types_bundle.Bundle:
    """A copy of ``msg`` with a normalized trust domain name, after checking every X.509
    authority parses as a certificate and every JWT authority as a public key with an ID."""
    td = _trust_domain(msg.trust_domain)
    _check_x509(msg.x509_authorities)
    _check_jwt(msg.jwt_authorities)
    out = types_bundle.Bundle()
    out.CopyFrom(msg)
    out.trust_domain = td.name
    return out


def _mask(req: Any) -> types_bundle.BundleMask | None:
    return req.output_mask if req.HasField("output_mask") else None


def _out(msg: types_bundle.Bundle, mask: types_bundle.BundleMask | None) -> types_bundle.Bundle:
    out = types_bundle.Bundle()
    out.CopyFrom(msg)
    apply_mask(out, mask, keep=("trust_domain",))
    return out


class BundleService(bundle_grpc.BundleBase):
    """The bundle service over the datastore."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    @property
    def _ds(self) -> Any:
        return self._ctx.datastore

    @property
    def _td(self) -> str:
        return self._ctx.trust_domain.name

    async def _own(self) -> types_bundle.Bundle:
        bundle = await load_bundle(self._ds, self._td)
        if bundle is None:
            raise ServerError(Status.NOT_FOUND, "bundle not found")
        return bundle

    @rpc
    async def GetBundle(self, stream: Stream[Any, Any]) -> None:
        """The trust domain's own bundle."""
        req = await stream.recv_message()
        assert req is not None
        await stream.send_message(_out(await self._own(), _mask(req)))

    @rpc
    async def AppendBundle(self, stream: Stream[Any, Any]) -> None:
        """Add X.509 and JWT authorities to the own bundle (those present stay as they are)."""
        req = await stream.recv_message()
        assert req is not None
        if not req.x509_authorities and not req.jwt_authorities:
            raise ServerError(Status.INVALID_ARGUMENT, "no authorities to append")
        _check_jwt(req.jwt_authorities, "failed to convert JWT authority")
        _check_x509(req.x509_authorities, "failed to convert X.509 authority")
        bundle = await self._own()
        present = {a.asn1 for a in bundle.x509_authorities}
        kids = {k.key_id for k in bundle.jwt_authorities}
        changed = False
        for cert in req.x509_authorities:
            if cert.asn1 not in present:
                bundle.x509_authorities.add(asn1=cert.asn1)
                present.add(cert.asn1)
                changed = True
        for key in req.jwt_authorities:
            if key.key_id not in kids:
                bundle.jwt_authorities.add().CopyFrom(key)
                kids.add(key.key_id)
                changed = True
        if changed:
            bundle.sequence_number += 1
            await self._ds.set_bundle(ds.Bundle(self._td, bundle.SerializeToString()))
        await stream.send_message(_out(bundle, _mask(req)))

    async def PublishJWTAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "PublishJWTAuthority is not implemented: downstream servers are not supported yet",
        )

    async def PublishWITAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "WIT-SVID functionality is not yet implemented",
        )

    @rpc
    async def CountBundles(self, stream: Stream[Any, Any]) -> None:
        """How many bundles are stored, the own one included (as SPIRE)."""
        await stream.recv_message()
        await stream.send_message(
            bundle_pb2.CountBundlesResponse(count=await self._ds.count_bundles())
        )

    @rpc
    async def ListFederatedBundles(self, stream: Stream[Any, Any]) -> None:
        """One page of the federated bundles (the own bundle is left out)."""
        req = await stream.recv_message()
        assert req is not None
        if req.page_size < 0:
            raise ServerError(Status.INVALID_ARGUMENT, "page size cannot be negative")
        try:
            page = await self._ds.list_bundles(page_size=req.page_size, page_token=req.page_token)
        except ds.InvalidArgumentError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"failed to list bundles: {exc}") from None
        out = []
        for stored in page.items:
            if stored.trust_domain == self._td:
                continue
            msg = types_bundle.Bundle()
            msg.ParseFromString(stored.data)
            out.append(_out(msg, _mask(req)))
        await stream.send_message(
            bundle_pb2.ListFederatedBundlesResponse(bundles=out, next_page_token=page.next_token)
        )

    @rpc
    async def GetFederatedBundle(self, stream: Stream[Any, Any]) -> None:
        """The bundle of a foreign trust domain, for admins, local callers and agents.

        As in SPIRE, an agent may read any federated bundle the server holds, not only those
        of trust domains its entries federate with (bundles are public trust anchors). The
        name may be a trust domain name or a SPIFFE ID of it.
        """
        req = await stream.recv_message()
        assert req is not None
        td = _trust_domain(req.trust_domain)
        if td.name == self._td:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                "getting a federated bundle for the server's own trust domain is not allowed",
            )
        try:
            bundle = await load_bundle(self._ds, td.name)
        except Exception as exc:
            raise ServerError(Status.INTERNAL, f"failed to fetch bundle: {exc}") from None
        if bundle is None:
            raise ServerError(Status.NOT_FOUND, "bundle not found")
        await stream.send_message(_out(bundle, _mask(req)))

    def _checked(self, msg: types_bundle.Bundle, verb: str) -> types_bundle.Bundle:
        if _trust_domain(msg.trust_domain).name == self._td:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f"{verb} a federated bundle for the server's own trust domain is not allowed",
            )
        return validate_bundle(msg)

    @rpc
    async def BatchCreateFederatedBundle(self, stream: Stream[Any, Any]) -> None:
        """Create each federated bundle; ALREADY_EXISTS when the trust domain has one."""
        req = await stream.recv_message()
        assert req is not None
        R = bundle_pb2.BatchCreateFederatedBundleResponse.Result
        results = []
        for msg in req.bundle:
            try:
                bundle = self._checked(msg, "creating")
                await self._ds.create_bundle(
                    ds.Bundle(bundle.trust_domain, bundle.SerializeToString())
                )
            except ds.AlreadyExistsError:
                results.append(
                    R(status=error_status(Status.ALREADY_EXISTS, "bundle already exists"))
                )
                continue
            except Exception as exc:
                results.append(R(status=status_of(exc)))
                continue
            results.append(R(status=ok_status(), bundle=_out(bundle, _mask(req))))
        await stream.send_message(bundle_pb2.BatchCreateFederatedBundleResponse(results=results))

    @rpc
    async def BatchUpdateFederatedBundle(self, stream: Stream[Any, Any]) -> None:
        """Replace the fields named by ``input_mask`` (all when absent) of existing bundles."""
        req = await stream.recv_message()
        assert req is not None
        R = bundle_pb2.BatchUpdateFederatedBundleResponse.Result
        results = []
        for msg in req.bundle:
            try:
                new = self._checked(msg, "updating")
                old = await load_bundle(self._ds, new.trust_domain)
                if old is None:
                    raise ServerError(Status.NOT_FOUND, "bundle not found")
                if req.HasField("input_mask"):
                    for fd in req.input_mask.DESCRIPTOR.fields:
                        if getattr(req.input_mask, fd.name):
                            old.ClearField(fd.name)
                            if fd.name in _REPEATED:
                                getattr(old, fd.name).extend(getattr(new, fd.name))
                            else:
                                setattr(old, fd.name, getattr(new, fd.name))
                    new = old
                await self._ds.update_bundle(ds.Bundle(new.trust_domain, new.SerializeToString()))
            except Exception as exc:
                results.append(R(status=status_of(exc, not_found="bundle not found")))
                continue
            results.append(R(status=ok_status(), bundle=_out(new, _mask(req))))
        await stream.send_message(bundle_pb2.BatchUpdateFederatedBundleResponse(results=results))

    @rpc
    async def BatchSetFederatedBundle(self, stream: Stream[Any, Any]) -> None:
        """Create or replace each federated bundle."""
        req = await stream.recv_message()
        assert req is not None
        R = bundle_pb2.BatchSetFederatedBundleResponse.Result
        results = []
        for msg in req.bundle:
            try:
                bundle = self._checked(msg, "setting")
                await self._ds.set_bundle(
                    ds.Bundle(bundle.trust_domain, bundle.SerializeToString())
                )
            except Exception as exc:
                results.append(R(status=status_of(exc)))
                continue
            results.append(R(status=ok_status(), bundle=_out(bundle, _mask(req))))
        await stream.send_message(bundle_pb2.BatchSetFederatedBundleResponse(results=results))

    @rpc
    async def BatchDeleteFederatedBundle(self, stream: Stream[Any, Any]) -> None:
        """Delete federated bundles; entries federating with them as ``mode`` says."""
        req = await stream.recv_message()
        assert req is not None
        if req.mode not in _DELETE_MODES:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f'failed to parse deletion mode: unhandled delete mode "{req.mode}"',
            )
        mode = _DELETE_MODES[req.mode]
        R = bundle_pb2.BatchDeleteFederatedBundleResponse.Result
        results = []
        for name in req.trust_domains:
            try:
                td = _trust_domain(name)
                if td.name == self._td:
                    raise ServerError(
                        Status.INVALID_ARGUMENT,
                        "removing the bundle for the server trust domain is not allowed",
                    )
                await self._ds.delete_bundle(td.name, mode)
            except ds.FailedPreconditionError as exc:
                status = error_status(
                    Status.FAILED_PRECONDITION, f"failed to delete federated bundle: {exc}"
                )
                results.append(R(trust_domain=name, status=status))
                continue
            except Exception as exc:
                results.append(
                    R(trust_domain=name, status=status_of(exc, not_found="bundle not found"))
                )
                continue
            results.append(R(trust_domain=name, status=ok_status()))
        await stream.send_message(bundle_pb2.BatchDeleteFederatedBundleResponse(results=results))
