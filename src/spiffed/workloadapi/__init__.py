"""Client side of the SPIFFE Workload API for workloads.

* ``address``: endpoint addresses (``SPIFFE_ENDPOINT_SOCKET``);
* ``client``: :class:`WorkloadApiClient`, an asyncio client for every Workload API call;
* ``sources``: :class:`X509Source`, :class:`JwtSource` and :class:`BundleSource`, which stay
  current in the background (reconnecting with back-off) and call subscribers on updates;
* ``sync``: the same for code without an event loop (a background event-loop thread).
"""

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
from spiffed.workloadapi.sources import (
    BundleSource,
    JwtSource,
    SourceClosedError,
    SvidPicker,
    X509Source,
)

__all__ = [
    "ENDPOINT_SOCKET_ENV",
    "Address",
    "AddressError",
    "BundleSource",
    "HintedJwtSvid",
    "InvalidResponseError",
    "JwtBundles",
    "JwtSource",
    "SourceClosedError",
    "SvidPicker",
    "TcpAddress",
    "UnixAddress",
    "ValidatedJwtSvid",
    "WorkloadApiClient",
    "WorkloadApiError",
    "X509Bundles",
    "X509Context",
    "X509Source",
]
