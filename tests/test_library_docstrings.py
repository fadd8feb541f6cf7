"""Issue #6: every public function and class of the workload library has a docstring and type
hints (mypy --strict checks the hints' correctness; this checks they are there)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

import spiffed.bundle
import spiffed.svid
import spiffed.workloadapi

_PACKAGES = (spiffed.bundle, spiffed.svid, spiffed.workloadapi)
_MODULES = ("spiffed.spiffeid", "spiffed.tls", "spiffed.authorize", "spiffed.selector")


def _library_modules() -> Iterator[str]:
    yield from _MODULES
    for package in _PACKAGES:
        yield package.__name__
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if not info.name.rsplit(".", 1)[1].startswith("_"):
                yield info.name


def _unwrap(value: object) -> object:
    if isinstance(value, classmethod | staticmethod):
        return value.__func__
    if isinstance(value, property):
        return value.fget
    return value


def _public_objects() -> Iterator[tuple[str, object]]:
    for name in _library_modules():
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if getattr(obj, "__module__", name) != name:
                continue  # re-exported; checked where it is defined
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{name}.{attr}", obj
                if inspect.isclass(obj):
                    for member, raw in vars(obj).items():
                        value = _unwrap(raw)
                        if member.startswith("_") or not inspect.isfunction(value):
                            continue
                        yield f"{name}.{attr}.{member}", value


_OBJECTS = list(_public_objects())


@pytest.mark.parametrize(("qualname", "obj"), _OBJECTS, ids=[q for q, _ in _OBJECTS])
def test_public_api_has_docstring_and_hints(qualname: str, obj: object) -> None:
    assert inspect.getdoc(obj), f"{qualname} has no docstring"
    if inspect.isfunction(obj):
        hints = obj.__annotations__
        assert "return" in hints, f"{qualname} has no return type"
        params = [
            p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")
        ]
        missing = [p.name for p in params if p.name not in hints]
        assert not missing, f"{qualname}: parameters without a type: {missing}"


def test_the_walk_finds_the_library() -> None:
    names = {q for q, _ in _public_objects()}
    assert "spiffed.workloadapi.sources.X509Source" in names
    assert "spiffed.spiffeid.SpiffeId.parse" in names
    assert len(names) > 100
