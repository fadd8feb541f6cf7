"""The server's configuration: SPIRE's ``server.conf`` layout read into a typed ``ServerConfig``.

``load_server_config(path, overrides)`` is what ``spiffed-server run`` and ``validate`` call:
it reads the file (HCL, or JSON), expands ``$VAR`` when ``expandEnv`` is set, lets the
command-line flags override the file as SPIRE's ``run`` does, fills in SPIRE's defaults,
and checks everything. Any mistake is a :class:`~spiffed.config.ConfigError` naming the key.

The key tables below are also the source of ``docs/configuration.md``
(:func:`reference_markdown`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from spiffed.config import (
    Body,
    ConfigError,
    Decoded,
    Key,
    Kind,
    decode_block,
    format_duration,
    parse_document,
    reference_rows,
)
from spiffed.config.loading import apply_overrides, read_config_text
from spiffed.config.plugins import PLUGIN_KEYS, PluginCatalog, PluginConfig, decode_plugins
from spiffed.keys import KeyType, UnsupportedKeyError
from spiffed.nodeattestation.x509pop import DEFAULT_TEMPLATE as X509POP_DEFAULT_TEMPLATE
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "CASubject",
    "DEFAULT_CONFIG_PATH",
    "FLAGS",
    "HealthChecksConfig",
    "PluginConfig",
    "RateLimitConfig",
    "ServerConfig",
    "TelemetryConfig",
    "load_server_config",
    "parse_server_config",
    "reference_markdown",
    "ttl_warnings",
]

DEFAULT_CONFIG_PATH = "conf/server/server.conf"
"""Where ``run`` and ``validate`` look when ``-config`` is not given (as SPIRE)."""

_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "PANIC")
_KEY_TYPES = tuple(t.value for t in KeyType)

_CA_SUBJECT_KEYS = (
    Key("country", Kind.STRINGS, "Country (C) of the CA certificate's subject."),
    Key("organization", Kind.STRINGS, "Organization (O) of the CA certificate's subject."),
    Key("common_name", Kind.STRING, "Common name (CN) of the CA certificate's subject."),
)

_RATELIMIT_KEYS = (
    Key("attestation", Kind.BOOL, "Rate limit node attestation per client IP.", default=True),
    Key("signing", Kind.BOOL, "Rate limit X.509 and JWT signing per client IP.", default=True),
)

SERVER_KEYS: tuple[Key, ...] = (
    Key("trust_domain", Kind.STRING, "The trust domain this server is the authority of.",
        required=True),
    Key("bind_address", Kind.STRING, "IP address or DNS name the server API listens on.",
        default="0.0.0.0"),  # noqa: S104 - SPIRE's default
    Key("bind_port", Kind.PORT, "TCP port the server API listens on.", default=8081),
    Key("socket_path", Kind.PATH, "Unix socket of the local (admin) server API.",
        default="/tmp/spire-server/private/api.sock"),  # noqa: S108 - SPIRE's default
    Key("data_dir", Kind.PATH, "Directory for the server's runtime data.", required=True),
    Key("log_level", Kind.STRING, "Log level.", default="INFO", choices=_LOG_LEVELS),
    Key("log_format", Kind.STRING, "Log format.", default="text", choices=("text", "json")),
    Key("log_file", Kind.PATH, "File to write logs to (standard error when unset)."),
    Key("log_source_location", Kind.BOOL, "Add source file and line to log lines.",
        default=False),
    Key("audit_log_enabled", Kind.BOOL, "Write an audit log line for every API call.",
        default=False),
    Key("ca_key_type", Kind.STRING, "Key type of the X.509 CA and JWT signing keys.",
        default="ec-p256", choices=_KEY_TYPES),
    Key("jwt_key_type", Kind.STRING, "Key type of the JWT signing keys.", choices=_KEY_TYPES,
        default_text="= ca_key_type"),
    Key("ca_subject", Kind.BLOCK, "Subject of the CA certificates.", keys=_CA_SUBJECT_KEYS,
        default_text="C=US, O=SPIFFE when unset or empty"),
    Key("ca_ttl", Kind.DURATION, "Lifetime of the X.509 CA and JWT signing keys.",
        default=timedelta(hours=24)),
    Key("default_x509_svid_ttl", Kind.DURATION, "Default lifetime of X.509-SVIDs.",
        default=timedelta(hours=1)),
    Key("default_jwt_svid_ttl", Kind.DURATION, "Default lifetime of JWT-SVIDs.",
        default=timedelta(minutes=5)),
    Key("agent_ttl", Kind.DURATION, "Lifetime of agents' X.509-SVIDs.",
        default_text="= default_x509_svid_ttl"),
    Key("jwt_issuer", Kind.STRING, "`iss` claim of JWT-SVIDs (none when unset)."),
    Key("disable_jwt_svids", Kind.BOOL, "Refuse to mint JWT-SVIDs.", default=False),
    Key("admin_ids", Kind.STRINGS, "SPIFFE IDs granted admin access to the server API.",
        default=()),
    Key("ratelimit", Kind.BLOCK, "Per-IP rate limits.", keys=_RATELIMIT_KEYS),
    Key("federation", Kind.BLOCK, "Bundle endpoint and federation relationships.",
        supported=False),
    Key("experimental", Kind.BLOCK, "Experimental settings.", supported=False),
    Key("proxy_protocol_trusted_cidrs", Kind.STRINGS, "PROXY protocol sources.",
        default=(), supported=False),
    Key("prune_attested_nodes_expired_for", Kind.DURATION,
        "Prune agents whose SVID expired this long ago.", supported=False),
    Key("prune_attested_nodes_batch_size", Kind.INT, "Agents pruned per batch.",
        default=1000, supported=False),
    Key("prune_tofu_nodes", Kind.BOOL, "Also prune agents that cannot re-attest.",
        default=False, supported=False),
    Key("max_attested_node_info_staleness", Kind.DURATION, "Agent info cache staleness.",
        default=timedelta(0), supported=False),
    Key("profiling_enabled", Kind.BOOL, "Go pprof endpoint.", default=False, supported=False),
    Key("profiling_port", Kind.INT, "Go pprof port.", default=0, supported=False),
    Key("profiling_freq", Kind.INT, "Go pprof frequency.", default=0, supported=False),
    Key("profiling_names", Kind.STRINGS, "Go pprof profiles.", default=(), supported=False),
)  # fmt: skip

_PROMETHEUS_KEYS = (
    Key("host", Kind.STRING, "Address the metrics listener binds to.", default="localhost"),
    Key("port", Kind.PORT, "Port of the metrics listener.", required=True),
)

TELEMETRY_KEYS: tuple[Key, ...] = (
    Key("Prometheus", Kind.BLOCK, "Serve Prometheus metrics over HTTP.",
        keys=_PROMETHEUS_KEYS, default_text="off"),
    Key("MetricPrefix", Kind.STRING, "Prefix of every metric name.",
        default_text='"spire_server"'),
    Key("EnableTrustDomainLabel", Kind.BOOL, "Label metrics with the trust domain.",
        default=False),
    Key("EnableHostnameLabel", Kind.BOOL, "Label metrics with the host name.", default=True),
    Key("AllowedPrefixes", Kind.STRINGS, "Only emit metrics with these prefixes.", default=()),
    Key("BlockedPrefixes", Kind.STRINGS, "Never emit metrics with these prefixes.",
        default=()),
    Key("AllowedLabels", Kind.STRINGS, "Only emit these labels.", default=()),
    Key("BlockedLabels", Kind.STRINGS, "Never emit these labels.", default=()),
    Key("DogStatsd", Kind.BLOCK, "DogStatsD sinks.", supported=False),
    Key("Statsd", Kind.BLOCK, "StatsD sinks.", supported=False),
    Key("M3", Kind.BLOCK, "M3 sinks.", supported=False),
    Key("InMem", Kind.BLOCK, "In-memory sink (deprecated in SPIRE).", supported=False),
)  # fmt: skip

HEALTH_KEYS: tuple[Key, ...] = (
    Key("listener_enabled", Kind.BOOL, "Serve the HTTP health endpoints.", default=False),
    Key("bind_address", Kind.STRING, "Address of the health listener.", default="localhost"),
    Key("bind_port", Kind.PORT, "Port of the health listener.", default=80),
    Key("live_path", Kind.STRING, "Path of the liveness check.", default="/live"),
    Key("ready_path", Kind.STRING, "Path of the readiness check.", default="/ready"),
)

_TOP_KEYS: tuple[Key, ...] = (
    Key("server", Kind.BLOCK, "The server's settings.", keys=SERVER_KEYS, required=True),
    Key("telemetry", Kind.BLOCK, "Metrics.", keys=TELEMETRY_KEYS),
    Key("health_checks", Kind.BLOCK, "HTTP health checks.", keys=HEALTH_KEYS),
)

# --- plugins ------------------------------------------------------------------------------

_SQL_KEYS = (
    Key("database_type", Kind.STRING, "The database engine.", required=True,
        choices=("sqlite3", "postgres")),
    Key("connection_string", Kind.STRING,
        "SQLite: a file path (relative to the working directory) or `file:` URI; "
        "PostgreSQL: a libpq connection string.", required=True),
    Key("max_open_conns", Kind.INT, "Most open connections (no limit when unset)."),
    Key("max_idle_conns", Kind.INT, "Most idle connections.", default_text="2"),
    Key("conn_max_lifetime", Kind.DURATION, "Longest a connection is reused.",
        default_text="unlimited"),
    Key("disable_migration", Kind.BOOL, "Fail instead of migrating an old schema.",
        default=False),
    Key("log_sql", Kind.BOOL, "Log every SQL statement.", default=False),
    Key("ro_connection_string", Kind.STRING, "Read-only replica.", supported=False),
    Key("root_ca_path", Kind.PATH, "MySQL TLS root CA.", supported=False),
    Key("client_cert_path", Kind.PATH, "MySQL TLS client certificate.", supported=False),
    Key("client_key_path", Kind.PATH, "MySQL TLS client key.", supported=False),
)  # fmt: skip

_X509POP_KEYS = (
    Key("mode", Kind.STRING, "How agents' certificates are trusted.",
        default="external_pki", choices=("external_pki", "spiffe")),
    Key("ca_bundle_path", Kind.PATH, "PEM file of CA certificates agents chain to."),
    Key("ca_bundle_paths", Kind.PATHS, "Several such PEM files.", default=()),
    Key("agent_path_template", Kind.STRING, "Path of the agent's SPIFFE ID (Go template).",
        default=X509POP_DEFAULT_TEMPLATE),
    Key("max_intermediates", Kind.INT, "Most intermediates in an agent's chain.", default=4),
    Key("max_rsa_key_size", Kind.INT, "Largest RSA key accepted, in bits.", default=8192),
    Key("verify_client_ip", Kind.BOOL, "Match the client IP against the certificate.",
        default=False, supported=False),
    Key("svid_prefix", Kind.STRING, "SPIFFE mode: agent ID prefix.", supported=False),
    Key("spiffe_prefix", Kind.STRING, "SPIFFE mode: accepted ID prefix.", supported=False),
)  # fmt: skip

PLUGIN_DATA_KEYS: dict[tuple[str, str], tuple[Key, ...]] = {
    ("DataStore", "sql"): _SQL_KEYS,
    ("KeyManager", "memory"): (),
    ("KeyManager", "disk"): (
        Key("keys_path", Kind.PATH, "JSON file holding the keys (mode 0600).", required=True),
    ),
    ("UpstreamAuthority", "disk"): (
        Key("cert_file_path", Kind.PATH, "PEM certificate of the upstream CA.", required=True),
        Key("key_file_path", Kind.PATH, "PEM private key of the upstream CA.", required=True),
        Key("bundle_file_path", Kind.PATH,
            "PEM roots to publish, when the upstream CA is itself an intermediate."),
    ),
    ("NodeAttestor", "join_token"): (),
    ("NodeAttestor", "x509pop"): _X509POP_KEYS,
}  # fmt: skip
"""The ``plugin_data`` keys of every built-in plugin, by ``(type, name)``."""

SPIRE_PLUGINS: dict[str, tuple[str, ...]] = {
    "DataStore": ("sql",),
    "KeyManager": ("aws_kms", "azure_key_vault", "disk", "gcp_kms", "hashicorp_vault",
                   "memory"),
    "UpstreamAuthority": ("aws_pca", "awssecret", "cert-manager", "disk", "ejbca", "gcp_cas",
                          "spire", "vault"),
    "NodeAttestor": ("aws_iid", "azure_imds", "azure_msi", "gcp_iit", "http_challenge",
                     "join_token", "k8s_psat", "sshpop", "tpm_devid", "x509pop"),
    "Notifier": ("gcs_bundle", "k8sbundle"),
    "BundlePublisher": ("aws_rolesanywhere_trustanchor", "aws_s3", "azure_blob",
                        "gcp_cloudstorage", "k8s_configmap"),
    "CredentialComposer": ("uniqueid",),
}  # fmt: skip
"""SPIRE's built-in server plugins, by type: those missing from PLUGIN_DATA_KEYS are
recognised but not supported yet."""

FLAGS: dict[str, str] = {
    "bindAddress": "bind_address",
    "serverPort": "bind_port",
    "socketPath": "socket_path",
    "trustDomain": "trust_domain",
    "dataDir": "data_dir",
    "logLevel": "log_level",
    "logFormat": "log_format",
    "logFile": "log_file",
    "logSourceLocation": "log_source_location",
}
"""``run`` flags that override a ``server`` key, as SPIRE's (``-expandEnv`` is separate)."""


# --- the typed result -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CASubject:
    """Subject of the CA certificates (SPIRE's default: C=US, O=SPIFFE)."""

    country: tuple[str, ...] = ("US",)
    organization: tuple[str, ...] = ("SPIFFE",)
    common_name: str = ""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-IP rate limits of attestation and signing (both on by default)."""

    attestation: bool = True
    signing: bool = True


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Metrics: a Prometheus listener when ``prometheus_port`` is set."""

    prometheus_host: str = "localhost"
    prometheus_port: int | None = None
    metric_prefix: str | None = None
    enable_trust_domain_label: bool = False
    enable_hostname_label: bool = True
    allowed_prefixes: tuple[str, ...] = ()
    blocked_prefixes: tuple[str, ...] = ()
    allowed_labels: tuple[str, ...] = ()
    blocked_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthChecksConfig:
    """The HTTP ``/live`` and ``/ready`` listener (off by default, as SPIRE)."""

    listener_enabled: bool = False
    bind_address: str = "localhost"
    bind_port: int = 80
    live_path: str = "/live"
    ready_path: str = "/ready"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``spiffed-server run`` needs, checked, with SPIRE's defaults applied."""

    trust_domain: TrustDomain
    data_dir: Path
    datastore: PluginConfig
    key_manager: PluginConfig
    bind_address: str = "0.0.0.0"  # noqa: S104 - SPIRE's default
    bind_port: int = 8081
    socket_path: Path = Path("/tmp/spire-server/private/api.sock")  # noqa: S108
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: Path | None = None
    log_source_location: bool = False
    audit_log_enabled: bool = False
    ca_key_type: KeyType = KeyType.EC_P256
    jwt_key_type: KeyType = KeyType.EC_P256
    ca_subject: CASubject = CASubject()
    ca_ttl: timedelta = timedelta(hours=24)
    default_x509_svid_ttl: timedelta = timedelta(hours=1)
    default_jwt_svid_ttl: timedelta = timedelta(minutes=5)
    agent_ttl: timedelta = timedelta(hours=1)
    jwt_issuer: str | None = None
    disable_jwt_svids: bool = False
    admin_ids: tuple[SpiffeId, ...] = ()
    ratelimit: RateLimitConfig = RateLimitConfig()
    upstream_authority: PluginConfig | None = None
    node_attestors: tuple[PluginConfig, ...] = ()
    telemetry: TelemetryConfig = TelemetryConfig()
    health_checks: HealthChecksConfig = HealthChecksConfig()


# --- decoding -------------------------------------------------------------------------------


def _precheck(kind: str, name: str, data: Body, path: str) -> None:
    """SPIRE's database types spiffed lacks get a plain "not supported" instead of a type error."""
    if (kind, name) != ("DataStore", "sql"):
        return
    key = f"{path}.database_type"
    for item in data.get_all("database_type"):
        value = item.value
        if isinstance(value, Body):  # database_type "aws_postgres" { region = ... }
            label = value.items[0].key if value.items else "?"
            raise ConfigError(
                key,
                f"SPIRE's {label!r} database type is not supported by spiffed yet; "
                'use "sqlite3" or "postgres"',
                line=item.line,
            )
        if isinstance(value, str) and value.lower() == "mysql":
            raise ConfigError(
                key,
                'SPIRE\'s "mysql" database type is not supported by spiffed yet; '
                'use "sqlite3" or "postgres"',
                line=item.line,
            )


def _check_plugin_data(kind: str, name: str, data: Decoded) -> None:
    """Rules across a built-in plugin's keys."""
    if (kind, name) == ("NodeAttestor", "x509pop"):
        if data.values["mode"] == "spiffe":
            raise data.error("mode", 'mode "spiffe" is not supported yet; use "external_pki"')
        one, many = data.values["ca_bundle_path"], data.values["ca_bundle_paths"]
        if one and many:
            raise data.error("ca_bundle_paths", "set only one of ca_bundle_path, ca_bundle_paths")
        if not one and not many:
            raise data.error("ca_bundle_path", "one of ca_bundle_path, ca_bundle_paths is required")
        for key in ("max_intermediates", "max_rsa_key_size"):
            value = data.values[key]
            if not isinstance(value, int) or value <= 0:
                raise data.error(key, f"must be greater than 0, got {value}")
    if (kind, name) == ("DataStore", "sql"):
        if not data.values["connection_string"]:
            raise data.error("connection_string", "must not be empty")
        for key in ("max_open_conns", "max_idle_conns"):
            value = data.values[key]
            if isinstance(value, int) and value < 0:
                raise data.error(key, f"must not be negative, got {value}")


_CATALOG = PluginCatalog(
    data_keys=PLUGIN_DATA_KEYS,
    spire_plugins=SPIRE_PLUGINS,
    counts={"DataStore": (1, 1), "KeyManager": (1, 1), "UpstreamAuthority": (0, 1)},
    precheck=_precheck,
    check=_check_plugin_data,
)


def _ttl(server: Decoded, name: str) -> timedelta:
    value = server.values[name]
    assert isinstance(value, timedelta)
    if value <= timedelta(0):
        raise server.error(name, f"must be greater than 0, got {format_duration(value)}")
    return value


def _key_type(server: Decoded, name: str) -> KeyType:
    try:
        return KeyType.parse(str(server.values[name]))
    except UnsupportedKeyError as exc:  # pragma: no cover - choices already checked
        raise server.error(name, str(exc)) from None


def _strs(value: object) -> tuple[str, ...]:
    assert isinstance(value, tuple)
    return tuple(str(v) for v in value)


def _path(value: object) -> Path:
    assert isinstance(value, Path)
    return value


def _opt_path(value: object) -> Path | None:
    return None if value is None else _path(value)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _build(root: Decoded, plugins: dict[str, list[PluginConfig]]) -> ServerConfig:
    server = root.block("server")
    v = server.values
    trust_domain = server.trust_domain("trust_domain")
    admin_ids = []
    for text in _strs(v["admin_ids"]):
        try:
            admin_ids.append(SpiffeId.parse(text))
        except SpiffeIdError as exc:
            raise server.error("admin_ids", f"{text!r} is not a valid SPIFFE ID: {exc}") from None
    if not v["bind_address"]:
        raise server.error("bind_address", "must not be empty")
    ca_key_type = _key_type(server, "ca_key_type")
    jwt_key_type = _key_type(server, "jwt_key_type") if v["jwt_key_type"] else ca_key_type
    x509_ttl = _ttl(server, "default_x509_svid_ttl")
    agent_ttl = _ttl(server, "agent_ttl") if v["agent_ttl"] is not None else x509_ttl
    subject_block = server.block("ca_subject").values
    subject = CASubject(
        country=_strs(subject_block["country"] or ()),
        organization=_strs(subject_block["organization"] or ()),
        common_name=str(subject_block["common_name"] or ""),
    )
    if not (subject.country or subject.organization or subject.common_name):
        subject = CASubject()
    rate = server.block("ratelimit").values
    tele_block = root.block("telemetry")
    tele = tele_block.values
    prometheus = tele_block.block("Prometheus")
    health = root.block("health_checks").values
    port = prometheus.values["port"]
    prometheus_port = None if port is None else _int(port)
    log_level = str(v["log_level"])
    return ServerConfig(
        trust_domain=trust_domain,
        data_dir=_path(v["data_dir"]),
        datastore=plugins["DataStore"][0],
        key_manager=plugins["KeyManager"][0],
        bind_address=str(v["bind_address"]),
        bind_port=_int(v["bind_port"]),
        socket_path=_path(v["socket_path"]),
        log_level="WARN" if log_level == "WARNING" else log_level,
        log_format=str(v["log_format"]),
        log_file=_opt_path(v["log_file"]),
        log_source_location=bool(v["log_source_location"]),
        audit_log_enabled=bool(v["audit_log_enabled"]),
        ca_key_type=ca_key_type,
        jwt_key_type=jwt_key_type,
        ca_subject=subject,
        ca_ttl=_ttl(server, "ca_ttl"),
        default_x509_svid_ttl=x509_ttl,
        default_jwt_svid_ttl=_ttl(server, "default_jwt_svid_ttl"),
        agent_ttl=agent_ttl,
        jwt_issuer=str(v["jwt_issuer"]) if v["jwt_issuer"] else None,
        disable_jwt_svids=bool(v["disable_jwt_svids"]),
        admin_ids=tuple(admin_ids),
        ratelimit=RateLimitConfig(bool(rate["attestation"]), bool(rate["signing"])),
        upstream_authority=next(iter(plugins["UpstreamAuthority"]), None),
        node_attestors=tuple(plugins["NodeAttestor"]),
        telemetry=TelemetryConfig(
            prometheus_host=str(prometheus.values["host"]),
            prometheus_port=prometheus_port,
            metric_prefix=_opt_str(tele["MetricPrefix"]),
            enable_trust_domain_label=bool(tele["EnableTrustDomainLabel"]),
            enable_hostname_label=bool(tele["EnableHostnameLabel"]),
            allowed_prefixes=_strs(tele["AllowedPrefixes"]),
            blocked_prefixes=_strs(tele["BlockedPrefixes"]),
            allowed_labels=_strs(tele["AllowedLabels"]),
            blocked_labels=_strs(tele["BlockedLabels"]),
        ),
        health_checks=HealthChecksConfig(
            listener_enabled=bool(health["listener_enabled"]),
            bind_address=str(health["bind_address"]),
            bind_port=_int(health["bind_port"]),
            live_path=str(health["live_path"]),
            ready_path=str(health["ready_path"]),
        ),
    )


def _apply_overrides(doc: Body, overrides: Mapping[str, str]) -> Body:
    """Put flag values into the ``server`` block, replacing what the file says."""
    string_flags = {f: k for f, k in FLAGS.items() if f != "logSourceLocation"}
    return apply_overrides(
        doc,
        "server",
        overrides,
        flags=string_flags,
        bool_flags={"logSourceLocation": "log_source_location"},
        port_flags=("serverPort",),
    )


def parse_server_config(
    text: str,
    overrides: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> ServerConfig:
    """Check and decode a config file's text (already ``$VAR``-expanded if wanted)."""
    base = Path.cwd() if cwd is None else cwd
    doc = _apply_overrides(parse_document(text), overrides or {})
    plugin_items = doc.get_all("plugins")
    rest = Body(tuple(i for i in doc if i.key != "plugins"), doc.line)
    root = decode_block(rest, _TOP_KEYS, "", cwd=base)
    plugins = decode_plugins(plugin_items, _CATALOG, cwd=base)
    return _build(root, plugins)


def load_server_config(
    path: str | os.PathLike[str] | None, overrides: Mapping[str, str]
) -> ServerConfig:
    """Read ``path`` (SPIRE's default ``conf/server/server.conf`` when None or empty) and
    apply the ``run`` flags in ``overrides`` (``{"bindAddress": "127.0.0.1", ...}``).

    ``overrides["expandEnv"]`` set to ``true`` expands ``$VAR`` in the file first, as
    ``-expandEnv`` does. ``overrides["config"]`` is ignored (that is ``path``). Relative
    paths in the file are taken from the current working directory, as SPIRE does.
    """
    text, shown, flags = read_config_text(path, DEFAULT_CONFIG_PATH, overrides)
    try:
        return parse_server_config(text, flags)
    except ConfigError as exc:
        raise exc.with_source(shown) from None


_MAX_SVID_TTL = timedelta(days=7)
_ACTIVATION_DIVISOR = 6


def ttl_warnings(config: ServerConfig) -> tuple[str, ...]:
    """SPIRE's start-up warnings for SVID TTLs the CA rotation schedule would cut short.

    An SVID can only be guaranteed its full lifetime if it is at most
    ``min(ca_ttl / 6, 7d)``: the next CA is activated that long before the current expires.
    ``run`` logs these; they do not make a config invalid (as in SPIRE).
    """
    checks = [
        ("default_x509_svid_ttl", config.default_x509_svid_ttl),
        ("default_jwt_svid_ttl", config.default_jwt_svid_ttl),
    ]
    if config.agent_ttl != config.default_x509_svid_ttl:
        checks.append(("agent_ttl", config.agent_ttl))
    ca_ttl = config.ca_ttl
    max_for_ca = min(ca_ttl / _ACTIVATION_DIVISOR, _MAX_SVID_TTL)
    out = []
    for name, ttl in checks:
        if ttl <= max_for_ca:
            continue
        if ttl < _MAX_SVID_TTL:
            out.append(
                f"{name} is too high for the configured ca_ttl value. SVIDs with shorter "
                f"lifetimes may be issued. Please set {name} to {format_duration(max_for_ca)} "
                f"or less, or the ca_ttl to {format_duration(ttl * _ACTIVATION_DIVISOR)} or "
                f"more, to guarantee the full {name} lifetime when CA rotations are scheduled."
            )
        elif ca_ttl < _MAX_SVID_TTL * _ACTIVATION_DIVISOR:
            out.append(
                f"{name} is too high and the ca_ttl is too low. SVIDs with shorter lifetimes "
                f"may be issued. Please set {name} to {format_duration(_MAX_SVID_TTL)} or less, "
                f"and the ca_ttl to {format_duration(_MAX_SVID_TTL * _ACTIVATION_DIVISOR)} or "
                f"more, to guarantee the full {name} lifetime when CA rotations are scheduled."
            )
        else:
            out.append(
                f"{name} is too high. SVIDs with shorter lifetimes may be issued. Please set "
                f"{name} to {format_duration(max_for_ca)} or less to guarantee the full "
                f"{name} lifetime when CA rotations are scheduled."
            )
    return tuple(out)


# --- reference documentation ---------------------------------------------------------------


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in rows:
        shown = f"`{default}`" if default and default not in ("required", "unset") else default
        if default == "required":
            shown = "**required**"
        out.append(f"| `{key}` | {kind} | {shown} | {doc} |")
    return out


def reference_markdown() -> str:
    """``docs/configuration.md``: every key of the server config with type and default."""
    lines = [
        "# Server configuration reference",
        "",
        "<!-- Generated from src/spiffed/server/config.py by reference_markdown();",
        "     tests/config/test_cli_and_docs.py fails when this file is stale. Regenerate with:",
        "     .venv/bin/python -c 'from spiffed.server.config import reference_markdown as r;"
        ' print(r(), end="")\' > docs/configuration.md -->',
        "",
        "`spiffed-server run -config FILE` reads SPIRE's `server.conf` layout, in HCL or JSON.",
        "Durations use Go syntax (`24h`, `1h30m`, `90s`, `500ms`; no `d`). Relative paths are",
        "taken from the working directory. An unknown key is an error naming the key. A key",
        "marked *recognised, not supported yet* is accepted only at SPIRE's default value.",
        "`-expandEnv` replaces `$VAR` and `${VAR}` in the file first (`$$` is a literal `$`).",
        "",
        "SPIRE reads HCL 1; spiffed reads the file with an HCL 2 parser, which takes SPIRE's",
        "files as they are except for two HCL-1-only spellings: commas between the attributes",
        "of a block (`a { x = 1, y = 2 }`: put one per line, or write `a = { x = 1, y = 2 }`)",
        'and quoted attribute names (`"x" = 1`).',
        "",
        "Flags of `run` override the file: "
        + ", ".join(f"`-{flag}` → `server.{key}`" for flag, key in FLAGS.items())
        + ".",
        "",
        "## `server`",
        "",
        *_table(reference_rows(SERVER_KEYS, "server")),
        "",
        "## `telemetry`",
        "",
        *_table(reference_rows(TELEMETRY_KEYS, "telemetry")),
        "",
        "## `health_checks`",
        "",
        *_table(reference_rows(HEALTH_KEYS, "health_checks")),
        "",
        "## `plugins`",
        "",
        'Each plugin is written `Type "name" { plugin_data { ... } }`. Exactly one DataStore and',
        "one KeyManager, at most one UpstreamAuthority, any number of NodeAttestors.",
        "External plugins (`plugin_cmd`) are not supported.",
        "",
        *_table(reference_rows(PLUGIN_KEYS, 'plugins.<Type>."<name>"')),
        "",
    ]
    for (kind, name), keys in PLUGIN_DATA_KEYS.items():
        lines += [f'### {kind} "{name}"', ""]
        if keys:
            lines += [*_table(reference_rows(keys, "plugin_data")), ""]
        else:
            lines += ["No `plugin_data` keys.", ""]
    lines += ["### SPIRE plugins recognised but not supported yet", ""]
    for kind, names in SPIRE_PLUGINS.items():
        missing = [n for n in names if (kind, n) not in PLUGIN_DATA_KEYS]
        if missing:
            lines.append(f"- {kind}: " + ", ".join(f"`{n}`" for n in missing))
    return "\n".join(lines) + "\n"
