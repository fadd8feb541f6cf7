"""Our copy of SPIRE's server API (proto/spiffed/_proto/spire/) against spire-api-sdk itself.

tests/interop/spireapi is a small Go program that links the SDK's generated Go packages
(github.com/spiffe/spire-api-sdk, the version pinned in its go.mod) and prints every message,
enum and service registered for ``spire/api/...`` files. The same description is built from
our Python descriptors; the two must be identical for the packages we cover.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

import spiffed._proto.spire
from tests.interop.gobuild import build_go_program

OUR_PREFIX = "spiffed/_proto/"
SDK_VERSION = "v1.15.3"

SERVICES = {
    "spire.api.server.agent.v1.Agent",
    "spire.api.server.bundle.v1.Bundle",
    "spire.api.server.debug.v1.Debug",
    "spire.api.server.entry.v1.Entry",
    "spire.api.server.localauthority.v1.LocalAuthority",
    "spire.api.server.logger.v1.Logger",
    "spire.api.server.svid.v1.SVID",
    "spire.api.server.trustdomain.v1.TrustDomain",
}


def covered(package: str) -> bool:
    """The packages we promise to mirror: all shared types and the server services."""
    return package == "spire.api.types" or package.startswith("spire.api.server.")


Description = dict[str, dict[str, Any]]


# --- our side -------------------------------------------------------------------------------


def our_modules() -> list[ModuleType]:
    root = spiffed._proto.spire
    names = [
        info.name
        for info in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + ".")
        if info.name.endswith("_pb2")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def type_name(number: int) -> str:
    return descriptor_pb2.FieldDescriptorProto.Type.Name(number).removeprefix("TYPE_").lower()


def describe_enum(enum: EnumDescriptor, path: str, out: Description) -> None:
    out["enums"][enum.full_name] = {
        "file": path,
        "values": [{"name": v.name, "number": v.number} for v in enum.values],
    }


def describe_message(
    message: Descriptor, proto: descriptor_pb2.DescriptorProto, path: str, out: Description
) -> None:
    fields = []
    for field, field_proto in zip(message.fields, proto.field, strict=True):
        assert field.name == field_proto.name
        if field.is_repeated:
            label = "repeated"
        elif field.is_required:
            label = "required"
        else:
            label = "optional"
        described: dict[str, Any] = {
            "name": field.name,
            "json_name": field.json_name,
            "number": field.number,
            "type": type_name(field.type),
            "label": label,
            "proto3_optional": field_proto.proto3_optional,
            "map": field.message_type is not None and field.message_type.GetOptions().map_entry,
            "deprecated": field.GetOptions().deprecated,
        }
        if field.message_type is not None:
            described["type_name"] = field.message_type.full_name
        elif field.enum_type is not None:
            described["type_name"] = field.enum_type.full_name
        if field.containing_oneof is not None:
            described["oneof"] = field.containing_oneof.name
            described["oneof_index"] = field.containing_oneof.index
        fields.append(described)
    reserved = list(proto.reserved_name) + [f"{r.start}-{r.end}" for r in proto.reserved_range]
    out["messages"][message.full_name] = {
        "file": path,
        "map_entry": message.GetOptions().map_entry,
        "fields": fields,
        "oneofs": [o.name for o in message.oneofs],
        "reserved": reserved,
    }
    for nested, nested_proto in zip(message.nested_types, proto.nested_type, strict=True):
        describe_message(nested, nested_proto, path, out)
    for enum in message.enum_types:
        describe_enum(enum, path, out)


def describe_file(file: FileDescriptor, out: Description) -> None:
    assert file.name.startswith(OUR_PREFIX), file.name
    path = file.name.removeprefix(OUR_PREFIX)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    out["files"][path] = {"package": file.package}
    for message_proto in proto.message_type:
        describe_message(file.message_types_by_name[message_proto.name], message_proto, path, out)
    for enum in file.enum_types_by_name.values():
        describe_enum(enum, path, out)
    for service in file.services_by_name.values():
        out["services"][service.full_name] = {
            "file": path,
            "methods": [
                {
                    "name": m.name,
                    "input": m.input_type.full_name,
                    "output": m.output_type.full_name,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in service.methods
            ],
        }


def describe_ours() -> Description:
    out: Description = {"files": {}, "messages": {}, "enums": {}, "services": {}}
    for module in our_modules():
        describe_file(module.DESCRIPTOR, out)
    return out


# --- the SDK's side -------------------------------------------------------------------------


def only_covered(description: Description) -> Description:
    packages = {
        path: f["package"] for path, f in description["files"].items() if covered(f["package"])
    }
    return {
        "files": {path: {"package": package} for path, package in packages.items()},
        **{
            kind: {name: d for name, d in description[kind].items() if d["file"] in packages}
            for kind in ("messages", "enums", "services")
        },
    }


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Description:
    binary = build_go_program("spireapi", tmp_path_factory.mktemp("go"))
    result = subprocess.run([str(binary)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return only_covered(json.loads(result.stdout))


@pytest.fixture(scope="module")
def ours() -> Description:
    return describe_ours()


def diff_paths(sdk: Any, ours: Any, where: str) -> list[str]:
    """Where two JSON-like values differ, as "path: sdk=... ours=..." lines."""
    if isinstance(sdk, dict) and isinstance(ours, dict):
        return [
            line
            for key in sorted(sdk.keys() | ours.keys())
            for line in diff_paths(sdk.get(key), ours.get(key), f"{where}.{key}")
        ]
    if isinstance(sdk, list) and isinstance(ours, list) and len(sdk) == len(ours):
        return [
            line
            for i, (a, b) in enumerate(zip(sdk, ours, strict=True))
            for line in diff_paths(a, b, f"{where}[{i}]")
        ]
    return [] if sdk == ours else [f"{where}: sdk={json.dumps(sdk)} ours={json.dumps(ours)}"]


def differences(kind: str, sdk: Description, ours: Description) -> list[str]:
    problems = []
    for name in sorted(sdk[kind].keys() | ours[kind].keys()):
        if name not in ours[kind]:
            problems.append(f"{kind}: {name} is in the SDK but not ours")
        elif name not in sdk[kind]:
            problems.append(f"{kind}: {name} is ours but not in the SDK")
        else:
            problems += diff_paths(sdk[kind][name], ours[kind][name], name)
    return problems


# --- tests ----------------------------------------------------------------------------------


def test_pinned_sdk_version() -> None:
    go_mod = (Path(__file__).parent / "interop" / "spireapi" / "go.mod").read_text()
    assert f"github.com/spiffe/spire-api-sdk {SDK_VERSION}" in go_mod


def test_our_files_are_in_the_covered_packages(ours: Description) -> None:
    assert ours["files"], "no generated modules under spiffed._proto.spire; run `make proto`"
    assert all(covered(f["package"]) for f in ours["files"].values()), ours["files"]
    assert set(ours["services"]) == SERVICES


def test_grpclib_paths_are_spires() -> None:
    from spiffed._proto.spire.api.server.agent.v1 import agent_grpc
    from spiffed._proto.spire.api.server.entry.v1 import entry_grpc

    class AnyHandler:
        def __getattr__(self, name: str) -> None:
            return None

    entry = entry_grpc.EntryBase.__mapping__(AnyHandler())
    agent = agent_grpc.AgentBase.__mapping__(AnyHandler())
    assert "/spire.api.server.entry.v1.Entry/ListEntries" in entry
    sync = entry["/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries"]
    assert sync.cardinality.name == "STREAM_STREAM"
    attest = agent["/spire.api.server.agent.v1.Agent/AttestAgent"]
    assert attest.cardinality.name == "STREAM_STREAM"
    assert agent["/spire.api.server.agent.v1.Agent/RenewAgent"].cardinality.name == "UNARY_UNARY"


@pytest.mark.interop
def test_same_files_and_packages(sdk: Description, ours: Description) -> None:
    assert sdk["files"] == ours["files"]


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["messages", "enums", "services"])
def test_identical_to_spire_api_sdk(kind: str, sdk: Description, ours: Description) -> None:
    assert sdk[kind], f"the SDK program described no {kind}"
    problems = differences(kind, sdk, ours)
    assert not problems, "\n".join(problems)
