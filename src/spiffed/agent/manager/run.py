"""Run the agent's core from an :class:`AgentConfig`: attest or reuse, then sync forever.

``spiffed-agent run`` calls :func:`run_agent`; the Workload API server reads the same
:class:`IdentityCache` it fills.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from spiffed.agent.attest import attestor_from_config
from spiffed.agent.cache import IdentityCache
from spiffed.agent.client import ServerClientError, load_bootstrap_bundle
from spiffed.agent.config import AgentConfig
from spiffed.agent.manager.manager import Manager, ManagerError
from spiffed.agent.nodeattestor import AgentAttestationError

__all__ = ["build_manager", "run_agent"]

log = structlog.get_logger("spiffed.agent")


def build_manager(config: AgentConfig, cache: IdentityCache | None = None) -> Manager:
    """A :class:`Manager` for ``config`` filling ``cache`` (a new one when None).

    Raises :class:`ManagerError` for settings it cannot act on (an unreadable bootstrap
    bundle, an unsupported node attestor or key manager). ``trust_bundle_url`` is
    downloaded when the agent attests, not here.
    """
    try:
        attestor = attestor_from_config(
            config.node_attestor.name, config.node_attestor.options, config.join_token
        )
    except AgentAttestationError as exc:
        raise ManagerError(str(exc)) from None
    roots = None
    url = None
    if config.trust_bundle_path is not None:
        try:
            bundle = load_bootstrap_bundle(
                config.trust_bundle_path, config.trust_bundle_format, config.trust_domain
            )
        except ServerClientError as exc:
            raise ManagerError(str(exc)) from None
        roots = list(bundle.authorities)
    elif config.trust_bundle_url is not None:
        url = config.trust_bundle_url
    elif not config.insecure_bootstrap:
        raise ManagerError("trust_bundle_path or insecure_bootstrap must be configured")
    km = config.key_manager
    persist = km.name == "disk"
    key_dir = None
    if persist:
        directory = km.options.get("directory")
        key_dir = Path(str(directory)) if directory else None
    elif km.name != "memory":
        raise ManagerError(f'KeyManager "{km.name}" is not supported (disk or memory)')
    manager = Manager(
        trust_domain=config.trust_domain,
        server_address=config.server_address,
        server_port=config.server_port,
        data_dir=config.data_dir,
        attestor=attestor,
        cache=cache if cache is not None else IdentityCache(config.trust_domain),
        bootstrap_roots=roots,
        workload_key_type=config.workload_x509_svid_key_type,
        bootstrap_url=url,
        bootstrap_format=config.trust_bundle_format,
        persist=persist,
        key_dir=key_dir,
        sync_interval=config.sync_interval,
    )
    if not config.use_sync_authorized_entries:
        manager.sync_supported = False
    if not persist and not manager.can_reattest:
        log.warning(
            'KeyManager "memory" keeps no key across restarts: a restarted agent must attest '
            f'again, which NodeAttestor "{config.node_attestor.name}" can do only with a new '
            "join token"
        )
    return manager


async def run_agent(config: AgentConfig, cache: IdentityCache | None = None) -> None:
    """Attest (or reuse the stored SVID) and keep entries, SVIDs and bundles in ``cache``
    current until cancelled. Raises :class:`ManagerError` when the server refuses the node."""
    await build_manager(config, cache).run()
