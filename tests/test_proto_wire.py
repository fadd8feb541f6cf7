"""Wire compatibility of our Workload API messages with py-spiffe's (§12 workloadapi.proto).

Our messages live in ``spiffed._proto.workload.workload_pb2`` (proto package
``spiffed.workload``); py-spiffe's in ``spiffe._proto.workload_pb2`` (no package). The package
changes message and service *names* inside a process, never the bytes on the wire: those
are made of field numbers and wire types only. So every message is filled completely on one
side, serialized, parsed on the other side and compared field by field, both ways, and the
two descriptors are compared number by number. Our descriptors are also checked against the
§12 table, WIT messages included (py-spiffe 0.3 has none).

Spec pin: spiffe/spiffe standards at commit 665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor_pool, struct_pb2, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st
from spiffe._proto import workload_pb2 as theirs_pb2

from spiffed._proto.workload import workload_pb2 as ours_pb2

pytestmark = pytest.mark.interop

SHARED_MESSAGES = [
    "X509SVIDRequest",
    "X509SVIDResponse",
    "X509SVID",
    "X509BundlesRequest",
    "X509BundlesResponse",
    "JWTSVIDRequest",
    "JWTSVIDResponse",
    "JWTSVID",
    "JWTBundlesRequest",
    "JWTBundlesResponse",
    "ValidateJWTSVIDRequest",
    "ValidateJWTSVIDResponse",
]
WIT_MESSAGES = [
    "WITSVIDRequest",
    "WITSVIDResponse",
    "WITSVID",
    "WITBundlesRequest",
    "WITBundlesResponse",
]

# §12, transcribed: message -> [(number, name, type)].
SECTION_12: dict[str, list[tuple[int, str, str]]] = {
    "X509SVIDRequest": [],
    "X509SVIDResponse": [
        (1, "svids", "repeated X509SVID"),
        (2, "crl", "repeated bytes"),
        (3, "federated_bundles", "map<string, bytes>"),
    ],
    "X509SVID": [
        (1, "spiffe_id", "string"),
        (2, "x509_svid", "bytes"),
        (3, "x509_svid_key", "bytes"),
        (4, "bundle", "bytes"),
        (5, "hint", "string"),
    ],
    "X509BundlesRequest": [],
    "X509BundlesResponse": [(1, "crl", "repeated bytes"), (2, "bundles", "map<string, bytes>")],
    "JWTSVIDRequest": [(1, "audience", "repeated string"), (2, "spiffe_id", "string")],
    "JWTSVIDResponse": [(1, "svids", "repeated JWTSVID")],
    "JWTSVID": [(1, "spiffe_id", "string"), (2, "svid", "string"), (3, "hint", "string")],
    "JWTBundlesRequest": [],
    "JWTBundlesResponse": [(1, "bundles", "map<string, bytes>")],
    "ValidateJWTSVIDRequest": [(1, "audience", "string"), (2, "svid", "string")],
    "ValidateJWTSVIDResponse": [
        (1, "spiffe_id", "string"),
        (2, "claims", "google.protobuf.Struct"),
    ],
    "WITSVIDRequest": [(1, "spiffe_id", "string")],
    "WITSVIDResponse": [(1, "svids", "repeated WITSVID")],
    "WITSVID": [
        (1, "spiffe_id", "string"),
        (2, "wit_svid", "string"),
        (3, "wit_svid_key", "string"),
        (4, "hint", "string"),
    ],
    "WITBundlesRequest": [],
    "WITBundlesResponse": [(1, "bundles", "map<string, string>")],
}

# §12 RPC table: method -> (request, response, server-streaming?)
SECTION_12_RPCS: dict[str, tuple[str, str, bool]] = {
    "FetchX509SVID": ("X509SVIDRequest", "X509SVIDResponse", True),
    "FetchX509Bundles": ("X509BundlesRequest", "X509BundlesResponse", True),
    "FetchJWTSVID": ("JWTSVIDRequest", "JWTSVIDResponse", False),
    "FetchJWTBundles": ("JWTBundlesRequest", "JWTBundlesResponse", True),
    "ValidateJWTSVID": ("ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse", False),
    "FetchWITSVID": ("WITSVIDRequest", "WITSVIDResponse", True),
    "FetchWITBundles": ("WITBundlesRequest", "WITBundlesResponse", True),
}

_SCALAR_NAMES = {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes"}


def type_of(field: FieldDescriptor) -> str:
    """A field's type written as in §12 (``repeated X``, ``map<K, V>``, message names short
    except for well-known types)."""
    msg = field.message_type
    if msg is not None and msg.GetOptions().map_entry:
        key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
        return f"map<{type_of(key)}, {type_of(value)}>"
    if msg is not None:
        base = msg.full_name if msg.full_name.startswith("google.protobuf.") else msg.name
    else:
        base = _SCALAR_NAMES.get(field.type, f"type{field.type}")
    return f"repeated {base}" if field.is_repeated else base


def shape(desc: Descriptor) -> list[tuple[int, str, str]]:
    return sorted((f.number, f.name, type_of(f)) for f in desc.fields)


# --------------------------------------------------------------------------------------
# Filling and comparing messages generically


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def _scalar(field: FieldDescriptor, n: int) -> str | bytes:
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{n}-\u00fc\U0001f600"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff\x30\x82" + field.name.encode() + n.to_bytes(2, "big")
    raise AssertionError(f"no filler for field {field.full_name} of type {field.type}")


def _claims(n: int) -> dict[str, Any]:
    return {
        "sub": f"spiffe://example.org/w{n}",
        "aud": ["a", "b"],
        "exp": 1_700_000_000 + n,
        "nested": {"flag": True, "none": None, "list": [1.5, "x", {"k": "v"}]},
    }


def fill(msg: Message, counter: Iterator[int]) -> Message:
    """Set every field of ``msg``: two items in each repeated field and map, nested messages
    filled recursively, distinct values everywhere."""
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            val_f = sub.fields_by_name["value"]
            for _ in range(2):
                value[f"spiffe://td{next(counter)}.example"] = _scalar(val_f, next(counter))
        elif sub is not None and sub.full_name == "google.protobuf.Struct":
            value.update(_claims(next(counter)))
        elif sub is not None and field.is_repeated:
            for _ in range(2):
                fill(value.add(), counter)
        elif sub is not None:
            fill(value, counter)
        elif field.is_repeated:
            value.extend([_scalar(field, next(counter)) for _ in range(2)])
        else:
            setattr(msg, field.name, _scalar(field, next(counter)))
    return msg


def assert_same(a: Message, b: Message, where: str = "") -> None:
    """Compare two messages of (possibly) different classes field by field, by number."""
    a_fields = {f.number: f for f in a.DESCRIPTOR.fields}
    b_fields = {f.number: f for f in b.DESCRIPTOR.fields}
    assert set(a_fields) == set(b_fields), where
    for number, fa in a_fields.items():
        fb = b_fields[number]
        path = f"{where}.{fa.name}"
        assert fa.name == fb.name, path
        va, vb = getattr(a, fa.name), getattr(b, fb.name)
        sub = fa.message_type
        if sub is not None and sub.GetOptions().map_entry:
            assert dict(va) == dict(vb), path
            assert len(va) == 2, path
        elif sub is not None and sub.full_name == "google.protobuf.Struct":
            assert va == vb, path
        elif sub is not None and fa.is_repeated:
            assert len(va) == len(vb) == 2, path
            for i, (xa, xb) in enumerate(zip(va, vb, strict=True)):
                assert_same(xa, xb, f"{path}[{i}]")
        elif sub is not None:
            assert a.HasField(fa.name) and b.HasField(fb.name), path
            assert_same(va, vb, path)
        elif fa.is_repeated:
            assert list(va) == list(vb), path
            assert len(va) == 2, path
        else:
            assert va == vb, path
            assert va, f"{path} was left empty by fill()"


def cross(src: Message, dst_cls: type[Message]) -> Message:
    """Serialize ``src``, parse as ``dst_cls``, check nothing fell into unknown fields."""
    data = src.SerializeToString(deterministic=True)
    dst = dst_cls.FromString(data)
    assert len(unknown_fields.UnknownFieldSet(dst)) == 0
    assert dst.SerializeToString(deterministic=True) == data
    return dst


# --------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", SHARED_MESSAGES)
def test_wire_ours_to_pyspiffe(name: str) -> None:
    ours = fill(getattr(ours_pb2, name)(), _counter())
    assert_same(ours, cross(ours, getattr(theirs_pb2, name)), name)


@pytest.mark.parametrize("name", SHARED_MESSAGES)
def test_wire_pyspiffe_to_ours(name: str) -> None:
    theirs = fill(getattr(theirs_pb2, name)(), _counter())
    assert_same(theirs, cross(theirs, getattr(ours_pb2, name)), name)


@pytest.mark.parametrize("name", WIT_MESSAGES)
def test_wire_wit_messages_round_trip(name: str) -> None:
    """WIT messages (Incubating) exist only on our side; they must survive a round trip."""
    ours = fill(getattr(ours_pb2, name)(), _counter())
    assert_same(ours, cross(ours, getattr(ours_pb2, name)), name)


@pytest.mark.parametrize("name", SHARED_MESSAGES)
def test_descriptors_match_pyspiffe(name: str) -> None:
    """Same field numbers, names, wire types, repeatedness and map-ness as py-spiffe."""
    ours_desc = getattr(ours_pb2, name).DESCRIPTOR
    theirs_desc = getattr(theirs_pb2, name).DESCRIPTOR
    assert shape(ours_desc) == shape(theirs_desc)
    for field in ours_desc.fields:
        other = theirs_desc.fields_by_number[field.number]
        assert (field.type, field.is_repeated) == (other.type, other.is_repeated), field.name


def test_descriptors_have_every_pyspiffe_message() -> None:
    theirs = set(theirs_pb2.DESCRIPTOR.message_types_by_name)
    ours = set(ours_pb2.DESCRIPTOR.message_types_by_name)
    assert theirs == set(SHARED_MESSAGES)
    assert ours == set(SHARED_MESSAGES) | set(WIT_MESSAGES)


@pytest.mark.parametrize("name", sorted(SECTION_12))
def test_section_12_table_holds_for_our_descriptors(name: str) -> None:
    assert shape(getattr(ours_pb2, name).DESCRIPTOR) == sorted(SECTION_12[name])


def test_section_12_x509_bundles_response_crl_1_bundles_2() -> None:
    """The pre-2021 go-spiffe trap had bundles=1; the standard is crl=1, bundles=2."""
    fields = ours_pb2.X509BundlesResponse.DESCRIPTOR.fields_by_name
    assert fields["crl"].number == 1
    assert fields["bundles"].number == 2
    data = ours_pb2.X509BundlesResponse(
        crl=[b"C"], bundles={"spiffe://td": b"B"}
    ).SerializeToString()
    # field 1, wire type 2 (LEN) = 0x0a; field 2, wire type 2 = 0x12
    assert data.startswith(b"\x0a\x01C\x12")


def test_section_12_rpcs_match_table_and_pyspiffe() -> None:
    ours = ours_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    theirs = theirs_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]
    assert theirs.full_name == "SpiffeWorkloadAPI"
    got = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in ours.methods
    }
    assert got == SECTION_12_RPCS
    assert not any(m.client_streaming for m in ours.methods)
    for m in theirs.methods:
        assert got[m.name] == (m.input_type.name, m.output_type.name, m.server_streaming)


def test_both_modules_share_one_process_without_clash() -> None:
    """Both files live in the default descriptor pool under different names."""
    pool = descriptor_pool.Default()
    assert pool.FindMessageTypeByName("X509SVID") is theirs_pb2.X509SVID.DESCRIPTOR
    assert pool.FindMessageTypeByName("spiffed.workload.X509SVID") is ours_pb2.X509SVID.DESCRIPTOR
    assert pool.FindServiceByName("SpiffeWorkloadAPI") is not None
    assert pool.FindServiceByName("spiffed.workload.SpiffeWorkloadAPI") is not None


@pytest.mark.parametrize(
    "order",
    [
        ("spiffe._proto.workload_pb2", "spiffed._proto.workload.workload_pb2"),
        ("spiffed._proto.workload.workload_pb2", "spiffe._proto.workload_pb2"),
        ("spiffe", "spiffed._proto.workload.workload_pb2", "spiffe.workloadapi"),
    ],
)
def test_both_modules_import_in_a_fresh_process(order: tuple[str, ...]) -> None:
    """Import order must not matter; a pool clash would raise TypeError at import."""
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *order],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@given(
    st.lists(st.tuples(st.text(), st.binary(), st.binary(), st.binary(), st.text()), max_size=3),
    st.lists(st.binary(), max_size=3),
    st.dictionaries(st.text(), st.binary(), max_size=3),
)
def test_wire_x509_svid_response_arbitrary_values_both_ways(
    svids: list[tuple[str, bytes, bytes, bytes, str]], crl: list[bytes], fed: dict[str, bytes]
) -> None:
    for src_mod, dst_mod in ((ours_pb2, theirs_pb2), (theirs_pb2, ours_pb2)):
        src = src_mod.X509SVIDResponse(
            svids=[
                src_mod.X509SVID(spiffe_id=s, x509_svid=c, x509_svid_key=k, bundle=b, hint=h)
                for s, c, k, b, h in svids
            ],
            crl=crl,
            federated_bundles=fed,
        )
        dst = dst_mod.X509SVIDResponse.FromString(src.SerializeToString())
        assert [
            (x.spiffe_id, x.x509_svid, x.x509_svid_key, x.bundle, x.hint) for x in dst.svids
        ] == svids
        assert list(dst.crl) == crl
        assert dict(dst.federated_bundles) == fed


@given(
    st.lists(st.text(), max_size=3),
    st.text(),
    st.dictionaries(
        st.text(),
        st.one_of(st.text(), st.booleans(), st.none(), st.integers(-(2**53), 2**53)),
        max_size=4,
    ),
)
def test_wire_jwt_messages_arbitrary_values_both_ways(
    audience: list[str], spiffe_id: str, claims: dict[str, Any]
) -> None:
    for src_mod, dst_mod in ((ours_pb2, theirs_pb2), (theirs_pb2, ours_pb2)):
        req = dst_mod.JWTSVIDRequest.FromString(
            src_mod.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id).SerializeToString()
        )
        assert (list(req.audience), req.spiffe_id) == (audience, spiffe_id)
        struct = struct_pb2.Struct()
        struct.update(claims)
        resp = dst_mod.ValidateJWTSVIDResponse.FromString(
            src_mod.ValidateJWTSVIDResponse(spiffe_id=spiffe_id, claims=struct).SerializeToString()
        )
        assert resp.spiffe_id == spiffe_id
        assert resp.claims == struct
