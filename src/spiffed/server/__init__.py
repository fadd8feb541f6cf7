"""``spiffed-server``: the trust domain's authority (CA, datastore, node attestation, APIs).

Its configuration is read by :mod:`spiffed.server.config`.
"""
