"""The agent's configuration: SPIRE's ``agent.conf`` layout read into a typed ``AgentConfig``.

Built from the same pieces as the server's (:mod:`spiffed.config`): unknown keys are errors
naming the key, SPIRE keys spiffed does not support yet are accepted only at SPIRE's
default, ``run``'s flags override the file, and SPIRE's cross-key rules apply (exactly one
way to bootstrap trust, at most one join token source, ...).
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
    PluginCatalog,
    PluginConfig,
    decode_block,
    decode_plugins,
    parse_document,
    resolve_path,
)
from spiffed.config.loading import apply_overrides, read_config_text
from spiffed.keys import KeyType
from spiffed.spiffeid import TrustDomain

__all__ = ["AGENT_KEYS", "FLAGS", "AgentConfig", "load_agent_config", "parse_agent_config"]

DEFAULT_CONFIG_PATH = "conf/agent/agent.conf"
_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "PANIC")

_SDS_KEYS = (
    Key("default_svid_name", Kind.STRING, "SDS name of the default X509-SVID.",
        default="default"),
    Key("default_bundle_name", Kind.STRING, "SDS name of the trust domain's bundle.",
        default="ROOTCA"),
    Key("default_all_bundles_name", Kind.STRING, "SDS name of all bundles together.",
        default="ALL"),
    Key("disable_spiffe_cert_validation", Kind.BOOL, "Hand Envoy plain bundles.",
        default=False),
)  # fmt: skip

_EXPERIMENTAL_KEYS = (
    Key("sync_interval", Kind.DURATION, "How often the agent syncs with the server.",
        default="5s"),
    Key("use_sync_authorized_entries", Kind.BOOL,
        "Sync with SyncAuthorizedEntries (deprecated in SPIRE: always on).", default=True),
    Key("named_pipe_name", Kind.STRING, "Windows named pipe of the Workload API.",
        supported=False),
    Key("require_pq_kem", Kind.BOOL, "Require post-quantum key exchange.", default=False,
        supported=False),
)  # fmt: skip

AGENT_KEYS: tuple[Key, ...] = (
    Key("trust_domain", Kind.STRING, "The trust domain of the agent and its server.",
        required=True),
    Key("server_address", Kind.STRING, "IP address or DNS name of the server.", required=True),
    Key("server_port", Kind.PORT, "TCP port of the server.", required=True),
    Key("data_dir", Kind.PATH, "Directory for the agent's SVID, bundle and keys.", default="."),
    Key("socket_path", Kind.PATH, "Unix socket of the Workload API.",
        default="/tmp/spire-agent/public/api.sock"),  # noqa: S108 - SPIRE's default
    Key("join_token", Kind.STRING, "Join token to attest with (single use)."),
    Key("join_token_file", Kind.PATH, "File holding the join token."),
    Key("trust_bundle_path", Kind.PATH, "Bootstrap bundle of the server's trust domain."),
    Key("trust_bundle_url", Kind.STRING, "HTTPS URL of the bootstrap bundle."),
    Key("trust_bundle_format", Kind.STRING, "Format of the bootstrap bundle.", default="pem",
        choices=("pem", "spiffe")),
    Key("insecure_bootstrap", Kind.BOOL, "Trust the server without a bootstrap bundle.",
        default=False),
    Key("workload_x509_svid_key_type", Kind.STRING, "Key type of workloads' X509-SVIDs.",
        default="ec-p256", choices=("rsa-2048", "ec-p256", "ec-p384")),
    Key("x509_svid_cache_max_size", Kind.INT, "Most X509-SVIDs kept for idle entries.",
        default=1000),
    Key("jwt_svid_cache_max_size", Kind.INT, "Most JWT-SVIDs cached.", default=1000),
    Key("allowed_foreign_jwt_claims", Kind.STRINGS,
        "Claims of foreign JWT-SVIDs that ValidateJWTSVID returns.", default=()),
    Key("allow_unauthenticated_verifiers", Kind.BOOL,
        "Serve bundles to callers with no identity.", default=False),
    Key("disable_workload_api", Kind.BOOL, "Do not serve the Workload API.", default=False,
        supported=False),
    Key("disable_sds_api", Kind.BOOL, "Do not serve Envoy SDS.", default=False,
        supported=False),
    Key("sds", Kind.BLOCK, "Envoy SDS names.", keys=_SDS_KEYS),
    Key("log_level", Kind.STRING, "Log level.", default="INFO", choices=_LOG_LEVELS),
    Key("log_format", Kind.STRING, "Log format.", default="text", choices=("text", "json")),
    Key("log_file", Kind.PATH, "File to write logs to (standard error when unset)."),
    Key("log_source_location", Kind.BOOL, "Add source file and line to log lines.",
        default=False),
    Key("log_selectors", Kind.BOOL, "Log workloads' selectors.", default=False),
    Key("admin_socket_path", Kind.PATH, "Unix socket of the agent's admin API.",
        supported=False),
    Key("authorized_delegates", Kind.STRINGS, "Delegated identity API callers.", default=(),
        supported=False),
    Key("trust_bundle_unix_socket", Kind.PATH, "Fetch the bundle URL over a Unix socket.",
        supported=False),
    Key("trust_bundle_spiffe_workload_api", Kind.STRING,
        "Bootstrap from another Workload API.", supported=False),
    Key("rebootstrap_mode", Kind.STRING, "Re-bootstrap on trust loss.", default="never",
        supported=False),
    Key("rebootstrap_delay", Kind.STRING, "Delay before re-bootstrapping.", supported=False),
    Key("availability_target", Kind.STRING, "Minimum SVID lifetime to keep.",
        supported=False),
    Key("experimental", Kind.BLOCK, "Experimental settings.", keys=_EXPERIMENTAL_KEYS),
    Key("profiling_enabled", Kind.BOOL, "Go pprof endpoint.", default=False, supported=False),
    Key("profiling_port", Kind.INT, "Go pprof port.", default=0, supported=False),
    Key("profiling_freq", Kind.INT, "Go pprof frequency.", default=0, supported=False),
    Key("profiling_names", Kind.STRINGS, "Go pprof profiles.", default=(), supported=False),
)  # fmt: skip

_TOP_KEYS: tuple[Key, ...] = (
    Key("agent", Kind.BLOCK, "The agent's settings.", keys=AGENT_KEYS, required=True),
    Key("telemetry", Kind.BLOCK, "Metrics.", supported=False),
    Key("health_checks", Kind.BLOCK, "HTTP health checks.", supported=False),
)

PLUGIN_DATA_KEYS: dict[tuple[str, str], tuple[Key, ...]] = {
    ("KeyManager", "memory"): (),
    ("KeyManager", "disk"): (
        Key("directory", Kind.PATH, "Directory holding the agent's keys.", required=True),
    ),
    ("NodeAttestor", "join_token"): (),
    ("NodeAttestor", "x509pop"): (
        Key("private_key_path", Kind.PATH, "PEM private key of the node certificate.",
            required=True),
        Key("certificate_path", Kind.PATH, "PEM node certificate (and chain).", required=True),
        Key("intermediates_path", Kind.PATH, "PEM intermediates to send with it."),
    ),
    ("WorkloadAttestor", "unix"): (
        Key("discover_workload_path", Kind.BOOL, "Add unix:path and unix:sha256.",
            default=False),
        Key("workload_size_limit", Kind.INT,
            "Largest binary hashed for unix:sha256 (0: no limit; negative: never).",
            default=0),
    ),
}  # fmt: skip

SPIRE_PLUGINS: dict[str, tuple[str, ...]] = {
    "KeyManager": ("disk", "memory"),
    "NodeAttestor": ("aws_iid", "azure_imds", "azure_msi", "gcp_iit", "http_challenge",
                     "join_token", "k8s_psat", "sshpop", "tpm_devid", "x509pop"),
    "WorkloadAttestor": ("docker", "k8s", "systemd", "unix", "windows", "slurm"),
    "SVIDStore": ("aws_secretsmanager", "gcp_secretmanager"),
}  # fmt: skip

FLAGS: dict[str, str] = {
    "dataDir": "data_dir",
    "joinToken": "join_token",
    "joinTokenFile": "join_token_file",
    "logFile": "log_file",
    "logFormat": "log_format",
    "logLevel": "log_level",
    "serverAddress": "server_address",
    "serverPort": "server_port",
    "socketPath": "socket_path",
    "trustDomain": "trust_domain",
    "trustBundle": "trust_bundle_path",
    "trustBundleUrl": "trust_bundle_url",
    "trustBundleFormat": "trust_bundle_format",
}
"""``run`` flags that override an ``agent`` key, as SPIRE's."""

_BOOL_FLAGS: dict[str, str] = {
    "insecureBootstrap": "insecure_bootstrap",
    "allowUnauthenticatedVerifiers": "allow_unauthenticated_verifiers",
    "logSourceLocation": "log_source_location",
}


_CATALOG = PluginCatalog(
    data_keys=PLUGIN_DATA_KEYS,
    spire_plugins=SPIRE_PLUGINS,
    counts={"KeyManager": (1, 1), "NodeAttestor": (1, 1), "WorkloadAttestor": (0, None)},
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``spiffed-agent run`` needs, checked, with SPIRE's defaults applied."""

    trust_domain: TrustDomain
    server_address: str
    server_port: int
    data_dir: Path
    socket_path: Path
    node_attestor: PluginConfig
    key_manager: PluginConfig
    workload_attestors: tuple[PluginConfig, ...]
    join_token: str | None = None
    trust_bundle_path: Path | None = None
    trust_bundle_url: str | None = None
    trust_bundle_format: str = "pem"
    insecure_bootstrap: bool = False
    workload_x509_svid_key_type: KeyType = KeyType.EC_P256
    x509_svid_cache_max_size: int = 1000
    jwt_svid_cache_max_size: int = 1000
    allowed_foreign_jwt_claims: tuple[str, ...] = ()
    allow_unauthenticated_verifiers: bool = False
    sds_default_svid_name: str = "default"
    sds_default_bundle_name: str = "ROOTCA"
    sds_default_all_bundles_name: str = "ALL"
    sds_disable_spiffe_cert_validation: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: Path | None = None
    log_source_location: bool = False
    log_selectors: bool = False
    sync_interval: float = 5.0
    """``experimental.sync_interval`` in seconds (SPIRE's default 5 s)."""
    use_sync_authorized_entries: bool = True


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, tuple) else ()


def _build(root: Decoded, plugins: dict[str, list[PluginConfig]], cwd: Path) -> AgentConfig:
    agent = root.block("agent")
    v = agent.values
    trust_domain = agent.trust_domain("trust_domain")
    if not v["server_address"]:
        raise agent.error("server_address", "server_address must be configured")
    token = str(v["join_token"]) if v["join_token"] else None
    token_file = v["join_token_file"]
    if token and token_file:
        raise agent.error(
            "join_token_file",
            "only one of join_token or join_token_file can be specified, not both",
        )
    if isinstance(token_file, Path):
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise agent.error(
                "join_token_file", f"unable to read join token file {str(token_file)!r}: {exc}"
            ) from None
        if not token:
            raise agent.error("join_token_file", "join token file is empty")
    path, url, insecure = v["trust_bundle_path"], v["trust_bundle_url"], v["insecure_bootstrap"]
    chosen = [k for k, val in (("trust_bundle_path", path), ("trust_bundle_url", url)) if val]
    if insecure and chosen:
        raise agent.error(
            chosen[0], f"only one of insecure_bootstrap or {chosen[0]} can be specified, not both"
        )
    if len(chosen) == 2:
        raise agent.error(
            "trust_bundle_url",
            "only one of trust_bundle_url or trust_bundle_path can be specified, not both",
        )
    if not insecure and not chosen:
        raise agent.error(
            "trust_bundle_path",
            "trust_bundle_path or trust_bundle_url must be configured unless "
            "insecure_bootstrap is set",
        )
    if url and not str(url).startswith("https://"):
        raise agent.error("trust_bundle_url", "trust bundle URL must start with https://")
    for key in ("x509_svid_cache_max_size", "jwt_svid_cache_max_size"):
        value = v[key]
        if not isinstance(value, int) or value < 0:
            raise agent.error(key, f"{key} should not be negative")
    sds = agent.block("sds").values
    exp = agent.block("experimental").values
    sync_interval = exp["sync_interval"]
    seconds = sync_interval.total_seconds() if isinstance(sync_interval, timedelta) else 5.0
    if seconds <= 0:
        raise agent.error("experimental", "experimental.sync_interval must be positive")
    log_level = str(v["log_level"])
    log_file = v["log_file"]
    return AgentConfig(
        trust_domain=trust_domain,
        server_address=str(v["server_address"]),
        server_port=int(str(v["server_port"])),
        data_dir=resolve_path(str(v["data_dir"]), cwd),
        socket_path=resolve_path(str(v["socket_path"]), cwd),
        node_attestor=plugins["NodeAttestor"][0],
        key_manager=plugins["KeyManager"][0],
        workload_attestors=tuple(plugins["WorkloadAttestor"]),
        join_token=token,
        trust_bundle_path=path if isinstance(path, Path) else None,
        trust_bundle_url=str(url) if url else None,
        trust_bundle_format=str(v["trust_bundle_format"]),
        insecure_bootstrap=bool(insecure),
        workload_x509_svid_key_type=KeyType.parse(str(v["workload_x509_svid_key_type"])),
        x509_svid_cache_max_size=int(str(v["x509_svid_cache_max_size"])),
        jwt_svid_cache_max_size=int(str(v["jwt_svid_cache_max_size"])),
        allowed_foreign_jwt_claims=_strs(v["allowed_foreign_jwt_claims"]),
        allow_unauthenticated_verifiers=bool(v["allow_unauthenticated_verifiers"]),
        sds_default_svid_name=str(sds["default_svid_name"]),
        sds_default_bundle_name=str(sds["default_bundle_name"]),
        sds_default_all_bundles_name=str(sds["default_all_bundles_name"]),
        sds_disable_spiffe_cert_validation=bool(sds["disable_spiffe_cert_validation"]),
        log_level="WARN" if log_level == "WARNING" else log_level,
        log_format=str(v["log_format"]),
        log_file=log_file if isinstance(log_file, Path) else None,
        log_source_location=bool(v["log_source_location"]),
        log_selectors=bool(v["log_selectors"]),
        sync_interval=seconds,
        use_sync_authorized_entries=bool(exp["use_sync_authorized_entries"]),
    )


def _apply_overrides(doc: Body, overrides: Mapping[str, str]) -> Body:
    """Put flag values into the ``agent`` block, replacing what the file says."""
    return apply_overrides(
        doc, "agent", overrides, flags=FLAGS, bool_flags=_BOOL_FLAGS, port_flags=("serverPort",)
    )


def parse_agent_config(
    text: str, overrides: Mapping[str, str] | None = None, *, cwd: Path | None = None
) -> AgentConfig:
    """Check and decode an agent config file's text (already ``$VAR``-expanded if wanted)."""
    base = Path.cwd() if cwd is None else cwd
    doc = _apply_overrides(parse_document(text), overrides or {})
    plugin_items = doc.get_all("plugins")
    if not plugin_items:
        raise ConfigError("plugins", "plugins section must be configured")
    rest = Body(tuple(i for i in doc if i.key != "plugins"), doc.line)
    root = decode_block(rest, _TOP_KEYS, "", cwd=base)
    plugins = decode_plugins(plugin_items, _CATALOG, cwd=base)
    return _build(root, plugins, base)


def load_agent_config(
    path: str | os.PathLike[str] | None, overrides: Mapping[str, str]
) -> AgentConfig:
    """Read ``path`` (SPIRE's default ``conf/agent/agent.conf`` when None or empty) and apply
    the ``run`` flags in ``overrides``; ``overrides["expandEnv"]`` expands ``$VAR`` first."""
    text, shown, flags = read_config_text(path, DEFAULT_CONFIG_PATH, overrides)
    try:
        return parse_agent_config(text, flags)
    except ConfigError as exc:
        raise exc.with_source(shown) from None
