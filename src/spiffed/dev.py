"""``spiffed dev``: a local trust domain, server and agent in one process, with no config.

What it does, in order:

1. resolve the data directory (``--data-dir``, else ``$XDG_STATE_HOME/spiffed/dev``, else
   ``~/.local/state/spiffed/dev``), lock it (one ``spiffed dev`` per directory) and read its
   ``dev.json`` (the trust domain and agent ID of earlier runs); ``--ephemeral`` uses a
   temporary directory instead, removed at exit, and keeps the datastore and every key in
   memory;
2. start the server (SQLite ``server/datastore.sqlite3``, ``disk`` KeyManager
   ``server/keys.json``, admin API on ``server/api.sock``, agent API on 127.0.0.1 with a
   port the kernel picks);
3. pick the agent's identity: the agent SVID stored in ``agent/`` when it is still valid and
   the server still knows the agent (no attestation needed), else a new join token (entries
   of the previous agent are moved under the new one);
4. make sure each registration exists once (the calling user ``unix:uid:<uid>`` as
   ``spiffe://<td>/dev/<user>``, or the ``--register`` ones), parented to the agent;
5. start the agent (Workload API on ``agent.sock``; ``disk`` KeyManager in ``agent/``),
   wait until the SVID of every registration is in its cache (ready: a workload can fetch
   it), then print the ``export SPIFFE_ENDPOINT_SOCKET=...`` line and the admin socket;
6. run until SIGINT or SIGTERM, then stop the agent and the server (sockets removed).

Unix socket paths are limited to 107 bytes: when the data directory's would be longer (or
hold characters a ``unix://`` address cannot carry as they are), the sockets go to a fresh
directory under ``/tmp`` instead, removed at exit, and the output says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

from spiffed import logsetup
from spiffed.grpcutil import raise_open_file_limit
from spiffed.selector import Selector, SelectorError
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "DevError",
    "DevOptions",
    "DevReady",
    "DevUsageError",
    "Plan",
    "Registration",
    "default_data_dir",
    "default_registration",
    "parse_registration",
    "plan",
    "run",
    "serve",
]

DEFAULT_TRUST_DOMAIN = "example.org"
STATE_FILE = "dev.json"
LOCK_FILE = "dev.lock"
MAX_SOCKET_PATH = 107
"""Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with the NUL)."""
JOIN_TOKEN_TTL = 600
"""Seconds the join token dev creates stays usable (it is spent at once)."""

_T = TypeVar("_T")
_SOCKET_SAFE = re.compile(r"[A-Za-z0-9._/~+-]+")


class DevError(Exception):
    """``spiffed dev`` cannot start or had to stop (exit status 1)."""


class DevUsageError(DevError):
    """The command line or the data directory does not fit (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """One entry ``spiffed dev`` keeps registered: a SPIFFE ID for a set of selectors."""

    spiffe_id: SpiffeId
    selectors: tuple[Selector, ...]

    def __str__(self) -> str:
        return f"{self.spiffe_id}={','.join(str(s) for s in self.selectors)}"


@dataclass(frozen=True, slots=True)
class DevOptions:
    """The command line of ``spiffed dev``."""

    data_dir: Path | None = None
    ephemeral: bool = False
    trust_domain: str | None = None
    register: tuple[str, ...] = ()
    log_level: str = "WARN"


@dataclass(frozen=True, slots=True)
class Plan:
    """Checked options: what :func:`serve` runs."""

    trust_domain: TrustDomain
    registrations: tuple[Registration, ...]
    data_dir: Path | None
    """None with ``--ephemeral``."""
    resumed: bool
    """The data directory holds an earlier run's trust domain."""
    previous_agent_id: str | None
    log_level: str


@dataclass(frozen=True, slots=True)
class DevReady:
    """What :func:`serve` reports once the first SVIDs can be served."""

    trust_domain: TrustDomain
    agent_socket: Path
    admin_socket: Path
    agent_id: str
    attested: bool
    """The agent attested with a new join token (False: it reused its stored SVID)."""
    entry_ids: tuple[str, ...]
    seconds: float
    """Since ``started`` (the command's start, given to :func:`serve`)."""


# --- options ----------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$XDG_STATE_HOME/spiffed/dev``, or ``~/.local/state/spiffed/dev``."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "spiffed" / "dev"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def default_registration(trust_domain: TrustDomain, uid: int | None = None) -> Registration:
    """The calling user (``unix:uid:<uid>``) as ``spiffe://<td>/dev/<user name>``; the uid
    stands in for a name that is not a valid path segment."""
    uid = os.getuid() if uid is None else uid
    name = _user_name(uid)
    try:
        spiffe_id = SpiffeId.from_segments(trust_domain, "dev", name)
    except SpiffeIdError:
        spiffe_id = SpiffeId.from_segments(trust_domain, "dev", f"uid-{uid}")
    return Registration(spiffe_id, (Selector("unix", f"uid:{uid}"),))


def parse_registration(text: str, trust_domain: TrustDomain) -> Registration:
    """``SPIFFEID=SELECTOR[,SELECTOR...]``; SPIFFEID is ``spiffe://<td>/path`` or ``/path``.

    Raises :class:`DevUsageError` naming what is wrong."""
    what = f"--register {text!r}"
    raw_id, sep, raw_selectors = text.partition("=")
    if not sep or not raw_id or not raw_selectors:
        raise DevUsageError(
            f"{what}: expected SPIFFEID=SELECTOR[,SELECTOR...], "
            f"e.g. spiffe://{trust_domain}/web=unix:uid:{os.getuid()}"
        )
    try:
        if raw_id.startswith("/"):
            spiffe_id = SpiffeId.from_path(trust_domain, raw_id)
        else:
            spiffe_id = SpiffeId.parse(raw_id)
    except SpiffeIdError as exc:
        raise DevUsageError(f"{what}: invalid SPIFFE ID: {exc}") from None
    if spiffe_id.trust_domain != trust_domain:
        raise DevUsageError(
            f"{what}: {spiffe_id} is not in trust domain {trust_domain} "
            "(give --trust-domain to use another one)"
        )
    if spiffe_id.is_trust_domain_id:
        raise DevUsageError(f"{what}: {spiffe_id} has no path; a workload ID needs one")
    if spiffe_id.path == "/spire" or spiffe_id.path.startswith("/spire/"):
        raise DevUsageError(f"{what}: {spiffe_id} is in the reserved namespace /spire")
    selectors: list[Selector] = []
    for part in raw_selectors.split(","):
        try:
            selector = Selector.parse(part)
        except SelectorError as exc:
            raise DevUsageError(f"{what}: invalid selector: {exc}") from None
        if selector not in selectors:
            selectors.append(selector)
    return Registration(spiffe_id, tuple(sorted(selectors)))


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATE_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevError(f"cannot read {path}: {exc}") from None
    try:
        state = json.loads(raw)
    except ValueError as exc:
        raise DevUsageError(f"{path} is not a spiffed dev state file ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("trust_domain"), str):
        raise DevUsageError(f"{path} is not a spiffed dev state file (no trust_domain)")
    return state


def plan(options: DevOptions) -> Plan:
    """Check ``options`` against each other and the data directory; creates nothing.

    Raises :class:`DevUsageError` for what the user must change."""
    level = options.log_level.upper()
    if level not in logsetup.LEVELS:
        raise DevUsageError(
            f"--log-level {options.log_level!r}: expected one of debug, info, warn, error"
        )
    if options.ephemeral and options.data_dir is not None:
        raise DevUsageError("--ephemeral keeps nothing on disk; it cannot be used with --data-dir")
    asked: TrustDomain | None = None
    if options.trust_domain is not None:
        try:
            asked = TrustDomain.parse(options.trust_domain)
        except SpiffeIdError as exc:
            raise DevUsageError(f"--trust-domain {options.trust_domain!r}: {exc}") from None
    data_dir: Path | None = None
    state: dict[str, Any] | None = None
    if not options.ephemeral:
        data_dir = Path(os.path.abspath(options.data_dir or default_data_dir()))
        if data_dir.exists() and not data_dir.is_dir():
            raise DevUsageError(f"data directory {data_dir} exists and is not a directory")
        state = _read_state(data_dir) if data_dir.is_dir() else None
        if state is None and data_dir.is_dir() and any(data_dir.iterdir()):
            raise DevUsageError(
                f"data directory {data_dir} is not empty and has no {STATE_FILE}: it is not a "
                "spiffed dev data directory; give --data-dir a new or empty directory"
            )
    stored: TrustDomain | None = None
    if state is not None:
        try:
            stored = TrustDomain.parse(state["trust_domain"])
        except SpiffeIdError as exc:
            raise DevUsageError(f"{data_dir}/{STATE_FILE}: bad trust domain: {exc}") from None
        if asked is not None and asked != stored:
            raise DevUsageError(
                f"data directory {data_dir} holds trust domain {stored}, not {asked}; "
                "leave out --trust-domain to resume it, or give another --data-dir"
            )
    td = asked or stored or TrustDomain(DEFAULT_TRUST_DOMAIN)
    registrations: list[Registration] = []
    for text in options.register:
        reg = parse_registration(text, td)
        if reg not in registrations:
            registrations.append(reg)
    if not registrations:
        registrations.append(default_registration(td))
    previous = state.get("agent_id") if state is not None else None
    return Plan(
        trust_domain=td,
        registrations=tuple(registrations),
        data_dir=data_dir,
        resumed=state is not None,
        previous_agent_id=previous if isinstance(previous, str) else None,
        log_level=level,
    )


# --- files ------------------------------------------------------------------------------


def _socket_ok(path: Path) -> bool:
    text = str(path)
    return len(text.encode()) <= MAX_SOCKET_PATH and _SOCKET_SAFE.fullmatch(text) is not None


def _short_tmp_dir() -> Path:
    """A fresh directory with a short path, for sockets (workloads may traverse it)."""
    base = tempfile.gettempdir()
    if not _socket_ok(Path(base) / "spiffed-dev-xxxxxxxx" / "private" / "api.sock"):
        base = "/tmp"  # noqa: S108 - a fresh mkdtemp directory, not a fixed name
    path = Path(tempfile.mkdtemp(prefix="spiffed-dev-", dir=base))
    path.chmod(0o755)
    return path


@dataclass
class _Layout:
    root: Path
    server_dir: Path
    agent_dir: Path
    agent_socket: Path
    admin_socket: Path
    remove: list[Path] = field(default_factory=list)
    """Directories removed at exit (ephemeral root, socket fallback)."""
    note: str = ""
    lock: IO[bytes] | None = None

    @classmethod
    def make(cls, data_dir: Path | None) -> _Layout:
        """Create (and lock) the directories; :meth:`cleanup` undoes what is temporary."""
        layout = cls(Path(), Path(), Path(), Path(), Path())
        try:
            layout._make(data_dir)
        except OSError as exc:
            layout.cleanup()
            raise DevError(f"cannot prepare the data directory: {exc}") from None
        except BaseException:
            layout.cleanup()
            raise
        return layout

    def _make(self, data_dir: Path | None) -> None:
        if data_dir is None:
            root = _short_tmp_dir()
            self.remove.append(root)
        else:
            root = data_dir
            root.mkdir(parents=True, exist_ok=True)
            self.lock = _lock(root)
        self.root = root
        self.server_dir, self.agent_dir = root / "server", root / "agent"
        for private in (self.server_dir, self.agent_dir):
            private.mkdir(mode=0o700, exist_ok=True)
            private.chmod(0o700)  # keys and the admin socket live here
        self.agent_socket, self.admin_socket = root / "agent.sock", self.server_dir / "api.sock"
        if not (_socket_ok(self.agent_socket) and _socket_ok(self.admin_socket)):
            short = _short_tmp_dir()
            self.remove.append(short)
            self.agent_socket, self.admin_socket = short / "agent.sock", short / "private/api.sock"
            self.note = (
                f"{root} is too long for Unix socket paths (at most {MAX_SOCKET_PATH} bytes) or "
                f"has characters a unix:// address cannot carry; sockets are in {short}"
            )

    def cleanup(self) -> None:
        """Remove the temporary directories and release the lock."""
        for path in self.remove:
            shutil.rmtree(path, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _write_state(data_dir: Path, trust_domain: TrustDomain, agent_id: str | None) -> None:
    from spiffed.agent.manager.storage import write_atomic

    doc = {"trust_domain": str(trust_domain), "agent_id": agent_id}
    write_atomic(data_dir / STATE_FILE, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)


def _lock(data_dir: Path) -> IO[bytes]:
    """Hold ``dev.lock`` for the life of the process (released when it exits)."""
    import fcntl

    handle = open(data_dir / LOCK_FILE, "a+b")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DevError(
            f"another spiffed dev is running on {data_dir}; stop it first or give another "
            "--data-dir"
        ) from None
    return handle


# --- logging ----------------------------------------------------------------------------


def _drop_expected(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    import structlog

    # dev starts a new agent with a new token whenever it must: this advice is not for us
    if str(event.get("event", "")).startswith('KeyManager "memory" keeps no key'):
        raise structlog.DropEvent
    return event


def configure_logging(level: str, stream: TextIO = sys.stderr) -> None:
    """Server and agent logs to ``stream`` at ``level`` (WARN by default: only problems)."""
    logsetup.configure_logging(
        logsetup.level_number(level, logging.WARNING), stream=stream, first=[_drop_expected]
    )


# --- the run ----------------------------------------------------------------------------


class _Stopped(Exception):
    """A stop was asked for (or a component stopped on a signal) during start-up."""


async def _race(want: asyncio.Future[Any], stop: asyncio.Event, *tasks: asyncio.Task[None]) -> Any:
    """``want``'s result, unless ``stop`` is set or one of ``tasks`` ends first."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({want, stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if want.done():
        return want.result()
    for task in tasks:
        if task.done():
            _check(task)
    raise _Stopped


def _check(task: asyncio.Task[None]) -> None:
    """Raise what ``task`` raised as a :class:`DevError`; a task that ended by itself
    stopped on a signal (the server and agent stop on SIGINT/SIGTERM)."""
    if task.cancelled():
        raise _Stopped
    exc = task.exception()
    if exc is None:
        raise _Stopped
    from spiffed.agent.run import AgentRunError
    from spiffed.server.run import ServerRunError

    who = task.get_name()
    if isinstance(exc, AgentRunError) and ("re-attest" in str(exc) or "banned" in str(exc)):
        raise DevError(f"{who}: {exc}; spiffed dev attests a new agent when started again")
    if isinstance(exc, ServerRunError | AgentRunError | DevError):
        raise DevError(f"{who}: {exc}") from None
    raise DevError(f"{who} failed: {type(exc).__name__}: {exc}") from exc


async def _stored_agent(ctx: Any, layout: _Layout, plan: Plan) -> str | None:
    """The agent ID of the SVID stored in ``agent/`` when the agent can go on with it: the
    chain verifies against the stored bundle, and the server knows the node with this
    serial and has not banned it. Otherwise None (and the stored SVID is removed so the
    agent attests with the new token)."""
    from spiffed.agent.manager.storage import StateError, delete_state, load_state
    from spiffed.server.datastore import NotFoundError
    from spiffed.svid.x509 import X509SvidError, verify_chain

    if plan.data_dir is None:
        return None
    try:
        state = load_state(layout.agent_dir, plan.trust_domain)
    except StateError:
        state = None
    if state is not None:
        agent_id = str(state.svid.spiffe_id)
        try:
            verify_chain(state.svid.cert_chain, state.bundle)
            node = await ctx.datastore.get_node(agent_id)
        except (X509SvidError, NotFoundError):
            node = None
        serial = state.svid.leaf.serial_number
        if node is not None and (
            str(serial) in (node.cert_serial_number, node.new_cert_serial_number)
        ):
            return agent_id
    delete_state(layout.agent_dir)
    return None


async def _new_agent(ctx: Any, plan: Plan) -> tuple[str, str]:
    """A new join token and the agent ID it gives; the previous dev agent's entries are
    moved under it and the previous node record is removed."""
    from spiffed.server.datastore import (
        AlreadyExistsError,
        EntryFilter,
        JoinToken,
        NotFoundError,
    )

    ds = ctx.datastore
    token = str(uuid.uuid4())
    await ds.create_join_token(JoinToken(token, int(time.time()) + JOIN_TOKEN_TTL))
    agent_id = f"spiffe://{plan.trust_domain}/spire/agent/join_token/{token}"
    old = plan.previous_agent_id
    if old:
        children = (await ds.list_entries(EntryFilter(by_parent_id=old))).items
        for entry in children:
            moved = dataclasses.replace(entry, parent_id=agent_id)
            try:
                await ds.update_entry(moved, ["parent_id"])
            except AlreadyExistsError:
                await ds.delete_entry(entry.id)
        with contextlib.suppress(NotFoundError):
            await ds.delete_node(old)
    return token, agent_id


async def _ensure_entries(ctx: Any, agent_id: str, plan: Plan) -> tuple[str, ...]:
    """Each registration once under ``agent_id``: the IDs of the existing or new entries."""
    from spiffed.server.datastore import (
        EntryFilter,
        MatchBehavior,
        RegistrationEntry,
        SelectorFilter,
    )
    from spiffed.server.datastore import Selector as StoredSelector

    ds = ctx.datastore
    ids: list[str] = []
    for reg in plan.registrations:
        selectors = tuple(StoredSelector(s.type, s.value) for s in reg.selectors)
        flt = EntryFilter(
            by_spiffe_id=str(reg.spiffe_id),
            by_parent_id=agent_id,
            by_selectors=SelectorFilter(selectors, MatchBehavior.EXACT),
        )
        found = (await ds.list_entries(flt)).items
        if found:
            ids.append(found[0].id)
            continue
        entry = await ds.create_entry(RegistrationEntry(str(reg.spiffe_id), agent_id, selectors))
        ids.append(entry.id)
    return tuple(ids)


async def _bootstrap_pem(ctx: Any, trust_domain: TrustDomain) -> bytes:
    """The trust domain's X.509 roots as PEM (the agent's ``trust_bundle_path``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from spiffed.server.run_store import DatastoreCaStore

    bundle = await DatastoreCaStore(ctx.datastore, str(trust_domain)).get_bundle()
    pems = [
        x509.load_der_x509_certificate(a.asn1).public_bytes(Encoding.PEM)
        for a in bundle.x509_authorities
    ]
    if not pems:
        raise DevError("the server has no X.509 authority in its bundle")
    return b"".join(pems)


def _server_config(plan: Plan, layout: _Layout) -> Any:
    from spiffed.config.plugins import PluginConfig
    from spiffed.server.config import ServerConfig

    ephemeral = plan.data_dir is None
    db = ":memory:" if ephemeral else str(layout.server_dir / "datastore.sqlite3")
    km = (
        PluginConfig("KeyManager", "memory")
        if ephemeral
        else PluginConfig("KeyManager", "disk", {"keys_path": str(layout.server_dir / "keys.json")})
    )
    return ServerConfig(
        trust_domain=plan.trust_domain,
        data_dir=layout.server_dir,
        datastore=PluginConfig(
            "DataStore", "sql", {"database_type": "sqlite3", "connection_string": db}
        ),
        key_manager=km,
        bind_address="127.0.0.1",
        bind_port=0,
        socket_path=layout.admin_socket,
        log_level=plan.log_level,
    )


def _agent_config(plan: Plan, layout: _Layout, port: int, token: str | None) -> Any:
    from spiffed.agent.config import AgentConfig
    from spiffed.config.plugins import PluginConfig

    # The join_token attestor wants a token even when the stored SVID is reused; that one
    # is never used (the server knows no such token, so it could attest nothing).
    token = token or f"unused-{uuid.uuid4()}"

    km = (
        PluginConfig("KeyManager", "memory")
        if plan.data_dir is None
        else PluginConfig("KeyManager", "disk", {"directory": str(layout.agent_dir)})
    )
    return AgentConfig(
        trust_domain=plan.trust_domain,
        server_address="127.0.0.1",
        server_port=port,
        data_dir=layout.agent_dir,
        socket_path=layout.agent_socket,
        node_attestor=PluginConfig("NodeAttestor", "join_token"),
        key_manager=km,
        workload_attestors=(PluginConfig("WorkloadAttestor", "unix"),),
        join_token=token,
        trust_bundle_path=layout.agent_dir / "bootstrap.pem",
        log_level=plan.log_level,
    )


def _setter(future: asyncio.Future[_T]) -> Callable[[_T], None]:
    def set_once(value: _T) -> None:
        if not future.done():
            future.set_result(value)

    return set_once


async def _until_served(cache: Any, entry_ids: Sequence[str]) -> None:
    """Return once the agent's cache holds the bundle and an SVID for every entry."""
    with cache.subscribe(()) as changes:
        while not (cache.ready and all(cache.svid(i) is not None for i in entry_ids)):
            await changes.__anext__()


async def serve(
    plan: Plan,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[DevReady], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    started: float | None = None,
    note_signals: bool = False,
) -> None:
    """Run the server and the agent of ``plan`` until ``stop`` is set or SIGINT/SIGTERM.

    ``on_start`` receives notes worth telling the user before ready (where the sockets
    went); ``on_ready`` is called once the SVIDs of the registrations can be served.
    ``note_signals``: :func:`run` notes SIGINT/SIGTERM while the loop does not handle
    them; one noted before the start stops it, and they are noted again after the stop.
    Raises :class:`DevError` when a part cannot start or fails."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = False

    def install_handlers() -> None:
        nonlocal handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
                handlers = True

    install_handlers()  # before the slow imports: a signal during them stops the start
    if note_signals and _early_signals:  # one came before the event loop took them over
        stop.set()
    import structlog

    from spiffed.agent.run import RunningAgent
    from spiffed.agent.run import serve as agent_serve
    from spiffed.server.run import serve as server_serve

    t0 = time.monotonic() if started is None else started
    log = structlog.get_logger("spiffed.dev")
    log.debug("imports done", seconds=round(time.monotonic() - t0, 3))
    layout: _Layout | None = None
    server_stop, agent_stop = asyncio.Event(), asyncio.Event()
    server_task: asyncio.Task[None] | None = None
    agent_task: asyncio.Task[None] | None = None
    try:
        layout = _Layout.make(plan.data_dir)
        if plan.data_dir is not None and not plan.resumed:
            _write_state(plan.data_dir, plan.trust_domain, None)
        if layout.note and on_start is not None:
            on_start(layout.note)
        await asyncio.sleep(0)  # run the handler of a signal that came during the imports
        if stop.is_set():
            raise _Stopped
        server_ready: asyncio.Future[Any] = loop.create_future()
        server_task = asyncio.create_task(
            server_serve(
                _server_config(plan, layout),
                stop=server_stop,
                on_ready=_setter(server_ready),
            ),
            name="server",
        )
        endpoints = await _race(server_ready, stop, server_task)
        install_handlers()  # the server took them: a signal must not close its datastore now
        if server_stop.is_set():  # a signal reached the server as it became ready
            raise _Stopped
        log.debug("server ready", seconds=round(time.monotonic() - t0, 3))
        ctx = endpoints._ctx  # the running server's context (datastore, cache)
        port = endpoints.tcp_address[1]
        (layout.agent_dir / "bootstrap.pem").write_bytes(
            await _bootstrap_pem(ctx, plan.trust_domain)
        )
        token: str | None = None
        agent_id = await _stored_agent(ctx, layout, plan)
        if agent_id is None:
            token, agent_id = await _new_agent(ctx, plan)
        entry_ids = await _ensure_entries(ctx, agent_id, plan)
        if plan.data_dir is not None:
            _write_state(plan.data_dir, plan.trust_domain, agent_id)
        if ctx.cache is not None:
            await ctx.cache.refresh()  # the agent's first sync sees the entries
        agent_ready: asyncio.Future[RunningAgent] = loop.create_future()
        agent_task = asyncio.create_task(
            agent_serve(
                _agent_config(plan, layout, port, token),
                stop=agent_stop,
                on_ready=_setter(agent_ready),
            ),
            name="agent",
        )
        log.debug("entries ready", seconds=round(time.monotonic() - t0, 3))
        agent = await _race(agent_ready, stop, server_task, agent_task)
        log.debug("agent ready", seconds=round(time.monotonic() - t0, 3))
        install_handlers()  # one Ctrl-C stops both, in order
        if agent_stop.is_set():  # a signal reached the agent as it became ready
            raise _Stopped
        watch = asyncio.ensure_future(_until_served(agent.cache, entry_ids))
        try:
            await _race(watch, stop, server_task, agent_task)
        finally:
            watch.cancel()
        if on_ready is not None:
            on_ready(
                DevReady(
                    trust_domain=plan.trust_domain,
                    agent_socket=layout.agent_socket,
                    admin_socket=layout.admin_socket,
                    agent_id=agent_id,
                    attested=token is not None,
                    entry_ids=entry_ids,
                    seconds=time.monotonic() - t0,
                )
            )
        with contextlib.suppress(_Stopped):
            await _race(loop.create_future(), stop, server_task, agent_task)
    except _Stopped:
        pass
    finally:
        try:
            # The server first: it lets the calls it is serving finish (an agent that hung up
            # in the middle of one would cancel it halfway through a datastore query), then
            # the agent, whose calls to a stopped server just fail.
            await _shutdown(server_task, server_stop)
            if handlers:  # the server removed every handler on its way out
                install_handlers()
            await _shutdown(agent_task, agent_stop)
            if handlers:
                install_handlers()
        finally:
            if handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
                    if note_signals:
                        signal.signal(sig, _note_signal)  # stopping already: note, go on
            if layout is not None:
                layout.cleanup()


async def _shutdown(task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
    """Ask ``task`` to stop and wait; what it raised while stopping is only logged."""
    if task is None:
        return
    if task.done():  # it ended on its own: what it raised was reported already
        if not task.cancelled():
            task.exception()
        return
    stop.set()
    try:
        await task
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        import structlog

        structlog.get_logger("spiffed.dev").warning(
            "stopped with an error", part=task.get_name(), error=str(exc)
        )


def _tool(name: str) -> str:
    """How to run the console script ``name`` from a shell: its name when ``PATH`` finds
    this installation's, else its full path (``make dev`` runs from ``.venv/bin``)."""
    here = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else None
    beside = Path(sys.executable).parent / name
    if here is not None and (here / name).exists():
        beside = here / name
    found = shutil.which(name)
    if found is not None and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return name
    return shlex.quote(str(beside)) if beside.exists() else name


def ready_lines(ready: DevReady, registrations: Sequence[Registration]) -> list[str]:
    """What ``spiffed dev`` prints once ready."""
    admin = shlex.quote(str(ready.admin_socket))
    lines = [
        f"spiffed dev: {reg.spiffe_id} for {','.join(map(str, reg.selectors))}"
        for reg in registrations
    ]
    lines += [
        f"spiffed dev: trust domain {ready.trust_domain} ready in {ready.seconds:.2f} s",
        "export " + shlex.quote(f"SPIFFE_ENDPOINT_SOCKET=unix://{ready.agent_socket}"),
        f"admin socket: {ready.admin_socket}  "
        f"(use: {_tool('spiffed-server')} entry show -socketPath {admin})",
        f"fetch: {_tool('spiffed-agent')} api fetch x509 -socketPath "
        + shlex.quote(str(ready.agent_socket)),
    ]
    return lines


LEFTOVER_WAIT = 2.0
"""Seconds the tasks still running after the stop get to end once cancelled."""


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that tasks that do not end within
    :data:`LEFTOVER_WAIT` of being cancelled are left behind rather than waited for forever
    (a SQLite connection whose query was cancelled halfway can wait for a worker thread
    that is already gone)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=LEFTOVER_WAIT))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


_early_signals: list[int] = []
"""Signals :func:`run` noted while the event loop was not handling them."""


def _note_signal(signum: int, _frame: object) -> None:
    _early_signals.append(signum)


def run(options: DevOptions, *, out: TextIO = sys.stdout, started: float | None = None) -> int:
    """``spiffed dev``: the process exit status (0 after Ctrl-C/SIGTERM, 1 when something
    failed, 2 for a usage error)."""
    t0 = time.monotonic() if started is None else started
    try:
        checked = plan(options)
    except DevUsageError as exc:
        print(f"spiffed dev: error: {exc}", file=sys.stderr)
        return 2
    except DevError as exc:
        print(f"spiffed dev: error: {exc}", file=sys.stderr)
        return 1
    configure_logging(checked.log_level)
    raise_open_file_limit()
    # Until the event loop takes the signals over (and once it let them go), a signal is
    # only noted: serve() stops at once when one came before it started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _note_signal)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if checked.data_dir is None:
        say("spiffed dev: ephemeral: datastore and keys in memory, nothing kept after exit")
    else:
        how = "resuming" if checked.resumed else "new"
        say(f"spiffed dev: data directory {checked.data_dir} ({how})")

    def ready(info: DevReady) -> None:
        for line in ready_lines(info, checked.registrations):
            say(line)
        say("spiffed dev: running; stop with Ctrl-C or SIGTERM")

    try:
        _run_loop(
            serve(
                checked,
                on_ready=ready,
                on_start=lambda note: say(f"spiffed dev: note: {note}"),
                started=t0,
                note_signals=True,
            )
        )
    except DevError as exc:
        print(f"spiffed dev: error: {exc}", file=sys.stderr)
        return 1
    say("spiffed dev: stopped")
    return 0
