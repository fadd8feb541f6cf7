"""Client side of the SPIFFE Workload API: endpoint addresses (``address``) and the client
(``client``); later the X509Source and JwtSource."""

from spiffed.workloadapi.address import (
    ENDPOINT_SOCKET_ENV,
    Address,
    AddressError,
    TcpAddress,
    UnixAddress,
)
from spiffed.workloadapi.client import (
    HintedJwtSvid,
    InvalidResponseError,
    JwtBundles,
    ValidatedJwtSvid,
    WorkloadApiClient,
    WorkloadApiError,
    X509Bundles,
    X509Context,
)

__all__ = [
    "ENDPOINT_SOCKET_ENV",
    "Address",
    "AddressError",
    "HintedJwtSvid",
    "InvalidResponseError",
    "JwtBundles",
    "TcpAddress",
    "UnixAddress",
    "ValidatedJwtSvid",
    "WorkloadApiClient",
    "WorkloadApiError",
    "X509Bundles",
    "X509Context",
]
