"""The spiffed agent: node attestation, entry sync, SVID cache and the Workload API."""
