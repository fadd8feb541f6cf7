"""X509-SVID issuance from CSRs on one core, against openssl's ECDSA P-256 limit.

The server checks each CSR's signature and signs an SVID: one ECDSA verify and one sign.
Measured on the path the signing RPCs take (CSR in, DER SVID out, as sent on the wire).
``openssl speed ecdsap256`` (run here, single process) gives the sign and verify rates; the
sign+verify limit is ``1 / (1/sign + 1/verify)``. Target: at least 0.6 of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.server.ca.manager import CaManager, CaSettings, MemoryCaStore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.spiffeid import SpiffeId, TrustDomain

N = 3000
ROUNDS = 3


def openssl_ecdsap256(seconds: int = 3) -> tuple[float, float]:
    """(signs/s, verifies/s) from ``openssl speed`` on one core."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"cannot read openssl speed output:\n{out}")
    return float(m.group(1)), float(m.group(2))


def make_csrs(n: int) -> list[x509.CertificateSigningRequest]:
    csrs = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csrs.append(
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
    return csrs


def main() -> None:
    """Print issuance figures (this process and openssl pinned to one core)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sign_s, verify_s = openssl_ecdsap256()
    limit = 1 / (1 / sign_s + 1 / verify_s)
    ca = CaManager(
        CaSettings(trust_domain=TrustDomain("example.org"), ca_ttl=dt.timedelta(hours=24)),
        MemoryKeyManager(),
        MemoryCaStore("example.org"),
    )
    asyncio.run(ca.start())
    csrs = make_csrs(N)
    ids = [SpiffeId.parse(f"spiffe://example.org/workload/{i}") for i in range(N)]
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for spiffe_id, csr in zip(ids, csrs, strict=True):
            ca.sign_x509_svid_der(spiffe_id, csr)
        rates.append(N / (time.perf_counter() - start))
    rate = max(rates)
    print(f"openssl ecdsap256: {sign_s:,.0f} sign/s, {verify_s:,.0f} verify/s")
    print(f"sign+verify limit: {limit:,.0f}/s")
    shown = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"spiffed issuance from CSRs: {rate:,.0f} SVIDs/s best of [{shown}]")
    print(f"per SVID: {1e6 / rate:.0f} us (CSR check + sign + DER assembly)")
    print(f"ratio to the limit: {rate / limit:.2f} (target >= 0.60)")


if __name__ == "__main__":
    main()
