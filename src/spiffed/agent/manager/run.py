"""Run the agent's core from an :class:`AgentConfig`: attest or reuse, then sync forever.

``spiffed-agent run`` calls :func:`run_agent`; the Workload API server reads the same
:class:`IdentityCache` it fills.
"""

from __future__ import annotations

from spiffed.agent.attest import attestor_from_config
from spiffed.agent.cache import IdentityCache
from spiffed.agent.client import ServerClientError, load_bootstrap_bundle
from spiffed.agent.config import AgentConfig
from spiffed.agent.manager.manager import Manager, ManagerError
from spiffed.agent.nodeattestor import AgentAttestationError

__all__ = ["build_manager", "run_agent"]


def build_manager(config: AgentConfig, cache: IdentityCache | None = None) -> Manager:
    """A :class:`Manager` for ``config`` filling ``cache`` (a new one when None).

    Raises :class:`ManagerError` for settings it cannot act on (an unreadable bootstrap
    bundle, an unsupported node attestor, ``trust_bundle_url``).
    """
    try:
        attestor = attestor_from_config(
            config.node_attestor.name, config.node_attestor.options, config.join_token
        )
    except AgentAttestationError as exc:
        raise ManagerError(str(exc)) from None
    roots = None
    if config.trust_bundle_path is not None:
        try:
            bundle = load_bootstrap_bundle(
                config.trust_bundle_path, config.trust_bundle_format, config.trust_domain
            )
        except ServerClientError as exc:
            raise ManagerError(str(exc)) from None
        roots = list(bundle.authorities)
    elif config.trust_bundle_url is not None:
        raise ManagerError("trust_bundle_url is not supported yet; use trust_bundle_path")
    elif not config.insecure_bootstrap:
        raise ManagerError("trust_bundle_path or insecure_bootstrap must be configured")
    return Manager(
        trust_domain=config.trust_domain,
        server_address=config.server_address,
        server_port=config.server_port,
        data_dir=config.data_dir,
        attestor=attestor,
        cache=cache if cache is not None else IdentityCache(config.trust_domain),
        bootstrap_roots=roots,
        workload_key_type=config.workload_x509_svid_key_type,
    )


async def run_agent(config: AgentConfig, cache: IdentityCache | None = None) -> None:
    """Attest (or reuse the stored SVID) and keep entries, SVIDs and bundles in ``cache``
    current until cancelled. Raises :class:`ManagerError` when the server refuses the node."""
    await build_manager(config, cache).run()
