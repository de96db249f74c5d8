"""A list's items decoded one at a time (``kube.api.list_items``) against ``json.loads``:
the same items and the same other members, whatever the spacing and member order; a
malformed body raises ``ValueError`` as ``json.loads`` does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.kube.api import list_items

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _decoded(text: str) -> tuple[list[Any], dict[str, Any]]:
    top: dict[str, Any] = {}
    items = list(list_items(text, top))
    return items, top


@props(300)
@given(
    st.dictionaries(st.sampled_from(("kind", "apiVersion", "metadata", "x")), _JSON, max_size=4),
    st.one_of(st.lists(_JSON, max_size=5), _JSON),
    st.booleans(),
    st.sampled_from((None, 0, 2)),
    st.booleans(),
)
def test_the_items_and_members_are_what_json_loads_gives(
    others: dict[str, Any], items: Any, items_first: bool, indent: int | None, ascii_only: bool
) -> None:
    body = {"items": items, **others} if items_first else {**others, "items": items}
    text = json.dumps(body, indent=indent, ensure_ascii=ascii_only)
    got, top = _decoded(text)
    loaded = json.loads(text)
    assert got == (loaded["items"] if isinstance(loaded["items"], list) else [])
    assert {k: v for k, v in top.items() if k != "items"} == {k: v for k, v in loaded.items() if k != "items"}
    if not isinstance(loaded["items"], list):
        assert top["items"] == loaded["items"]


_MALFORMED = ['{"items": [1, 2', '{"items": [1 2]}', '{"items": [1,]}', '{"a": 1} x', '{"a" 1}', "{1: 2}", ""]


@pytest.mark.parametrize("text", [*_MALFORMED, '{"a": 1,}'])
def test_a_malformed_body_raises_as_json_loads_does(text: str) -> None:
    with pytest.raises(ValueError, match=r"Expecting|Extra data"):
        json.loads(text)
    with pytest.raises(ValueError, match=r"malformed list|Expecting"):
        _decoded(text)


def test_a_body_that_is_no_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"malformed list: expected one of '\{'"):
        _decoded("[1]")


def test_an_empty_object_and_spacing() -> None:
    assert _decoded(" { } ") == ([], {})
    assert _decoded('{ "items" : [ ] , "metadata" : { "continue" : "t" } }') == (
        [],
        {"items": None, "metadata": {"continue": "t"}},
    )
