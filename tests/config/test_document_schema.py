"""The shared pieces the server's and the agent's configs are built from."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from spiffed.config import (
    Body,
    ConfigError,
    Item,
    Key,
    Kind,
    decode_block,
    parse_document,
    reference_rows,
)


def test_hcl1_labels_nest_and_lines_are_kept() -> None:
    doc = parse_document('\n\nNodeAttestor "k8s_psat" plugin_data {\n  cluster = "c"\n}\n')
    (outer,) = doc.items
    assert (outer.key, outer.line) == ("NodeAttestor", 3)
    assert isinstance(outer.value, Body)
    (name,) = outer.value.items
    assert name.key == "k8s_psat"
    assert isinstance(name.value, Body)
    (data,) = name.value.items
    assert data.key == "plugin_data"
    assert data.value == Body((Item("cluster", "c", 4),), 3)


def test_blocks_and_objects_read_the_same() -> None:
    block = parse_document("a {\n  x = 1\n}\n").items[0].value
    obj = parse_document("a = {\n  x = 1\n}\n").items[0].value
    assert isinstance(block, Body) and isinstance(obj, Body)
    assert [(i.key, i.value) for i in block] == [(i.key, i.value) for i in obj] == [("x", 1)]


def test_values_strings_heredocs_and_repeats() -> None:
    text = (
        'a = "tab\\tquote\\" ${literal}"\n'
        "b = [1, -2, 3.5, true, null]\n"
        "c = <<EOF\nline one\nline two\nEOF\n"
        'a = "again"\n'
    )
    doc = parse_document(text)
    assert [i.key for i in doc] == ["a", "b", "c", "a"]
    assert doc.items[0].value == 'tab\tquote" ${literal}'
    assert doc.items[1].value == (1, -2, 3.5, True, None)
    assert doc.items[2].value == "line one\nline two"
    assert [i.line for i in doc.get_all("a")] == [1, 7]


def test_json_lists_of_objects_are_repeated_blocks() -> None:
    doc = parse_document('{"p": [{"a": {}}, {"b": {}}], "l": [1, 2]}')
    assert [i.key for i in doc] == ["p", "p", "l"]
    assert doc.items[2].value == (1, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = b + 1", "a (line 1): 'b + 1' is an expression; only literal values are allowed"),
        ("x {\n  y = f(1)\n}", "x.y (line 2): 'f(1)' is an expression"),
        ("a = ", "configuration (line 1): syntax error: unexpected input"),
        ("{]", "configuration (line 1): syntax error: invalid JSON"),
        ("[1]", "configuration (line 1): syntax error"),
    ],
)
def test_bad_documents(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_document(text)
    assert str(info.value).startswith(message)


KEYS = (
    Key("name", Kind.STRING, "A name.", required=True),
    Key("count", Kind.INT, "A count.", default=3),
    Key("every", Kind.DURATION, "An interval.", default=timedelta(seconds=5)),
    Key("where", Kind.PATH, "A file."),
    Key("tags", Kind.STRINGS, "Tags.", default=()),
    Key("inner", Kind.BLOCK, "Inner.", keys=(Key("on", Kind.BOOL, "On.", default=False),)),
    Key("legacy", Kind.INT, "Old.", default=0, supported=False),
)


def decode(text: str) -> dict[str, object]:
    return decode_block(parse_document(text), KEYS, "agent", cwd=Path("/w")).values


def test_decode_fills_defaults_and_types() -> None:
    values = decode('name = 7\ncount = "0x10"\nevery = "1m"\nwhere = "f"\ninner { on = true }')
    assert values["name"] == "7"  # HCL 1 takes a number where a string is expected
    assert values["count"] == 16
    assert values["every"] == timedelta(minutes=1)
    assert values["where"] == Path("/w/f")
    assert values["tags"] == ()
    assert values["inner"].values == {"on": True}  # type: ignore[attr-defined]
    assert values["legacy"] == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "agent.name (line None)"),
        ('name = "n"\ncont = 1', "agent.cont (line 2): unknown key in the agent block; "
         "did you mean 'count'?"),
        ('name = "n"\nname = "m"', "agent.name (line 2): is set more than once "
         "(first set on line 1)"),
        ('name = "n"\nlegacy = 2', "agent.legacy (line 2): is a SPIRE setting that spiffed "
         "recognises but does not support yet; remove it"),
        ('name = "n"\ninner { on = "yes" }', "agent.inner.on (line 2): expected true or false"),
        ('name = "n"\ntags = [1, true]', "agent.tags (line 2): expected a string, got the "
         "boolean true"),
    ],
)  # fmt: skip
def test_decode_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode(text)
    shown = str(info.value)
    if "line None" in message:
        assert shown == "agent.name: is required in the agent block"
    else:
        assert shown.startswith(message)


def test_unsupported_key_at_default_passes() -> None:
    assert decode('name = "n"\nlegacy = 0')["legacy"] == 0


def test_reference_rows_walk_nested_blocks() -> None:
    rows = reference_rows(KEYS, "agent")
    assert [r[0] for r in rows] == [
        "agent.name",
        "agent.count",
        "agent.every",
        "agent.where",
        "agent.tags",
        "agent.inner",
        "agent.inner.on",
        "agent.legacy",
    ]
    assert rows[0][1:3] == ("string", "required")
    assert rows[2][1:3] == ("duration", "5s")
    assert "not supported yet" in rows[-1][3]


def test_decode_plugins_with_an_agent_like_catalog() -> None:
    from spiffed.config import PluginCatalog, decode_plugins

    catalog = PluginCatalog(
        data_keys={
            ("WorkloadAttestor", "unix"): (
                Key("discover_workload_path", Kind.BOOL, "Find the binary.", default=False),
            ),
            ("KeyManager", "memory"): (),
        },
        spire_plugins={"WorkloadAttestor": ("unix", "k8s"), "KeyManager": ("memory", "disk")},
        counts={"KeyManager": (1, 1), "WorkloadAttestor": (1, None)},
    )
    text = (
        'plugins {\n  KeyManager "memory" {}\n'
        '  WorkloadAttestor "unix" { plugin_data { discover_workload_path = true } }\n}\n'
    )
    found = decode_plugins(parse_document(text).get_all("plugins"), catalog, cwd=Path("/"))
    (unix,) = found["WorkloadAttestor"]
    assert unix.options == {"discover_workload_path": True}
    with pytest.raises(ConfigError) as info:
        decode_plugins(
            parse_document(text.replace('"unix"', '"k8s"')).get_all("plugins"),
            catalog,
            cwd=Path("/"),
        )
    assert str(info.value) == (
        "plugins.WorkloadAttestor.k8s (line 3): SPIRE's WorkloadAttestor plugin 'k8s' is not "
        "supported by spiffed yet; built-in: unix"
    )
    with pytest.raises(ConfigError, match="a WorkloadAttestor plugin is required"):
        decode_plugins(
            parse_document('plugins {\n  KeyManager "memory" {}\n}').get_all("plugins"),
            catalog,
            cwd=Path("/"),
        )
