"""``spiffed-server``: the server's command line (mirrors ``spire-server``).

Flags are spelled as SPIRE's (``-config``, ``-expandEnv``, ``-trustDomain``); the ``--`` form
works too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from spiffed import __version__
from spiffed.config import ConfigError

if TYPE_CHECKING:
    from spiffed.server.config import ServerConfig

VALID_MESSAGE = "SPIRE server configuration file is valid."
"""What SPIRE's ``validate`` prints on success; kept word for word so scripts carry over."""

INVALID_PREFIX = "SPIRE server configuration file is invalid: "
"""SPIRE's prefix for a configuration error, printed on standard error."""

_F = TypeVar("_F", bound=Callable[..., Any])

# (flag, help) for the flags of SPIRE's `run` that override a `server` key; `validate`
# takes the same ones, as SPIRE's does, so it checks exactly what `run` would start with.
_OVERRIDE_FLAGS = (
    ("bindAddress", "IP address or DNS name of the server"),
    ("serverPort", "Port number of the server"),
    ("socketPath", "Path to bind the server API socket to"),
    ("trustDomain", "The trust domain that this server belongs to"),
    ("dataDir", "Directory to store runtime data to"),
    ("logLevel", "'debug', 'info', 'warn', or 'error'"),
    ("logFormat", "'text' or 'json'"),
    ("logFile", "File to write logs to"),
)


def config_flags(func: _F) -> _F:
    """Add ``-config``, ``-expandEnv`` and the ``run`` override flags to a command.

    The command receives ``config_path``, ``expand_env`` and ``overrides`` (flag name to
    value, only the flags given), ready for :func:`spiffed.server.config.load_server_config`.
    """
    for flag, help_text in reversed(_OVERRIDE_FLAGS):
        func = click.option(
            f"-{flag}", f"--{flag}", f"flag_{flag}", default="", metavar="VALUE", help=help_text
        )(func)
    func = click.option(
        "-logSourceLocation",
        "--logSourceLocation",
        "flag_logSourceLocation",
        is_flag=True,
        help="Include source file and line number in log lines",
    )(func)
    func = click.option(
        "-expandEnv",
        "--expandEnv",
        "expand_env",
        is_flag=True,
        help="Expand environment variables in the config file",
    )(func)
    return click.option(
        "-config",
        "--config",
        "config_path",
        default="",
        metavar="PATH",
        help="Path to a SPIRE config file (default conf/server/server.conf)",
    )(func)


def _overrides(expand_env: bool, flags: dict[str, Any]) -> dict[str, str]:
    out = {"expandEnv": "true" if expand_env else ""}
    for key, value in flags.items():
        name = key.removeprefix("flag_")
        if value is True:
            out[name] = "true"
        elif value:
            out[name] = str(value)
    return out


@click.group()
@click.version_option(__version__, prog_name="spiffed-server")
def cli() -> None:
    """spiffed-server: the SPIFFE server (spire-server compatible)."""


@cli.command()
@config_flags
def validate(config_path: str, expand_env: bool, **flags: Any) -> None:
    """Validates a SPIRE server configuration file."""
    from spiffed.server.config import load_server_config

    try:
        config = load_server_config(config_path or None, _overrides(expand_env, flags))
    except ConfigError as exc:
        click.echo(f"{INVALID_PREFIX}{exc}", err=True)
        sys.exit(1)
    notes = _plugin_notes(config)
    if notes:
        # SPIRE's layout for problems a plugin finds in its own configuration.
        click.echo("SPIRE server configuration file is invalid.\nValidation errors:", err=True)
        for plugin, note in notes:
            click.echo(f"\t{plugin}:\n\t\t{note}", err=True)
        sys.exit(1)
    click.echo(VALID_MESSAGE)


@cli.command()
@config_flags
def run(config_path: str, expand_env: bool, **flags: Any) -> None:
    """Runs the server."""
    from spiffed.server.config import load_server_config
    from spiffed.server.run import run as run_server

    try:
        config = load_server_config(config_path or None, _overrides(expand_env, flags))
    except ConfigError as exc:
        click.echo(f"{INVALID_PREFIX}{exc}", err=True)
        sys.exit(1)
    sys.exit(run_server(config))


from spiffed.cli._spire import DEFAULT_SOCKET_PATH  # noqa: E402 - next to its first use


@cli.command()
@click.option(
    "-socketPath",
    "--socketPath",
    "socket_path",
    default=DEFAULT_SOCKET_PATH,
    metavar="PATH",
    help="Path to the SPIRE Server API socket",
)
@click.option("-shallow", "--shallow", is_flag=True, help="Perform a less stringent health check")
@click.option("-verbose", "--verbose", is_flag=True, help="Print verbose information")
def healthcheck(socket_path: str, shallow: bool, verbose: bool) -> None:
    """Determines server health status."""
    import asyncio

    from spiffed.cli._spire import check_health, fail

    if verbose:
        click.echo("Checking server health...")
    ok, detail = asyncio.run(check_health(socket_path, verbose=verbose))
    if not ok:
        if detail.startswith("Failed to check health: "):
            if verbose:
                click.echo(detail, err=True)
            detail = "unable to determine health"
        fail(f"server is unhealthy: {detail}")
    click.echo("Server is healthy.")


def _plugin_notes(config: ServerConfig) -> list[tuple[str, str]]:
    """Let each built-in plugin that can check its settings without side effects do so
    (SPIRE's ``validate`` asks every plugin too): x509pop loads its CA bundles."""
    from spiffed.server.nodeattestor import AttestationError
    from spiffed.server.nodeattestor.x509pop import X509PopAttestor

    notes = []
    for plugin in config.node_attestors:
        if plugin.name == "x509pop":
            try:
                X509PopAttestor.from_config(config.trust_domain, plugin.options)
            except AttestationError as exc:
                name = f'NodeAttestor "{plugin.name}"'
                notes.append((name, exc.message.removeprefix(f"{name}: ")))
    return notes


def main() -> None:
    """Console-script entry point."""
    cli()


# --- admin commands over the local socket (spire-server's CLI) --------------------------

from spiffed.cli._spire import (  # noqa: E402 - grouped with the commands that use them
    call,
    fail,
    id_to_proto,
    id_to_str,
    output_option,
    parse_selector,
    pluralize,
    print_bundle,
    print_entry,
    print_json,
    socket_option,
)

_MATCH = ("exact", "any", "superset", "subset")


def _multi(name: str, help_text: str) -> Callable[[_F], _F]:
    return click.option(f"-{name}", f"--{name}", name, multiple=True, help=help_text)


def _opt(name: str, help_text: str, dest: str = "", **kw: Any) -> Callable[[_F], _F]:
    return click.option(f"-{name}", f"--{name}", dest or name, help=help_text, **kw)


@cli.group()
def entry() -> None:
    """Manage registration entries."""


def _entry_flags(func: _F) -> _F:
    for decorator in reversed(
        [
            _opt("entryID", "A custom ID for this registration entry (optional)", default=""),
            _opt("spiffeID", "The SPIFFE ID that this record represents", default=""),
            _opt("parentID", "The SPIFFE ID of this record's parent", default=""),
            _multi("selector", "A colon-delimited type:value selector. Can be used more than once"),
            _opt("node", "If set, this entry will be applied to matching nodes", is_flag=True),
            _opt("x509SVIDTTL", "The lifetime, in seconds, for x509-SVIDs", default=0, type=int),
            _opt("jwtSVIDTTL", "The lifetime, in seconds, for JWT-SVIDs", default=0, type=int),
            _multi("federatesWith", "SPIFFE ID of a trust domain to federate with"),
            _multi("dns", "A DNS name that will be included in SVIDs for this entry"),
            _opt(
                "admin",
                "If set, the SPIFFE ID in this entry will be granted access to the "
                "SPIRE Server's management APIs",
                is_flag=True,
            ),
            _opt(
                "downstream",
                "A boolean value that, when set, indicates that the entry "
                "describes a downstream SPIRE server",
                is_flag=True,
            ),
            _opt(
                "storeSVID",
                "A boolean value that, when set, indicates that the resulting "
                "issued SVID from this entry must be stored through an SVIDStore plugin",
                is_flag=True,
            ),
            _opt(
                "entryExpiry",
                "An expiry, from epoch in seconds, for the resulting "
                "registration entry to be pruned",
                default=0,
                type=int,
            ),
            _opt(
                "hint",
                "The entry hint, used to disambiguate entries with the same SPIFFE ID",
                default="",
            ),
            _opt(
                "data",
                "Path to a file containing registration JSON (optional). If set to "
                "'-', read the JSON from stdin.",
                "path",
                default="",
            ),
            socket_option,
            output_option,
        ]
    ):
        func = decorator(func)
    return func


def _entry_from_flags(o: dict[str, Any], *, update: bool) -> Any:
    from spiffed._proto.spire.api.types import entry_pb2 as types_entry

    if not o["selector"]:
        fail("at least one selector is required")
    if o["node"] and o["federatesWith"]:
        fail("node entries can not federate")
    if not o["parentID"] and not o["node"]:
        fail("a parent ID is required if the node flag is not set")
    if not o["spiffeID"]:
        fail("a SPIFFE ID is required")
    if o["x509SVIDTTL"] < 0:
        fail("a positive x509-SVID TTL is required")
    if o["jwtSVIDTTL"] < 0:
        fail("a positive JWT-SVID TTL is required")
    spiffe_id = id_to_proto(o["spiffeID"])
    if o["node"]:
        from spiffed._proto.spire.api.types import spiffeid_pb2

        parent = spiffeid_pb2.SPIFFEID(trust_domain=spiffe_id.trust_domain, path="/spire/server")
    else:
        parent = id_to_proto(o["parentID"])
    return types_entry.Entry(
        id=o["entryID"],
        spiffe_id=spiffe_id,
        parent_id=parent,
        selectors=[parse_selector(s) for s in o["selector"]],
        x509_svid_ttl=o["x509SVIDTTL"],
        jwt_svid_ttl=o["jwtSVIDTTL"],
        federates_with=list(o["federatesWith"]),
        dns_names=list(o["dns"]),
        admin=o["admin"],
        downstream=o["downstream"],
        store_svid=o["storeSVID"],
        expires_at=o["entryExpiry"],
        hint=o["hint"],
    )


def _entries_from_json(path: str) -> list[Any]:
    """SPIRE's ``-data`` file: ``{"entries": [{"spiffe_id": ..., "selectors": [...]}]}``."""
    import json

    from spiffed._proto.spire.api.types import entry_pb2 as types_entry

    try:
        raw = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    items = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        fail('registration JSON must be an object with an "entries" list')
    out = []
    for item in items:
        if not isinstance(item, dict):
            fail("each registration entry must be a JSON object")
        low = {k.lower(): v for k, v in item.items()}
        sels = [
            parse_selector(f"{s.get('type', '')}:{s.get('value', '')}")
            for s in low.get("selectors") or []
        ]
        out.append(
            types_entry.Entry(
                id=str(low.get("entry_id") or ""),
                spiffe_id=id_to_proto(str(low.get("spiffe_id") or "")),
                parent_id=id_to_proto(str(low.get("parent_id") or "")),
                selectors=sels,
                x509_svid_ttl=int(low.get("x509_svid_ttl") or low.get("ttl") or 0),
                jwt_svid_ttl=int(low.get("jwt_svid_ttl") or 0),
                federates_with=[str(t) for t in low.get("federates_with") or []],
                dns_names=[str(d) for d in low.get("dns_names") or []],
                admin=bool(low.get("admin")),
                downstream=bool(low.get("downstream")),
                store_svid=bool(low.get("store_svid")),
                expires_at=int(low.get("entryexpiry") or 0),
                hint=str(low.get("hint") or ""),
            )
        )
    return out


def _print_batch(resp: Any, entries: list[Any], verb: str, output: str) -> None:
    from grpclib.const import Status

    from spiffed.cli._spire import status_name

    if output == "json":
        print_json(resp)
        return
    failed = []
    for i, result in enumerate(resp.results):
        if result.status.code == 0:
            print_entry(result.entry)
        else:
            failed.append((result, entries[i]))
    for result, sent in failed:
        click.echo(
            f"Failed to {verb} the following entry (code: {status_name(Status(result.status.code))}"
            f', msg: "{result.status.message}"):',
            err=True,
        )
        print_entry(sent, err=True)
    if failed:
        fail(f"failed to {verb} one or more entries")


@entry.command("create")
@_entry_flags
def entry_create(socket_path: str, output: str, path: str, **o: Any) -> None:
    """Creates registration entries."""
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2

    entries = _entries_from_json(path) if path else [_entry_from_flags(o, update=False)]
    resp = call(
        socket_path,
        lambda ch: entry_grpc.EntryStub(ch).BatchCreateEntry(
            entry_pb2.BatchCreateEntryRequest(entries=entries)
        ),
    )
    _print_batch(resp, entries, "create", output)


@entry.command("update")
@_entry_flags
def entry_update(socket_path: str, output: str, path: str, **o: Any) -> None:
    """Updates registration entries."""
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2

    if path:
        entries = _entries_from_json(path)
    else:
        if not o["entryID"]:
            fail("entry ID is required")
        entries = [_entry_from_flags(o, update=True)]
    resp = call(
        socket_path,
        lambda ch: entry_grpc.EntryStub(ch).BatchUpdateEntry(
            entry_pb2.BatchUpdateEntryRequest(entries=entries)
        ),
    )
    _print_batch(resp, entries, "update", output)


def _entry_filter(o: dict[str, Any]) -> Any:
    from google.protobuf import wrappers_pb2

    from spiffed._proto.spire.api.server.entry.v1 import entry_pb2
    from spiffed._proto.spire.api.types import federateswith_pb2, selector_pb2

    flt = entry_pb2.ListEntriesRequest.Filter()
    if o.get("spiffeID"):
        flt.by_spiffe_id.CopyFrom(id_to_proto(o["spiffeID"]))
    if o.get("parentID"):
        flt.by_parent_id.CopyFrom(id_to_proto(o["parentID"]))
    if o.get("selector"):
        match = o.get("matchSelectorsOn", "superset")
        flt.by_selectors.CopyFrom(
            selector_pb2.SelectorMatch(
                selectors=[parse_selector(s) for s in o["selector"]],
                match=selector_pb2.SelectorMatch.MatchBehavior.Value(f"MATCH_{match.upper()}"),
            )
        )
    if o.get("federatesWith"):
        match = o.get("matchFederatesWithOn", "superset")
        flt.by_federates_with.CopyFrom(
            federateswith_pb2.FederatesWithMatch(
                trust_domains=list(o["federatesWith"]),
                match=federateswith_pb2.FederatesWithMatch.MatchBehavior.Value(
                    f"MATCH_{match.upper()}"
                ),
            )
        )
    if o.get("hint"):
        flt.by_hint.CopyFrom(wrappers_pb2.StringValue(value=o["hint"]))
    if o.get("downstream"):
        flt.by_downstream.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return flt


def _filter_flags(func: _F) -> _F:
    for decorator in reversed(
        [
            _opt("spiffeID", "The SPIFFE ID of the records to show", default=""),
            _opt("parentID", "The Parent ID of the records to show", default=""),
            _multi("selector", "A colon-delimited type:value selector. Can be used more than once"),
            _multi("federatesWith", "SPIFFE ID of a trust domain an entry is federate with"),
            _opt(
                "downstream",
                "A boolean value that, when set, indicates that the entry "
                "describes a downstream SPIRE server",
                is_flag=True,
            ),
            _opt("hint", "The Hint of the records to show (optional)", default=""),
            _opt(
                "matchSelectorsOn",
                "The match mode used when filtering by selectors. "
                "Options: exact, any, superset and subset",
                default="superset",
                type=click.Choice(_MATCH),
            ),
            _opt(
                "matchFederatesWithOn",
                "The match mode used when filtering by federates "
                "with. Options: exact, any, superset and subset",
                default="superset",
                type=click.Choice(_MATCH),
            ),
            socket_option,
            output_option,
        ]
    ):
        func = decorator(func)
    return func


@entry.command("show")
@_opt("entryID", "The Entry ID of the records to show", default="")
@_filter_flags
def entry_show(socket_path: str, output: str, entryID: str, **o: Any) -> None:
    """Displays configured registration entries."""
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2

    async def fetch(ch: Any) -> Any:
        stub = entry_grpc.EntryStub(ch)
        if entryID:
            got = await stub.GetEntry(entry_pb2.GetEntryRequest(id=entryID))
            return entry_pb2.ListEntriesResponse(entries=[got])
        out = entry_pb2.ListEntriesResponse()
        token = ""
        while True:
            page = await stub.ListEntries(
                entry_pb2.ListEntriesRequest(filter=_entry_filter(o), page_token=token)
            )
            out.entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return out

    resp = call(socket_path, fetch)
    entries = sorted(
        resp.entries,
        key=lambda e: (id_to_str(e.spiffe_id), id_to_str(e.parent_id), e.id),
    )
    if output == "json":
        print_json(resp)
        return
    click.echo(pluralize(f"Found {len(entries)} ", "entry", "entries", len(entries)))
    for e in entries:
        print_entry(e)


@entry.command("count")
@_filter_flags
def entry_count(socket_path: str, output: str, **o: Any) -> None:
    """Count registration entries."""
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2

    flt = _entry_filter(o)
    resp = call(
        socket_path,
        lambda ch: entry_grpc.EntryStub(ch).CountEntries(
            entry_pb2.CountEntriesRequest(
                filter=entry_pb2.CountEntriesRequest.Filter(
                    **{f.name: v for f, v in flt.ListFields()}
                )
            )
        ),
    )
    if output == "json":
        print_json(resp)
        return
    click.echo(pluralize(f"{resp.count} registration ", "entry", "entries", resp.count))


@entry.command("delete")
@_opt("entryID", "The Registration Entry ID of the record to delete.", default="")
@_opt(
    "file",
    "Path to a file containing a JSON structure for batch deletion (optional). "
    "If set to '-', read from stdin.",
    default="",
)
@socket_option
@output_option
def entry_delete(socket_path: str, output: str, entryID: str, file: str) -> None:
    """Deletes registration entries."""
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
    from spiffed.cli._spire import status_name

    ids = [entryID] if entryID else []
    if file:
        ids = [e.id for e in _entries_from_json(file)]
    if not ids:
        fail("an entry ID is required")
    resp = call(
        socket_path,
        lambda ch: entry_grpc.EntryStub(ch).BatchDeleteEntry(
            entry_pb2.BatchDeleteEntryRequest(ids=ids)
        ),
    )
    if output == "json":
        print_json(resp)
        return
    ok = [r for r in resp.results if r.status.code == 0]
    bad = [r for r in resp.results if r.status.code != 0]
    for r in ok:
        click.echo(f"Deleted entry with ID: {r.id}")
    if ok:
        click.echo("\n")
    for r in bad:
        click.echo(
            f"Failed to delete entry with ID {r.id} (code: {status_name(r.status.code)}, "
            f'msg: "{r.status.message}")',
            err=True,
        )
    if bad:
        click.echo("\n")
        if ok:
            summary = (
                f"Deleted {len(ok)} entries successfully, but failed to delete {len(bad)} entries"
            )
        else:
            summary = f"Failed to delete {len(bad)} entries"
        click.echo(summary, nl=False)
        click.echo("", err=True)
        fail("failed to delete one or more entries")
    click.echo(f"Deleted {len(ok)} entries successfully", nl=False)


# --- bundle -----------------------------------------------------------------------------

_FORMAT = click.Choice(["pem", "spiffe"])
_DER = __import__(
    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
).Encoding.DER


@cli.group()
def bundle() -> None:
    """Manage trust bundles."""


@bundle.command("show")
@_opt(
    "format",
    "The format to show the bundle (only pretty output format supports this "
    'flag). Either "pem" or "spiffe".',
    "fmt",
    default="pem",
    type=_FORMAT,
)
@socket_option
@output_option
def bundle_show(socket_path: str, output: str, fmt: str) -> None:
    """Prints server CA bundle to stdout."""
    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2

    resp = call(
        socket_path, lambda ch: bundle_grpc.BundleStub(ch).GetBundle(bundle_pb2.GetBundleRequest())
    )
    if output == "json":
        print_json(resp)
        return
    print_bundle(resp, fmt)


@bundle.command("count")
@socket_option
@output_option
def bundle_count(socket_path: str, output: str) -> None:
    """Count bundles."""
    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2

    resp = call(
        socket_path,
        lambda ch: bundle_grpc.BundleStub(ch).CountBundles(bundle_pb2.CountBundlesRequest()),
    )
    if output == "json":
        print_json(resp)
        return
    click.echo(pluralize(f"{resp.count} ", "bundle", "bundles", resp.count))


def _td_name(spiffe_id: str, flag: str = "id") -> str:
    from spiffed.spiffeid import SpiffeIdError, TrustDomain

    if not spiffe_id:
        fail(f"{flag} flag is required" if flag == "id" else f"{flag} is required")
    try:
        return TrustDomain.parse(spiffe_id).name
    except SpiffeIdError as exc:
        fail(str(exc))


_HEADER = "****************************************\n* {}\n****************************************"


@bundle.command("list")
@_opt("id", "SPIFFE ID of the trust domain", "td", default="")
@_opt(
    "format",
    "The format to list federated bundles (only pretty output format supports "
    'this flag). Either "pem" or "spiffe".',
    "fmt",
    default="pem",
    type=_FORMAT,
)
@socket_option
@output_option
def bundle_list(socket_path: str, output: str, td: str, fmt: str) -> None:
    """Lists federated bundle data."""
    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2

    if td:
        req = bundle_pb2.GetFederatedBundleRequest(trust_domain=_td_name(td))
        one = call(socket_path, lambda ch: bundle_grpc.BundleStub(ch).GetFederatedBundle(req))
        if output == "json":
            print_json(one)
        else:
            print_bundle(one, fmt)
        return

    async def fetch(ch: Any) -> Any:
        stub = bundle_grpc.BundleStub(ch)
        out = bundle_pb2.ListFederatedBundlesResponse()
        token = ""
        while True:
            page = await stub.ListFederatedBundles(
                bundle_pb2.ListFederatedBundlesRequest(page_token=token)
            )
            out.bundles.extend(page.bundles)
            token = page.next_page_token
            if not token:
                return out

    resp = call(socket_path, fetch)
    if output == "json":
        print_json(resp)
        return
    for i, b in enumerate(resp.bundles):
        if i:
            click.echo("")
        click.echo(_HEADER.format(b.trust_domain))
        print_bundle(b, fmt)


@bundle.command("set")
@_opt("id", "SPIFFE ID of the trust domain", "td", default="")
@_opt("path", "Path to the bundle data", default="")
@_opt(
    "format",
    'The format of the bundle data. Either "pem" or "spiffe".',
    "fmt",
    default="pem",
    type=_FORMAT,
)
@socket_option
@output_option
def bundle_set(socket_path: str, output: str, td: str, path: str, fmt: str) -> None:
    """Creates or updates federated bundle data."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives.serialization import Encoding

    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
    from spiffed._proto.spire.api.types import bundle_pb2 as types_bundle
    from spiffed.cli._spire import bundle_from_spiffe

    name = _td_name(td)
    try:
        data = sys.stdin.buffer.read() if not path else open(path, "rb").read()  # noqa: SIM115
    except OSError as exc:
        fail(f"unable to load bundle data: {exc}")
    if fmt == "pem":
        try:
            certs = cx509.load_pem_x509_certificates(data)
        except ValueError as exc:
            fail(f"unable to parse bundle data: {exc}")
        msg = types_bundle.Bundle(
            trust_domain=name,
            x509_authorities=[
                types_bundle.X509Certificate(asn1=c.public_bytes(Encoding.DER)) for c in certs
            ],
        )
    else:
        msg = bundle_from_spiffe(name, data)
    req = bundle_pb2.BatchSetFederatedBundleRequest(bundle=[msg])
    resp = call(
        socket_path,
        lambda ch: bundle_grpc.BundleStub(ch).BatchSetFederatedBundle(req),
        what="failed to set federated bundle",
    )
    if output == "json":
        print_json(resp)
        return
    result = resp.results[0]
    if result.status.code != 0:
        fail(f"failed to set federated bundle: {result.status.message}")
    click.echo("bundle set.")


@bundle.command("delete")
@_opt("id", "SPIFFE ID of the trust domain", "td", default="")
@_opt("mode", "Deletion mode: one of restrict, delete, or dissociate", default="restrict")
@socket_option
@output_option
def bundle_delete(socket_path: str, output: str, td: str, mode: str) -> None:
    """Deletes federated bundle data."""
    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2

    if not td:
        fail("id is required")
    modes = bundle_pb2.BatchDeleteFederatedBundleRequest.Mode
    if mode not in ("restrict", "delete", "dissociate"):
        fail(f'unsupported mode "{mode}"')
    req = bundle_pb2.BatchDeleteFederatedBundleRequest(
        trust_domains=[_td_name(td)], mode=modes.Value(mode.upper())
    )
    resp = call(
        socket_path,
        lambda ch: bundle_grpc.BundleStub(ch).BatchDeleteFederatedBundle(req),
        what="failed to delete federated bundle",
    )
    if output == "json":
        print_json(resp)
        return
    result = resp.results[0]
    if result.status.code != 0:
        fail(f'failed to delete federated bundle "{result.trust_domain}": {result.status.message}')
    click.echo("bundle deleted.")


# --- token, x509, jwt ---------------------------------------------------------------------


@cli.group()
def token() -> None:
    """Manage join tokens."""


@token.command("generate")
@_opt("spiffeID", "Additional SPIFFE ID to assign the token owner (optional)", default="")
@_opt("ttl", "Token TTL in seconds", default=600, type=int)
@socket_option
@output_option
def token_generate(socket_path: str, output: str, spiffeID: str, ttl: int) -> None:
    """Generates a join token."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    req = agent_pb2.CreateJoinTokenRequest(ttl=ttl)
    if spiffeID:
        req.agent_id.CopyFrom(id_to_proto(spiffeID))
    resp = call(socket_path, lambda ch: agent_grpc.AgentStub(ch).CreateJoinToken(req))
    if output == "json":
        print_json(resp)
        return
    click.echo(f"Token: {resp.value}")
    if not spiffeID:
        click.echo("Warning: Missing SPIFFE ID.")


@cli.group()
def x509() -> None:
    """Mint X509-SVIDs."""


@x509.command("mint")
@_opt("spiffeID", "SPIFFE ID of the X509-SVID", default="")
@_opt("ttl", "TTL of the X509-SVID (e.g. 1h, 90s; 0 for the server default)", default="0s")
@_multi("dns", "DNS name that will be included in SVID. Can be used more than once")
@_opt("write", "Directory to write output to instead of stdout", default="")
@socket_option
@output_option
def x509_mint(
    *,
    socket_path: str,
    output: str,
    spiffeID: str,
    ttl: str,
    dns: tuple[str, ...],
    write: str,
) -> None:
    """Mints an X509-SVID."""
    import json
    import os
    from datetime import UTC, datetime

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
    from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
    from spiffed.cli._spire import pem_certificates

    if not spiffeID:
        fail("spiffeID must be specified")
    id_to_proto(spiffeID)
    seconds = _ttl_seconds(ttl)
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[cx509.GeneralName] = [cx509.UniformResourceIdentifier(spiffeID)]
    san += [cx509.DNSName(d) for d in dns]
    csr = (
        cx509.CertificateSigningRequestBuilder()
        .subject_name(cx509.Name([]))
        .add_extension(cx509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )

    async def mint(ch: Any) -> Any:
        svid = await svid_grpc.SVIDStub(ch).MintX509SVID(
            svid_pb2.MintX509SVIDRequest(
                csr=csr.public_bytes(serialization.Encoding.DER), ttl=seconds
            )
        )
        roots = await bundle_grpc.BundleStub(ch).GetBundle(bundle_pb2.GetBundleRequest())
        return svid, roots

    resp, ca = call(socket_path, mint, what="unable to mint SVID")
    if not resp.svid.cert_chain:
        fail("server response missing SVID chain")
    if not ca.x509_authorities:
        fail("server response missing X509 Authorities")
    if seconds and resp.svid.expires_at - datetime.now(UTC).timestamp() < seconds - 5:
        eol = datetime.fromtimestamp(resp.svid.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(
            f'X509-SVID lifetime was capped shorter than specified ttl; expires "{eol}"', err=True
        )
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    svid_pem = pem_certificates(resp.svid.cert_chain)
    bundle_pem = pem_certificates(a.asn1 for a in ca.x509_authorities)
    if not write:
        if output == "json":
            import base64

            def b64(items: Any) -> list[str]:
                return [base64.b64encode(i).decode() for i in items]

            doc = {
                "x509_svid": b64(resp.svid.cert_chain),
                "private_key": base64.b64encode(key_der).decode(),
                "root_cas": b64(a.asn1 for a in ca.x509_authorities),
            }
            click.echo(json.dumps(doc))
            return
        click.echo(f"X509-SVID:\n{svid_pem}\nPrivate key:\n{key_pem}\nRoot CAs:\n{bundle_pem}")
        return
    paths = {n: os.path.join(write, f"{n}.pem") for n in ("svid", "key", "bundle")}
    try:
        _write_file(paths["svid"], svid_pem, 0o644)
        click.echo(f"X509-SVID written to {paths['svid']}")
        _write_file(paths["key"], key_pem, 0o600)
        click.echo(f"Private key written to {paths['key']}")
        _write_file(paths["bundle"], bundle_pem, 0o644)
    except OSError as exc:
        fail(f"unable to write: {exc}")
    click.echo(f"Root CAs written to {paths['bundle']}")


def _write_file(path: str, text: str, mode: int) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _ttl_seconds(text: str) -> int:
    from spiffed.config import ConfigError as _CE
    from spiffed.config import parse_duration

    try:
        return int(parse_duration(text).total_seconds())
    except _CE as exc:
        fail(f"invalid value for TTL: {exc}")


@cli.group()
def jwt() -> None:
    """Mint JWT-SVIDs."""


@jwt.command("mint")
@_opt("spiffeID", "SPIFFE ID of the JWT-SVID", default="")
@_multi("audience", "Audience claim that will be included in the SVID. Can be used more than once")
@_opt("ttl", "TTL of the JWT-SVID (e.g. 5m; 0 for the server default)", default="0s")
@_opt("write", "File to write token to instead of stdout", default="")
@socket_option
@output_option
def jwt_mint(
    *,
    socket_path: str,
    output: str,
    spiffeID: str,
    audience: tuple[str, ...],
    ttl: str,
    write: str,
) -> None:
    """Mints a JWT-SVID."""
    from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2

    if not spiffeID:
        fail("spiffeID must be specified")
    if not audience:
        fail("at least one audience must be specified")
    req = svid_pb2.MintJWTSVIDRequest(
        id=id_to_proto(spiffeID), audience=list(audience), ttl=_ttl_seconds(ttl)
    )
    resp = call(
        socket_path,
        lambda ch: svid_grpc.SVIDStub(ch).MintJWTSVID(req),
        what="unable to mint SVID",
    )
    if not write:
        if output == "json":
            print_json(resp)
        else:
            click.echo(resp.svid.token)
        return
    try:
        _write_file(write, resp.svid.token, 0o600)
    except OSError as exc:
        fail(f"unable to write token: {exc}")
    click.echo(f"JWT-SVID written to {write}")


# --- agent ------------------------------------------------------------------------------


def _go_time(seconds: int) -> str:
    """Go's ``time.Time.String()`` of a Unix time, in UTC."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def _print_agent(a: Any) -> None:
    click.echo(f"SPIFFE ID         : {id_to_str(a.id)}")
    click.echo(f"Attestation type  : {a.attestation_type}")
    click.echo(f"Expiration time   : {_go_time(a.x509svid_expires_at)}")
    if a.banned:
        click.echo("Banned            : true")
    else:
        click.echo(f"Serial number     : {a.x509svid_serial_number}")
    click.echo(f"Can re-attest     : {'true' if a.can_reattest else 'false'}")
    if a.agent_version:
        click.echo(f"Agent version     : {a.agent_version}")
    click.echo("")


@cli.group()
def agent() -> None:
    """Manage attested agents."""


def _agent_filter_flags(func: _F) -> _F:
    for decorator in reversed(
        [
            _multi("selector", "A colon-delimited type:value selector. Can be used more than once"),
            _opt(
                "attestationType",
                "Filter by attestation type, like join_token or x509pop.",
                default="",
            ),
            _opt(
                "canReattest",
                "Filter based on string received, 'true': agents that can "
                "reattest, 'false': agents that can't reattest, other value will return all.",
                default="",
            ),
            _opt(
                "banned",
                "Filter based on string received, 'true': banned agents, 'false': "
                "not banned agents, other value will return all.",
                default="",
            ),
            _opt(
                "expiresBefore",
                'Filter by expiration time (format: "2006-01-02 15:04:05 -0700 -07")',
                default="",
            ),
            _opt(
                "matchSelectorsOn",
                "The match mode used when filtering by selectors. "
                "Options: exact, any, superset and subset",
                default="superset",
                type=click.Choice(_MATCH),
            ),
            socket_option,
            output_option,
        ]
    ):
        func = decorator(func)
    return func


def _agent_filter(o: dict[str, Any]) -> Any:
    from google.protobuf import wrappers_pb2

    from spiffed._proto.spire.api.server.agent.v1 import agent_pb2
    from spiffed._proto.spire.api.types import selector_pb2

    flt = agent_pb2.ListAgentsRequest.Filter(
        by_attestation_type=o["attestationType"], by_expires_before=o["expiresBefore"]
    )
    if o["selector"]:
        flt.by_selector_match.CopyFrom(
            selector_pb2.SelectorMatch(
                selectors=[parse_selector(s) for s in o["selector"]],
                match=selector_pb2.SelectorMatch.MatchBehavior.Value(
                    f"MATCH_{o['matchSelectorsOn'].upper()}"
                ),
            )
        )
    for flag, field in (("banned", "by_banned"), ("canReattest", "by_can_reattest")):
        if o[flag] in ("true", "false"):
            getattr(flt, field).CopyFrom(wrappers_pb2.BoolValue(value=o[flag] == "true"))
    return flt


@agent.command("list")
@_agent_filter_flags
def agent_list(socket_path: str, output: str, **o: Any) -> None:
    """Lists attested agents and their SPIFFE IDs."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    async def fetch(ch: Any) -> Any:
        stub = agent_grpc.AgentStub(ch)
        out = agent_pb2.ListAgentsResponse()
        token = ""
        while True:
            page = await stub.ListAgents(
                agent_pb2.ListAgentsRequest(filter=_agent_filter(o), page_token=token)
            )
            out.agents.extend(page.agents)
            token = page.next_page_token
            if not token:
                return out

    resp = call(socket_path, fetch)
    if output == "json":
        print_json(resp)
        return
    if not resp.agents:
        click.echo("No attested agents found")
        return
    n = len(resp.agents)
    click.echo(pluralize(f"Found {n} attested ", "agent", "agents", n) + ":\n")
    for a in resp.agents:
        _print_agent(a)


@agent.command("count")
@_agent_filter_flags
def agent_count(socket_path: str, output: str, **o: Any) -> None:
    """Count attested agents."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    flt = _agent_filter(o)
    req = agent_pb2.CountAgentsRequest(
        filter=agent_pb2.CountAgentsRequest.Filter(**{f.name: v for f, v in flt.ListFields()})
    )
    resp = call(socket_path, lambda ch: agent_grpc.AgentStub(ch).CountAgents(req))
    if output == "json":
        print_json(resp)
        return
    click.echo(pluralize(f"{resp.count} attested ", "agent", "agents", resp.count))


def _agent_id(spiffe_id: str) -> Any:
    if not spiffe_id:
        fail("a SPIFFE ID is required")
    return id_to_proto(spiffe_id)


@agent.command("show")
@_opt("spiffeID", "The SPIFFE ID of the agent to show (agent identity)", default="")
@socket_option
@output_option
def agent_show(socket_path: str, output: str, spiffeID: str) -> None:
    """Shows the details of an attested agent given its SPIFFE ID."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    req = agent_pb2.GetAgentRequest(id=_agent_id(spiffeID))
    resp = call(socket_path, lambda ch: agent_grpc.AgentStub(ch).GetAgent(req))
    if output == "json":
        print_json(resp)
        return
    click.echo("Found an attested agent given its SPIFFE ID\n")
    _print_agent(resp)
    for s in resp.selectors:
        click.echo(f"Selectors         : {s.type}:{s.value}")


@agent.command("ban")
@_opt("spiffeID", "The SPIFFE ID of the agent to ban (agent identity)", default="")
@socket_option
@output_option
def agent_ban(socket_path: str, output: str, spiffeID: str) -> None:
    """Ban an attested agent given its SPIFFE ID."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    req = agent_pb2.BanAgentRequest(id=_agent_id(spiffeID))
    resp = call(socket_path, lambda ch: agent_grpc.AgentStub(ch).BanAgent(req))
    if output == "json":
        print_json(resp)
        return
    click.echo("Agent banned successfully")


@agent.command("evict")
@_opt("spiffeID", "The SPIFFE ID of the agent to evict (agent identity)", default="")
@socket_option
@output_option
def agent_evict(socket_path: str, output: str, spiffeID: str) -> None:
    """Evicts an attested agent given its SPIFFE ID."""
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2

    req = agent_pb2.DeleteAgentRequest(id=_agent_id(spiffeID))
    resp = call(socket_path, lambda ch: agent_grpc.AgentStub(ch).DeleteAgent(req))
    if output == "json":
        print_json(resp)
        return
    click.echo("Agent evicted successfully")


# --- localauthority ---------------------------------------------------------------------


@cli.group()
def localauthority() -> None:
    """Manage local authorities (forced rotation, key compromise recovery)."""


def _print_authority(state: Any, *, x509_kind: bool) -> None:
    click.echo(f"  Authority ID: {state.authority_id}")
    click.echo(f"  Expires at: {_go_time(state.expires_at)}")
    if not x509_kind:
        return
    if state.upstream_authority_subject_key_id:
        click.echo(
            f"  Upstream authority Subject Key ID: {state.upstream_authority_subject_key_id}"
        )
    else:
        click.echo("  Upstream authority ID: No upstream authority")


def _authority_group(kind: str) -> click.Group:
    label = "X.509" if kind == "X509" else "JWT"
    x509_kind = kind == "X509"

    @click.group(name=kind.lower())
    def group() -> None:
        pass

    group.__doc__ = f"Manage {label} authorities."

    def stub(ch: Any) -> Any:
        from spiffed._proto.spire.api.server.localauthority.v1 import localauthority_grpc

        return localauthority_grpc.LocalAuthorityStub(ch)

    def pb() -> Any:
        from spiffed._proto.spire.api.server.localauthority.v1 import localauthority_pb2

        return localauthority_pb2

    @group.command("show", help=f"Shows the local {label} authorities")
    @socket_option
    @output_option
    def show(socket_path: str, output: str) -> None:
        req = getattr(pb(), f"Get{kind}AuthorityStateRequest")()
        resp = call(socket_path, lambda ch: getattr(stub(ch), f"Get{kind}AuthorityState")(req))
        if output == "json":
            print_json(resp)
            return
        for i, (name, field) in enumerate(
            (("Active", "active"), ("Prepared", "prepared"), ("Old", "old"))
        ):
            if i:
                click.echo("")
            click.echo(f"{name} {label} authority:")
            if resp.HasField(field):
                _print_authority(getattr(resp, field), x509_kind=x509_kind)
            else:
                click.echo(f"  No {name.lower()} {label} authority found")

    def verb_command(verb: str, past: str, needs_id: bool, help_text: str) -> None:
        def run(socket_path: str, output: str, authority_id: str = "") -> None:
            if needs_id and not authority_id:
                fail("an authority ID is required")
            req_type = getattr(pb(), f"{verb}{kind}AuthorityRequest")
            req = req_type(authority_id=authority_id) if needs_id else req_type()
            resp = call(socket_path, lambda ch: getattr(stub(ch), f"{verb}{kind}Authority")(req))
            if output == "json":
                print_json(resp)
                return
            click.echo(f"{past.capitalize()} {label} authority:")
            _print_authority(getattr(resp, f"{past}_authority"), x509_kind=x509_kind)

        command: Any = run
        if needs_id:
            command = click.option(
                "-authorityID",
                "--authorityID",
                "authority_id",
                default="",
                help=f"The authority ID of the {label} authority to {verb.lower()}",
            )(command)
        command = output_option(socket_option(command))
        group.command(verb.lower(), help=help_text)(command)

    verb_command("Prepare", "prepared", False, f"Prepares a new {label} authority for use")
    verb_command("Activate", "activated", True, f"Activates a prepared {label} authority")
    verb_command(
        "Taint", "tainted", True, f"Marks the previously active {label} authority as being tainted"
    )
    verb_command(
        "Revoke",
        "revoked",
        True,
        f"Revokes the previously active {label} authority "
        "by removing it from the bundle and propagating this update throughout the "
        "cluster",
    )
    return group


localauthority.add_command(_authority_group("X509"))
localauthority.add_command(_authority_group("JWT"))
