"""Client side of the SPIFFE Workload API: endpoint addresses (``address``), and later the
client, X509Source and JwtSource."""

from spiffed.workloadapi.address import (
    ENDPOINT_SOCKET_ENV,
    Address,
    AddressError,
    TcpAddress,
    UnixAddress,
)

__all__ = ["ENDPOINT_SOCKET_ENV", "Address", "AddressError", "TcpAddress", "UnixAddress"]
