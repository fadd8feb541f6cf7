"""``spiffed-agent run``: attest (or reuse the stored SVID), serve the Workload API, sync.

Start-up: the manager attests or loads its stored SVID (retrying while the server cannot be
reached; a refusal ends the run), then the Workload API listens on ``socket_path`` (its
directory created 0755 when missing, the socket itself world-connectable as SPIRE's since
callers are told apart by the kernel, a stale socket from an earlier run replaced; an
existing directory another user could write to is refused), then
the sync loop runs until SIGINT/SIGTERM, when the socket is closed and removed.

JWT-SVIDs for workloads are minted by the server (``svid.v1.SVID/NewJWTSVID``) with the
agent's SVID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from grpclib.server import Server

from spiffed import logsetup
from spiffed.agent.cache import IdentityCache
from spiffed.agent.config import AgentConfig
from spiffed.agent.manager import Manager, ManagerError
from spiffed.agent.manager.run import build_manager
from spiffed.agent.workloadattestor import WorkloadAttestationError, WorkloadAttestor
from spiffed.grpcutil import GrpcUtilError, raise_open_file_limit

__all__ = ["AgentRunError", "RunningAgent", "configure_logging", "run", "serve"]


class AgentRunError(Exception):
    """The agent cannot start or must stop (the message says why)."""


@dataclass(frozen=True, slots=True)
class RunningAgent:
    """What :func:`serve` hands to ``on_ready`` once the Workload API listens."""

    config: AgentConfig
    manager: Manager
    cache: IdentityCache
    socket_path: Path
    server: Server


def configure_logging(config: AgentConfig) -> None:
    """Send log output to stderr or ``log_file`` at ``log_level``, text or JSON."""
    logsetup.configure_logging(
        logsetup.level_number(config.log_level),
        log_file=config.log_file,
        log_format=config.log_format,
        source_location=config.log_source_location,
    )


def workload_attestors(config: AgentConfig) -> list[WorkloadAttestor]:
    """The configured ``WorkloadAttestor`` plugins."""
    out: list[WorkloadAttestor] = []
    for plugin in config.workload_attestors:
        if plugin.name != "unix":
            raise AgentRunError(f'WorkloadAttestor "{plugin.name}" is not supported')
        from spiffed.agent.workloadattestor.unix import UnixAttestor

        try:
            out.append(UnixAttestor.from_config(plugin.options))
        except WorkloadAttestationError as exc:
            raise AgentRunError(str(exc)) from None
    return out


def check_socket_dir(socket_path: Path) -> None:
    """Refuse a socket directory another user could swap the socket in: one owned by
    someone other than the agent's user or root, or writable by others without the sticky
    bit. A missing directory is fine (it is created 0755)."""
    directory = socket_path.parent
    try:
        st = directory.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise AgentRunError(f"socket directory {directory} is not a directory")
    if st.st_uid not in (os.getuid(), 0):
        raise AgentRunError(
            f"socket directory {directory} is owned by uid {st.st_uid}, not by the agent's "
            "user or root; another user could replace the Workload API socket"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise AgentRunError(
            f"socket directory {directory} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); another user could replace the "
            "Workload API socket"
        )


async def _wait_stop_or_fail(
    stop: asyncio.Event, task: asyncio.Task[None], *, may_end: bool = False
) -> None:
    """Return when ``stop`` is set or ``task`` ends; raise what ``task`` raised, and (unless
    ``may_end``) an error when it ended on its own."""
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopper, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        task.result()  # raises the manager's error
        if may_end:
            return
        raise AgentRunError("the agent's sync loop ended")


async def serve(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[RunningAgent], None] | None = None,
) -> None:
    """Run the agent until ``stop`` is set (or SIGINT/SIGTERM).

    Raises :class:`AgentRunError` when it cannot start or must stop (attestation refused,
    evicted join-token agent, banned agent, socket in use by something else)."""
    from spiffed.agent.endpoints.server import start_workload_api, stop_workload_api
    from spiffed.agent.endpoints.workload import WorkloadApiService

    log = structlog.get_logger("spiffed.agent")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        cache = IdentityCache(config.trust_domain)
        try:
            manager = build_manager(config, cache)
        except ManagerError as exc:
            raise AgentRunError(str(exc)) from None
        attestors = workload_attestors(config)
        log.info(
            "Starting agent",
            trust_domain=str(config.trust_domain),
            server=f"{config.server_address}:{config.server_port}",
            data_dir=str(config.data_dir),
            key_manager=config.key_manager.name,
        )
        starting = asyncio.create_task(manager.start())
        try:
            await _wait_stop_or_fail(stop, starting, may_end=True)
        except ManagerError as exc:
            raise AgentRunError(f"agent attestation failed: {exc}") from None
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        if stop.is_set():
            return
        service = WorkloadApiService(
            cache,
            attestors,
            manager.mint_jwt,
            jwt_cache_size=max(1, config.jwt_svid_cache_max_size),
        )
        check_socket_dir(config.socket_path)
        try:
            server = await start_workload_api(service, config.socket_path)
        except GrpcUtilError as exc:
            raise AgentRunError(str(exc)) from None
        log.info("Starting Workload API", socket_path=str(config.socket_path))
        syncing = asyncio.create_task(manager.run())
        try:
            if on_ready is not None:
                on_ready(RunningAgent(config, manager, cache, config.socket_path, server))
            await _wait_stop_or_fail(stop, syncing)
        except ManagerError as exc:
            raise AgentRunError(str(exc)) from None
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await syncing
            log.info("Stopping Workload API")
            if not await stop_workload_api(server):
                log.warning("Workload API calls or connections were aborted on stop")
            with contextlib.suppress(OSError):
                config.socket_path.unlink(missing_ok=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    log.info("Agent stopped gracefully")


def run(config: AgentConfig) -> int:
    """Configure logging and run the agent; the process exit status."""
    configure_logging(config)
    log = structlog.get_logger("spiffed.agent")
    raise_open_file_limit()
    try:
        asyncio.run(serve(config))
    except AgentRunError as exc:
        log.error("Agent crashed", error=str(exc))  # noqa: TRY400 - a known cause
        return 1
    except Exception as exc:
        log.exception("Agent crashed", error=str(exc))
        return 1
    return 0
