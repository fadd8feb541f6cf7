"""Subset matching by index equals the brute-force definition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spiffed.selector import Selector
from spiffed.selectorindex import SubsetIndex

SELS = [Selector("unix", f"uid:{i}") for i in range(5)] + [Selector("unix", "user:web")]
sel_sets = st.lists(st.sampled_from(SELS), max_size=4, unique=True).map(frozenset)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 9), st.one_of(st.none(), sel_sets)), max_size=40),
    query=sel_sets,
)
def test_match_is_subset_of_query(ops, query) -> None:
    index: SubsetIndex[int] = SubsetIndex()
    model: dict[int, frozenset[Selector]] = {}
    for key, sels in ops:
        if sels is None:
            index.remove(key)
            model.pop(key, None)
        else:
            index.put(key, sels)
            model[key] = sels
    assert len(index) == len(model)
    expected = {k for k, s in model.items() if s and s <= query}
    assert index.match(query) == expected


def test_item_without_selectors_never_matches() -> None:
    index: SubsetIndex[str] = SubsetIndex()
    index.put("empty", [])
    index.put("one", [SELS[0]])
    assert index.match(SELS) == {"one"}
    assert "empty" in index and index.selectors_of("empty") == frozenset()
