"""``spiffed-server run``: wire the configured plugins, CA, services and listeners together.

Start-up order: datastore, key manager, upstream authority, CA (journal and bundle kept in
the datastore), server SVID, API services, listeners. Then a loop rotates the CA (every
10 s) and checks the server SVID (every 5 s) until SIGINT or SIGTERM, when the listeners
stop (socket removed) and the datastore closes.

``SPIFFED_CA_ROTATE_INTERVAL`` and ``SPIFFED_SVID_CHECK_INTERVAL`` (seconds) shorten the
two periods for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from spiffed import logsetup
from spiffed.server.ca.manager import CaManager, CaSettings, UpstreamAuthority
from spiffed.server.cache import ServerCache
from spiffed.server.config import ServerConfig
from spiffed.server.context import ServerContext
from spiffed.server.endpoints import Endpoints
from spiffed.server.svid import ServerSvid

__all__ = ["ServerRunError", "configure_logging", "run", "serve"]

CA_ROTATE_INTERVAL = 10.0
SVID_CHECK_INTERVAL = 5.0
ENTRY_PRUNE_INTERVAL = 300.0
"""How often expired registration entries are deleted (SPIRE's registration manager, 5 min).
Expired join tokens are not pruned periodically: SPIRE deletes one when it is shown."""


class ServerRunError(Exception):
    """The server cannot start with this configuration or environment."""


def configure_logging(config: ServerConfig) -> None:
    """Send log output to stderr or ``log_file`` at ``log_level``, text or JSON."""
    logsetup.configure_logging(
        logsetup.level_number(config.log_level),
        log_file=config.log_file,
        log_format=config.log_format,
        source_location=config.log_source_location,
    )


def _ca_subject(config: ServerConfig) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, c) for c in config.ca_subject.country]
    attrs += [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in config.ca_subject.organization
    ]
    if config.ca_subject.common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, config.ca_subject.common_name))
    return x509.Name(attrs)


async def _open_datastore(config: ServerConfig) -> Any:
    from spiffed.server.datastore import DataStoreError, open_datastore

    options = config.datastore.options
    conn_lifetime = config.datastore.settings.get("conn_max_lifetime")
    try:
        return await open_datastore(
            str(options.get("database_type", "sqlite3")),
            str(options.get("connection_string", "")),
            data_dir=config.data_dir,
            disable_migration=bool(options.get("disable_migration", False)),
            max_open_conns=options.get("max_open_conns"),  # type: ignore[arg-type]
            conn_max_lifetime=getattr(conn_lifetime, "total_seconds", lambda: None)(),
            log_sql=bool(options.get("log_sql", False)),
        )
    except DataStoreError as exc:
        raise ServerRunError(f"cannot open the datastore: {exc}") from None


def _upstream(config: ServerConfig) -> UpstreamAuthority | None:
    plugin = config.upstream_authority
    if plugin is None:
        return None
    if plugin.name != "disk":
        raise ServerRunError(f'UpstreamAuthority "{plugin.name}" is not supported')
    from spiffed.server.upstreamauthority.disk import DiskUpstreamAuthority

    return DiskUpstreamAuthority.from_config(plugin.options)


def _build_services(ctx: ServerContext) -> list[object]:
    from spiffed.server.api.services import build_services

    return build_services(ctx)


def _interval(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


async def serve(
    config: ServerConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Endpoints], None] | None = None,
) -> None:
    """Run the server until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None)."""
    from spiffed.server.keymanager import KeyManagerError, create_key_manager
    from spiffed.server.run_store import DatastoreCaStore

    log = structlog.get_logger("spiffed.server")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    td = config.trust_domain
    datastore = await _open_datastore(config)
    cache: ServerCache | None = None
    try:
        try:
            km = create_key_manager(config.key_manager.name, dict(config.key_manager.options))
        except KeyManagerError as exc:
            raise ServerRunError(str(exc)) from None
        store = DatastoreCaStore(datastore, str(td))
        settings = CaSettings(
            trust_domain=td,
            ca_key_type=config.ca_key_type,
            jwt_key_type=config.jwt_key_type,
            ca_ttl=config.ca_ttl,
            ca_subject=_ca_subject(config),
            x509_svid_ttl=config.default_x509_svid_ttl,
            jwt_svid_ttl=config.default_jwt_svid_ttl,
            jwt_issuer=config.jwt_issuer,
        )
        ca = CaManager(settings, km, store, upstream=_upstream(config))
        await ca.start()
        svid = ServerSvid(ca)
        svid.rotate(force=True)
        cache = ServerCache(
            datastore, td, poll_interval=_interval("SPIFFED_CACHE_POLL_INTERVAL", 1.0)
        )
        await cache.start()
        ctx = ServerContext(
            trust_domain=td,
            datastore=datastore,
            ca=ca,
            server_svid=svid,
            admin_ids=frozenset(config.admin_ids),
            config=config,
            cache=cache,
        )
        endpoints = Endpoints(
            ctx,
            _build_services(ctx),
            socket_path=config.socket_path,
            bind_address=config.bind_address,
            bind_port=config.bind_port,
        )
        endpoints.set_bundle(await store.get_bundle())

        async def bundle_changed() -> None:
            endpoints.set_bundle(await store.get_bundle())
            cache.bundle_changed()

        ca.on_bundle_change(bundle_changed)
        svid.on_rotate(endpoints.set_svid)
        await endpoints.start()
        host, port = endpoints.tcp_address or (config.bind_address, config.bind_port)
        log.info(
            "Starting Server APIs",
            trust_domain=str(td),
            socket_path=str(config.socket_path),
            address=f"{host}:{port}",
        )
        if on_ready is not None:
            on_ready(endpoints)
        pruner = asyncio.create_task(
            prune_entries_every(
                datastore, stop, _interval("SPIFFED_ENTRY_PRUNE_INTERVAL", ENTRY_PRUNE_INTERVAL)
            ),
            name="server-prune-entries",
        )
        try:
            await _rotation_loop(ca, svid, stop, log)
        finally:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
            log.info("Stopping Server APIs")
            await cache.stop()  # ends agents' watch streams before the graceful stop
            await endpoints.stop()
    finally:
        if cache is not None:
            await cache.stop()
        await datastore.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("Server stopped gracefully")


async def prune_expired_entries(datastore: Any, clock: Callable[[], float] = time.time) -> int:
    """Delete the registration entries that have expired by now; how many were deleted."""
    pruned = int(await datastore.prune_entries(int(clock())))
    if pruned:
        structlog.get_logger("spiffed.server").debug(
            "Pruned expired registration entries", count=pruned
        )
    return pruned


async def prune_entries_every(
    datastore: Any,
    stop: asyncio.Event,
    every: float = ENTRY_PRUNE_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> None:
    """SPIRE's registration manager: every ``every`` seconds, delete expired entries (a
    failure is logged and retried at the next tick) until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if stop.is_set():
            return
        try:
            await prune_expired_entries(datastore, clock)
        except Exception as exc:
            structlog.get_logger("spiffed.server").error(
                "Failed pruning registration entries", error=str(exc)
            )


async def _rotation_loop(ca: CaManager, svid: ServerSvid, stop: asyncio.Event, log: Any) -> None:
    ca_every = _interval("SPIFFED_CA_ROTATE_INTERVAL", CA_ROTATE_INTERVAL)
    svid_every = _interval("SPIFFED_SVID_CHECK_INTERVAL", SVID_CHECK_INTERVAL)
    next_ca = next_svid = loop_time = asyncio.get_running_loop().time()
    next_ca += ca_every
    next_svid += svid_every
    while not stop.is_set():
        wait = max(0.0, min(next_ca, next_svid) - loop_time)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)
        if stop.is_set():
            return
        loop_time = asyncio.get_running_loop().time()
        try:
            if loop_time >= next_ca:
                next_ca = loop_time + ca_every
                await ca.rotate()
            if loop_time >= next_svid:
                next_svid = loop_time + svid_every
                if svid.rotate():
                    log.info("Server SVID rotated")
        except Exception as exc:
            log.exception("Rotation failed", error=str(exc))


def run(config: ServerConfig) -> int:
    """Configure logging and run the server; the process exit status."""
    configure_logging(config)
    log = structlog.get_logger("spiffed.server")
    try:
        asyncio.run(serve(config))
    except ServerRunError as exc:
        log.error("Server crashed", error=str(exc))  # noqa: TRY400 - a config problem
        return 1
    except Exception as exc:
        log.exception("Server crashed", error=str(exc))
        return 1
    return 0
