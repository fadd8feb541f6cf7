"""The server's config file: SPIRE's layout, defaults, every key, every kind of mistake."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiffed.config import ConfigError
from spiffed.keys import KeyType
from spiffed.server.config import (
    CASubject,
    ServerConfig,
    load_server_config,
    parse_server_config,
)
from spiffed.spiffeid import SpiffeId, TrustDomain

REPO = Path(__file__).resolve().parents[2]
CWD = Path("/srv/spiffed")

PLUGINS = """
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }
    KeyManager "memory" {
        plugin_data {}
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
"""


def conf(server_body: str = "", extra: str = "", plugins: str = PLUGINS) -> str:
    """A config with the required keys, ``server_body`` added to the server block."""
    return (
        'server {\n    trust_domain = "example.org"\n    data_dir = "./.data"\n'
        f"{server_body}\n}}\n{plugins}\n{extra}\n"
    )


def parse(text: str, **overrides: str) -> ServerConfig:
    return parse_server_config(text, overrides, cwd=CWD)


def error(text: str, **overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, **overrides)
    return info.value


# --- defaults and every key ---------------------------------------------------------------


def test_defaults_are_spires() -> None:
    c = parse(conf())
    assert c.trust_domain == TrustDomain.parse("example.org")
    assert c.data_dir == CWD / ".data"
    assert (c.bind_address, c.bind_port) == ("0.0.0.0", 8081)
    assert c.socket_path == Path("/tmp/spire-server/private/api.sock")
    assert (c.log_level, c.log_format, c.log_file) == ("INFO", "text", None)
    assert c.ca_key_type is KeyType.EC_P256 and c.jwt_key_type is KeyType.EC_P256
    assert c.ca_ttl == timedelta(hours=24)
    assert c.default_x509_svid_ttl == timedelta(hours=1)
    assert c.default_jwt_svid_ttl == timedelta(minutes=5)
    assert c.agent_ttl == c.default_x509_svid_ttl
    assert c.ca_subject == CASubject(("US",), ("SPIFFE",), "")
    assert c.admin_ids == () and c.jwt_issuer is None
    assert (c.ratelimit.attestation, c.ratelimit.signing) == (True, True)
    assert not c.audit_log_enabled and not c.disable_jwt_svids and not c.log_source_location
    assert c.upstream_authority is None
    assert [p.name for p in c.node_attestors] == ["join_token"]
    assert (c.datastore.name, c.key_manager.name) == ("sql", "memory")
    assert c.datastore.options == {
        "database_type": "sqlite3",
        "connection_string": "./.data/datastore.sqlite3",
    }
    h = c.health_checks
    assert (h.listener_enabled, h.bind_address, h.bind_port) == (False, "localhost", 80)
    assert (h.live_path, h.ready_path) == ("/live", "/ready")
    assert c.telemetry.prometheus_port is None


def test_agent_ttl_follows_the_x509_default() -> None:
    c = parse(conf('default_x509_svid_ttl = "30m"'))
    assert c.agent_ttl == timedelta(minutes=30)


FULL = """
server {
    bind_address = "127.0.0.1"
    bind_port = 9443
    socket_path = "run/api.sock"
    trust_domain = "prod.example.org"
    data_dir = "/var/lib/spiffed"
    log_level = "debug"
    log_format = "JSON"
    log_file = "logs/server.log"
    log_source_location = true
    audit_log_enabled = true
    ca_key_type = "rsa-2048"
    jwt_key_type = "ec-p384"
    ca_subject {
        country = ["DE"]
        organization = ["Acme"]
        common_name = "Acme CA"
    }
    ca_ttl = "168h"
    default_x509_svid_ttl = "1h30m"
    default_jwt_svid_ttl = "90s"
    agent_ttl = "12h"
    jwt_issuer = "https://oidc.example.org"
    disable_jwt_svids = true
    admin_ids = ["spiffe://prod.example.org/admin", "spiffe://other.org/ops"]
    ratelimit {
        attestation = false
        signing = false
    }
    federation {}
    experimental {}
    prune_tofu_nodes = false
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "postgres"
            connection_string = "dbname=spire host=db"
            max_open_conns = 20
            max_idle_conns = "5"
            conn_max_lifetime = "1h"
            disable_migration = true
            log_sql = true
        }
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = "./.data/keys.json"
        }
    }
    UpstreamAuthority "disk" {
        plugin_data {
            cert_file_path = "ca/upstream.crt"
            key_file_path = "/etc/ca/upstream.key"
            bundle_file_path = "ca/roots.pem"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    NodeAttestor "x509pop" {
        plugin_data {
            mode = "external_pki"
            ca_bundle_paths = ["ca/a.pem", "/etc/b.pem"]
            agent_path_template = "/x509pop/{{ .Subject.CommonName }}"
            max_intermediates = 2
            max_rsa_key_size = 4096
        }
    }
    NodeAttestor "aws_iid" {
        enabled = false
    }
}

telemetry {
    Prometheus {
        host = "0.0.0.0"
        port = 9988
    }
    MetricPrefix = "spiffed"
    EnableTrustDomainLabel = true
    EnableHostnameLabel = false
    AllowedPrefixes = ["a"]
    BlockedPrefixes = ["b"]
    AllowedLabels = ["c"]
    BlockedLabels = ["d"]
}

health_checks {
    listener_enabled = true
    bind_address = "0.0.0.0"
    bind_port = "8080"
    live_path = "/livez"
    ready_path = "/readyz"
}
"""


def test_every_key_is_read() -> None:
    c = parse(FULL)
    assert c.trust_domain.name == "prod.example.org"
    assert (c.bind_address, c.bind_port) == ("127.0.0.1", 9443)
    assert c.socket_path == CWD / "run/api.sock"
    assert c.data_dir == Path("/var/lib/spiffed")
    assert (c.log_level, c.log_format, c.log_file) == ("DEBUG", "json", CWD / "logs/server.log")
    assert c.log_source_location and c.audit_log_enabled and c.disable_jwt_svids
    assert (c.ca_key_type, c.jwt_key_type) == (KeyType.RSA_2048, KeyType.EC_P384)
    assert c.ca_subject == CASubject(("DE",), ("Acme",), "Acme CA")
    assert c.ca_ttl == timedelta(days=7)
    assert c.default_x509_svid_ttl == timedelta(minutes=90)
    assert c.default_jwt_svid_ttl == timedelta(seconds=90)
    assert c.agent_ttl == timedelta(hours=12)
    assert c.jwt_issuer == "https://oidc.example.org"
    assert c.admin_ids == (
        SpiffeId.parse("spiffe://prod.example.org/admin"),
        SpiffeId.parse("spiffe://other.org/ops"),
    )
    assert (c.ratelimit.attestation, c.ratelimit.signing) == (False, False)
    ds = c.datastore.settings
    assert ds["database_type"] == "postgres" and ds["max_idle_conns"] == 5
    assert ds["conn_max_lifetime"] == timedelta(hours=1)
    assert c.datastore.options["conn_max_lifetime"] == "1h"
    assert c.key_manager.options == {"keys_path": str(CWD / ".data/keys.json")}
    assert c.upstream_authority is not None
    assert c.upstream_authority.settings["cert_file_path"] == CWD / "ca/upstream.crt"
    assert c.upstream_authority.settings["key_file_path"] == Path("/etc/ca/upstream.key")
    names = [p.name for p in c.node_attestors]
    assert names == ["join_token", "x509pop"]  # the disabled aws_iid is skipped
    pop = c.node_attestors[1].options
    assert pop["ca_bundle_paths"] == [str(CWD / "ca/a.pem"), "/etc/b.pem"]
    assert pop["max_intermediates"] == 2
    t = c.telemetry
    assert (t.prometheus_host, t.prometheus_port, t.metric_prefix) == ("0.0.0.0", 9988, "spiffed")
    assert t.enable_trust_domain_label and not t.enable_hostname_label
    assert (t.allowed_prefixes, t.blocked_prefixes) == (("a",), ("b",))
    assert (t.allowed_labels, t.blocked_labels) == (("c",), ("d",))
    h = c.health_checks
    assert (h.listener_enabled, h.bind_address, h.bind_port) == (True, "0.0.0.0", 8080)
    assert (h.live_path, h.ready_path) == ("/livez", "/readyz")


def test_x509pop_options_are_what_its_attestor_accepts(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from spiffed.server.nodeattestor.x509pop import X509PopAttestor

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agents CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    plugins = PLUGINS.replace(
        'NodeAttestor "join_token" {\n        plugin_data {}',
        'NodeAttestor "x509pop" {\n        plugin_data { ca_bundle_path = "ca.pem" }',
    )
    c = parse_server_config(conf(plugins=plugins), {}, cwd=tmp_path)
    (pop,) = c.node_attestors
    assert pop.options == {"ca_bundle_path": str(tmp_path / "ca.pem")}
    attestor = X509PopAttestor.from_config(c.trust_domain, pop.options)
    assert attestor.name == "x509pop"


def test_json_config_with_spire_layout() -> None:
    text = json.dumps(
        {
            "server": {"trust_domain": "example.org", "data_dir": "d", "bind_port": 9000},
            "plugins": {
                "DataStore": {
                    "sql": {"plugin_data": {"database_type": "sqlite3", "connection_string": "x"}}
                },
                "KeyManager": [{"memory": {"plugin_data": {}}}],
                "NodeAttestor": [
                    {"join_token": {}},
                    {"x509pop": {"plugin_data": {"ca_bundle_path": "ca.pem"}}},
                ],
            },
        }
    )
    c = parse(text)
    assert c.bind_port == 9000 and c.data_dir == CWD / "d"
    assert [p.name for p in c.node_attestors] == ["join_token", "x509pop"]


def test_hcl1_nested_plugin_form_is_accepted() -> None:
    plugins = """
    plugins {
        DataStore {
            sql { plugin_data = { database_type = "sqlite3", connection_string = "x" } }
        }
        KeyManager "memory" {}
    }
    """
    c = parse(conf(plugins=plugins))
    assert c.datastore.name == "sql" and c.node_attestors == ()


def test_empty_ca_subject_means_spires_default() -> None:
    c = parse(conf("ca_subject {}"))
    assert c.ca_subject == CASubject()


def test_unsupported_spire_key_at_its_default_is_accepted() -> None:
    c = parse(conf("prune_tofu_nodes = false\nprofiling_names = []\nfederation {}"))
    assert c.trust_domain.name == "example.org"


# --- mistakes: the message names the key --------------------------------------------------

BAD = [
    # unknown keys, at every level
    ("bogus = 1", conf(extra="bogus = 1"), "bogus (line 22): unknown key in the top level"),
    (
        "server",
        conf('bind_adress = "1.2.3.4"'),
        "server.bind_adress (line 4): unknown key in the server block; "
        "did you mean 'bind_address'?",
    ),
    (
        "ca_subject",
        conf('ca_subject { org = "x" }'),
        "server.ca_subject.org (line 4): unknown key in the server.ca_subject block",
    ),
    (
        "ratelimit",
        conf("ratelimit { signin = true }"),
        "server.ratelimit.signin (line 4): unknown key in the server.ratelimit block; "
        "did you mean 'signing'?",
    ),
    (
        "telemetry",
        conf(extra="telemetry { Prometheus = { port = 1, path = 2 } }"),
        "telemetry.Prometheus.path (line 22): unknown key in the telemetry.Prometheus block",
    ),
    (
        "health_checks",
        conf(extra="health_checks { listen = true }"),
        "health_checks.listen (line 22): unknown key in the health_checks block",
    ),
    (
        "plugin",
        conf(
            plugins=PLUGINS.replace(
                "plugin_data {}\n    }\n    NodeAttestor", "plugin_dat {}\n    }\n    NodeAttestor"
            )
        ),
        "plugins.KeyManager.memory.plugin_dat (line 15): unknown key in the "
        "plugins.KeyManager.memory block; did you mean 'plugin_data'?",
    ),
    (
        "plugin_data",
        conf(plugins=PLUGINS.replace('database_type = "sqlite3"', 'database = "sqlite3"')),
        "plugins.DataStore.sql.plugin_data.database (line 10): unknown key in the "
        "plugins.DataStore.sql.plugin_data block; did you mean 'database_type'?",
    ),
    (
        "memory data",
        conf(plugins=PLUGINS.replace("plugin_data {}", 'plugin_data { keys_path = "k" }', 1)),
        "plugins.KeyManager.memory.plugin_data.keys_path (line 15): unknown key in the "
        "plugins.KeyManager.memory.plugin_data block",
    ),
    # wrong types
    (
        "bind_port type",
        conf('bind_port = "eighty"'),
        "server.bind_port (line 4): expected an integer, got the string 'eighty'",
    ),
    (
        "port range",
        conf("bind_port = 70000"),
        "server.bind_port (line 4): port 70000 is not between 1 and 65535",
    ),
    (
        "bool type",
        conf('audit_log_enabled = "yes"'),
        "server.audit_log_enabled (line 4): expected true or false, got the string 'yes'",
    ),
    (
        "list type",
        conf('admin_ids = "spiffe://example.org/a"'),
        "server.admin_ids (line 4): expected a list, got the string 'spiffe://example.org/a'",
    ),
    (
        "block type",
        conf('ca_subject = "C=US"'),
        "server.ca_subject (line 4): expected a block, got the string 'C=US'",
    ),
    (
        "string type",
        conf("trust_domain2 = 1").replace("trust_domain2 = 1", "jwt_issuer = true"),
        "server.jwt_issuer (line 4): expected a string, got the boolean true",
    ),
    (
        "choice",
        conf('log_level = "verbose"'),
        'server.log_level (line 4): \'verbose\' is not one of "TRACE", "DEBUG", "INFO", '
        '"WARN", "WARNING", "ERROR", "FATAL", "PANIC"',
    ),
    (
        "key type",
        conf('ca_key_type = "ed25519"'),
        'server.ca_key_type (line 4): \'ed25519\' is not one of "ec-p256", "ec-p384", '
        '"rsa-2048", "rsa-4096"',
    ),
    (
        "expression",
        conf("bind_port = 8000 + 81"),
        "server.bind_port (line 4): '8000 + 81' is an expression; only literal values are allowed",
    ),
    # durations
    (
        "duration unit",
        conf('ca_ttl = "1d"'),
        "server.ca_ttl (line 4): invalid duration '1d': unknown unit 'd' "
        "(use Go syntax such as 1h30m)",
    ),
    (
        "duration no unit",
        conf('default_jwt_svid_ttl = "300"'),
        "server.default_jwt_svid_ttl (line 4): invalid duration '300': missing unit "
        "(use Go syntax such as 1h30m)",
    ),
    (
        "duration sign",
        conf('agent_ttl = "-1h"'),
        "server.agent_ttl (line 4): must be greater than 0, got -1h",
    ),
    # identities
    (
        "trust domain",
        conf().replace('"example.org"', '"Example Org"'),
        "server.trust_domain (line 2): 'Example Org' is not a valid trust domain: ",
    ),
    (
        "admin id",
        conf('admin_ids = ["spiffe://example.org/ok", "https://example.org/admin"]'),
        "server.admin_ids (line 4): 'https://example.org/admin' is not a valid SPIFFE ID: ",
    ),
    # required keys and blocks
    (
        "no trust_domain",
        conf().replace('trust_domain = "example.org"', ""),
        "server.trust_domain (line 1): is required in the server block",
    ),
    (
        "no data_dir",
        conf().replace('data_dir = "./.data"', ""),
        "server.data_dir (line 1): is required in the server block",
    ),
    ("no server", PLUGINS, "server: is required in the file"),
    ("no plugins", conf(plugins=""), "plugins: the plugins block is required"),
    (
        "required plugin_data",
        conf(plugins=PLUGINS.replace('KeyManager "memory"', 'KeyManager "disk"')),
        "plugins.KeyManager.disk.plugin_data.keys_path (line 15): is required in the "
        "plugins.KeyManager.disk.plugin_data block",
    ),
    (
        "no datastore",
        conf(plugins='plugins { KeyManager "memory" {} }'),
        "plugins.DataStore: a DataStore plugin is required",
    ),
    # plugins
    (
        "two datastores",
        conf(
            plugins=PLUGINS.replace(
                'KeyManager "memory"',
                'DataStore "sql2" { plugin_data {} }\n    KeyManager "memory"',
            )
        ),
        "plugins.DataStore.sql2 (line 14): unknown DataStore plugin 'sql2'; built-in: sql",
    ),
    (
        "same plugin twice",
        conf(
            plugins=PLUGINS.replace(
                'KeyManager "memory"',
                'DataStore "sql" { plugin_data {} }\n    KeyManager "memory"',
            )
        ),
        "plugins.DataStore.sql (line 14): plugin DataStore 'sql' is declared more than once "
        "(first on line 8)",
    ),
    (
        "two key managers",
        conf(
            plugins=PLUGINS.replace(
                'NodeAttestor "join_token"',
                'KeyManager "disk" { plugin_data { keys_path = "k" } }\n'
                '    NodeAttestor "join_token"',
            )
        ),
        "plugins.KeyManager (line 17): only one KeyManager plugin is allowed, "
        "got 'memory' and 'disk'",
    ),
    (
        "unknown plugin name",
        conf(plugins=PLUGINS.replace('"join_token"', '"join-token"')),
        "plugins.NodeAttestor.join-token (line 17): unknown NodeAttestor plugin 'join-token'; "
        "built-in: join_token, x509pop",
    ),
    (
        "spire plugin not supported",
        conf(plugins=PLUGINS.replace('"join_token"', '"k8s_psat"')),
        "plugins.NodeAttestor.k8s_psat (line 17): SPIRE's NodeAttestor plugin 'k8s_psat' is "
        "not supported by spiffed yet; built-in: join_token, x509pop",
    ),
    (
        "unknown plugin type",
        conf(plugins=PLUGINS.replace("NodeAttestor", "NodeAttester")),
        "plugins.NodeAttester (line 17): unknown plugin type; did you mean 'NodeAttestor'?",
    ),
    (
        "external plugin",
        conf(
            plugins=PLUGINS.replace(
                'NodeAttestor "join_token" {',
                'NodeAttestor "tpm" {\n        plugin_cmd = "/opt/tpm-attestor"',
            )
        ),
        "plugins.NodeAttestor.tpm.plugin_cmd (line 18): external plugins are not supported; "
        "spiffed only has built-in plugins (remove plugin_cmd to use a built-in "
        "NodeAttestor 'tpm')",
    ),
    (
        "x509pop spiffe mode",
        conf(
            plugins=PLUGINS.replace(
                'NodeAttestor "join_token" {\n        plugin_data {}',
                'NodeAttestor "x509pop" {\n        plugin_data { mode = "spiffe" }',
            )
        ),
        "plugins.NodeAttestor.x509pop.plugin_data.mode (line 18): "
        'mode "spiffe" is not supported yet; use "external_pki"',
    ),
    (
        "x509pop bundle",
        conf(
            plugins=PLUGINS.replace(
                'NodeAttestor "join_token" {\n        plugin_data {}',
                'NodeAttestor "x509pop" {\n        plugin_data {}',
            )
        ),
        "plugins.NodeAttestor.x509pop.plugin_data.ca_bundle_path (line 18): "
        "one of ca_bundle_path, ca_bundle_paths is required",
    ),
    (
        "mysql",
        conf(plugins=PLUGINS.replace('"sqlite3"', '"mysql"')),
        'plugins.DataStore.sql.plugin_data.database_type (line 10): SPIRE\'s "mysql" database '
        'type is not supported by spiffed yet; use "sqlite3" or "postgres"',
    ),
    (
        "aws_postgres",
        conf(
            plugins=PLUGINS.replace(
                'database_type = "sqlite3"', 'database_type "aws_postgres" { region = "x" }'
            )
        ),
        "plugins.DataStore.sql.plugin_data.database_type (line 10): SPIRE's 'aws_postgres' "
        'database type is not supported by spiffed yet; use "sqlite3" or "postgres"',
    ),
    (
        "oracle",
        conf(plugins=PLUGINS.replace('"sqlite3"', '"oracle"')),
        "plugins.DataStore.sql.plugin_data.database_type (line 10): 'oracle' is not one of "
        '"sqlite3", "postgres"',
    ),
    # recognised SPIRE keys that spiffed does not do yet
    (
        "federation",
        conf('federation {\n bundle_endpoint { address = "0.0.0.0" }\n}'),
        "server.federation (line 4): is a SPIRE setting that spiffed recognises but does not "
        "support yet; remove it",
    ),
    (
        "profiling",
        conf("profiling_enabled = true"),
        "server.profiling_enabled (line 4): is a SPIRE setting that spiffed recognises but "
        "does not support yet; remove it",
    ),
    (
        "statsd",
        conf(extra='telemetry { Statsd = [{ address = "localhost:8125" }] }'),
        "telemetry.Statsd (line 22): is a SPIRE setting that spiffed recognises but does not "
        "support yet; remove it",
    ),
    # repeated keys
    (
        "twice",
        conf("bind_port = 1\nbind_port = 2"),
        "server.bind_port (line 5): is set more than once (first set on line 4)",
    ),
    # syntax
    (
        "syntax",
        "server {\n  trust_domain = \n}",
        "configuration (line 2): syntax error: unexpected input at column 18",
    ),
]


@pytest.mark.parametrize(("what", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_mistakes_name_the_key(what: str, text: str, message: str) -> None:
    exc = error(text)
    assert message in str(exc), f"{what}: {exc}"
    assert str(exc).startswith(message.split(" (line")[0])


def test_error_carries_key_and_line() -> None:
    exc = error(conf('ca_ttl = "1 day"'))
    assert (exc.key, exc.line) == ("server.ca_ttl", 4)


# --- flags override the file --------------------------------------------------------------


def test_flags_override_the_file() -> None:
    c = parse(
        conf('bind_port = 1234\nlog_level = "ERROR"'),
        bindAddress="10.0.0.1",
        serverPort="9999",
        socketPath="/run/s.sock",
        trustDomain="other.org",
        dataDir="/data",
        logLevel="warn",
        logFormat="json",
        logFile="/var/log/s.log",
        logSourceLocation="true",
    )
    assert (c.bind_address, c.bind_port, c.socket_path) == ("10.0.0.1", 9999, Path("/run/s.sock"))
    assert c.trust_domain.name == "other.org" and c.data_dir == Path("/data")
    assert (c.log_level, c.log_format, c.log_file) == ("WARN", "json", Path("/var/log/s.log"))
    assert c.log_source_location


def test_empty_flags_and_port_zero_do_not_override() -> None:
    c = parse(conf("bind_port = 1234"), serverPort="0", bindAddress="", logLevel="")
    assert (c.bind_port, c.bind_address, c.log_level) == (1234, "0.0.0.0", "INFO")


def test_flag_supplies_a_missing_required_key() -> None:
    text = conf().replace('trust_domain = "example.org"', "")
    assert parse(text, trustDomain="example.com").trust_domain.name == "example.com"


def test_bad_flag_value_names_the_key() -> None:
    exc = error(conf(), serverPort="http")
    assert str(exc) == "server.bind_port: expected an integer, got the string 'http'"


def test_unknown_flag() -> None:
    exc = error(conf(), bogus="1")
    assert str(exc) == "-bogus: unknown flag"


# --- files ------------------------------------------------------------------------------


def test_load_names_the_file_and_resolves_from_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.conf").write_text(conf('ca_ttl = "1d"'))
    with pytest.raises(ConfigError) as info:
        load_server_config("s.conf", {})
    assert str(info.value).startswith("s.conf: server.ca_ttl (line 4): invalid duration '1d'")
    (tmp_path / "s.conf").write_text(conf())
    assert load_server_config("s.conf", {}).data_dir == tmp_path / ".data"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"could not find config file .*nope\.conf: please use"):
        load_server_config(tmp_path / "nope.conf", {})


def test_expand_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIFFED_TEST_TD", "env.example.org")
    path = tmp_path / "s.conf"
    path.write_text(conf().replace('"example.org"', '"$SPIFFED_TEST_TD"'))
    assert load_server_config(path, {"expandEnv": "true"}).trust_domain.name == "env.example.org"
    with pytest.raises(ConfigError, match=r"server\.trust_domain"):
        load_server_config(path, {})


def test_shipped_sample_validates() -> None:
    c = load_server_config(REPO / "conf/server/server.conf", {})
    assert (c.bind_address, c.bind_port, c.trust_domain.name) == ("127.0.0.1", 8081, "example.org")
    assert (c.datastore.settings["database_type"], c.key_manager.name) == ("sqlite3", "memory")
    assert [p.name for p in c.node_attestors] == ["join_token"]
    assert c.log_level == "DEBUG"


# --- random input -------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    ["server", "plugins", "{", "}", "=", '"', "[", "]", ",", "\n", " ", "trust_domain",
     '"example.org"', "1", "true", "DataStore", '"sql"', "plugin_data", "#", "/*", "*/",
     "${", "<<EOF\n", "EOF\n", "-", ".", "ca_ttl", '"1h"', "null", "(", ")", ":", "\\"]
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_TOKENS, max_size=40).map("".join)))
def test_random_text_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_random_values_for_a_key_only_raise_config_error(value: str) -> None:
    with contextlib.suppress(ConfigError):
        parse(conf(f"ca_ttl = {json.dumps(value)}"))


# --- SPIRE's TTL warnings -----------------------------------------------------------------


def test_default_ttls_give_no_warnings() -> None:
    from spiffed.server.config import ttl_warnings

    assert ttl_warnings(parse(conf())) == ()


def test_svid_ttl_longer_than_a_sixth_of_the_ca_ttl_warns() -> None:
    from spiffed.server.config import ttl_warnings

    (warning,) = ttl_warnings(parse(conf('default_x509_svid_ttl = "5h"')))
    assert warning.startswith("default_x509_svid_ttl is too high for the configured ca_ttl")
    assert "set default_x509_svid_ttl to 4h or less, or the ca_ttl to 30h or more" in warning


def test_svid_ttl_over_the_seven_day_cap_warns() -> None:
    from spiffed.server.config import ttl_warnings

    c = parse(conf('ca_ttl = "2400h"\ndefault_jwt_svid_ttl = "200h"\nagent_ttl = "200h"'))
    jwt, agent = ttl_warnings(c)
    assert jwt.startswith("default_jwt_svid_ttl is too high. ")
    assert "set default_jwt_svid_ttl to 168h or less" in jwt
    assert agent.startswith("agent_ttl is too high. ")
    low = parse(conf('ca_ttl = "48h"\ndefault_jwt_svid_ttl = "200h"'))
    (warning,) = ttl_warnings(low)
    assert "and the ca_ttl to 1008h or more" in warning


_JSON_KEYS = st.sampled_from(
    ["server", "plugins", "telemetry", "health_checks", "trust_domain", "data_dir",
     "bind_port", "admin_ids", "ca_subject", "DataStore", "sql", "KeyManager", "memory",
     "disk", "NodeAttestor", "x509pop", "plugin_data", "enabled", "plugin_cmd", "ratelimit",
     "Prometheus", "port", "keys_path", "ca_bundle_paths", "federation", "x"]
)  # fmt: skip
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_JSON_KEYS, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=5))
def test_random_json_structures_only_raise_config_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse(json.dumps(doc))


def _hcl(doc: dict[str, object], indent: str = "") -> str:
    """Render a dict as HCL: dicts become blocks, everything else an attribute."""
    out = []
    for key, value in doc.items():
        if isinstance(value, dict):
            out.append(f"{indent}{key} {{\n{_hcl(value, indent + '  ')}{indent}}}\n")
        else:
            text = "null" if value is None else json.dumps(value)
            out.append(f"{indent}{key} = {text}\n")
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=5))
def test_random_hcl_structures_only_raise_config_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse(_hcl(doc))


def test_plugin_data_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "ds.hcl").write_text('database_type = "postgres"\nconnection_string = "db"\n')
    plugins = PLUGINS.replace(
        'plugin_data {\n            database_type = "sqlite3"\n'
        '            connection_string = "./.data/datastore.sqlite3"\n        }',
        'plugin_data_file = "ds.hcl"',
    )
    assert 'plugin_data_file = "ds.hcl"' in plugins
    c = parse_server_config(conf(plugins=plugins), {}, cwd=tmp_path)
    assert c.datastore.options == {"database_type": "postgres", "connection_string": "db"}
    (tmp_path / "ds.hcl").write_text('database_type = "postgres"\nconection_string = "db"\n')
    with pytest.raises(ConfigError) as info:
        parse_server_config(conf(plugins=plugins), {}, cwd=tmp_path)
    assert str(info.value).startswith(
        f"{tmp_path / 'ds.hcl'}: plugins.DataStore.sql.plugin_data.conection_string (line 2): "
        "unknown key"
    )
    (tmp_path / "ds.hcl").unlink()
    with pytest.raises(
        ConfigError,
        match=r"plugins\.DataStore\.sql\.plugin_data_file \(line 9\): "
        r"unable to read",
    ):
        parse_server_config(conf(plugins=plugins), {}, cwd=tmp_path)


def test_plugin_data_and_plugin_data_file_together() -> None:
    plugins = PLUGINS.replace("plugin_data {}", 'plugin_data {}\n plugin_data_file = "x"', 1)
    exc = error(conf(plugins=plugins))
    assert str(exc) == (
        "plugins.KeyManager.memory.plugin_data_file (line 16): "
        "only one of [plugin_data, plugin_data_file] can be used"
    )
