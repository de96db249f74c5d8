"""Journaled sets (wholeip.nft.journal): the engine's memory of the last commit as a view of
the index's live sets, without a copy. Whatever changes a journaled set after it is armed,
the view answers what it held then; and an engine that remembers views commits exactly
what an engine with copies would."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.core.elements import live_elements, table_doc
from wholeip.engine import Engine
from wholeip.nft.diff import diff
from wholeip.nft.doc import Elem
from wholeip.nft.fake import FakeBackend
from wholeip.nft.journal import Committed, JournaledSet

ELEMS = st.sampled_from([f"10.0.0.{n}" for n in range(8)])
SOME = st.lists(ELEMS, max_size=5)

op = st.one_of(
    st.tuples(st.sampled_from(["add", "discard", "remove"]), ELEMS),
    st.tuples(st.sampled_from(["pop", "clear"]), st.none()),
    st.tuples(
        st.sampled_from(
            [
                "update",
                "difference_update",
                "intersection_update",
                "symmetric_difference_update",
                "__ior__",
                "__isub__",
                "__iand__",
                "__ixor__",
            ]
        ),
        SOME,
    ),
)


def apply(live: set[Elem], plain: set[Elem], name: str, arg: Any) -> None:
    """One change to both sets, as any caller could make it (set(arg) for the in-place
    operators; what ``pop`` took from the one is discarded from the other)."""
    if name == "pop":
        if live:
            plain.discard(live.pop())
        return
    for s in (live, plain):
        _apply(s, name, arg)


def _apply(s: set[Elem], name: str, arg: Any) -> None:
    if name == "clear":
        s.clear()
    elif name == "remove":
        if arg in s:
            s.remove(arg)
    elif name.startswith("__"):
        getattr(s, name)(set(arg))
    else:
        getattr(s, name)(arg)


@props(100)
@given(SOME, st.lists(op, max_size=12), st.lists(op, max_size=12))
def test_a_view_answers_what_the_set_held_when_armed(
    start: list[str], before: list[tuple[str, Any]], after: list[tuple[str, Any]]
) -> None:
    live, plain = JournaledSet(start), set(start)
    for name, arg in before:  # unarmed: a set like any other
        apply(live, plain, name, arg)
    assert live == plain
    assert live.journal is None
    owner = Engine(backend=FakeBackend())
    live.arm(owner)
    then = set(live)
    view = Committed(live)
    for name, arg in after:
        apply(live, plain, name, arg)
        assert live == plain
        assert set(view) == then
        assert len(view) == len(then)
        assert all((e in view) == (e in then) for e in [f"10.0.0.{n}" for n in range(9)])
        assert view.changed() == then ^ plain
        assert view.materialize() == then
    if then == plain:
        assert view.materialize() is live  # nothing changed in the end: no copy
    # Set algebra with a plain set on either side (what the diff does with touched sets).
    probe = {"10.0.0.1", "10.0.0.2", "10.0.0.9"}
    assert probe & view == probe & then
    assert probe - view == probe - then
    assert view - probe == then - probe
    assert view == then


def test_one_owner_at_a_time_and_disarming_is_the_owners() -> None:
    live = JournaledSet(["a"])
    first, second = Engine(backend=FakeBackend()), Engine(backend=FakeBackend())
    assert live.owned_by(first)
    assert live.owned_by(second)
    live.arm(first)
    assert live.owned_by(first)
    assert not live.owned_by(second)
    live.disarm(second)  # not its to disarm
    assert live.journal == {}
    live.add("b")
    assert live.journal == {"b": False}
    del first
    gc.collect()
    assert live.owned_by(second)  # the owner is gone: the set is free
    live.arm(second)
    live.disarm(second)
    assert live.journal is None


# --------------------------------------------------------------------------- the engine


set_op = st.tuples(
    st.sampled_from(["ingress4", "egress4", "away4"]),
    st.sampled_from(["add", "discard"]),
    st.integers(1, 6),
)


def _elem(name: str, n: int) -> Elem:
    if name == "away4":
        return f"203.0.113.{n}"
    key, value = (f"203.0.113.{n}", f"10.244.1.{n % 3}") if name == "ingress4" else (f"10.244.1.{n}", f"203.0.113.{n}")
    return (key, value)


@props(25)
@given(st.lists(st.lists(set_op, max_size=6), min_size=1, max_size=5), st.data())
def test_an_engine_remembering_views_commits_what_the_kernel_must_hold(
    rounds: list[list[tuple[str, str, int]]], data: st.DataObject
) -> None:
    """Changes to the live sets in rounds, each round a sync with what it touched (or a
    full one, or one the kernel refuses): the kernel always ends up holding the live sets,
    the engine's memory stays views of them (no copy), and a full sync finds no drift."""
    live = live_elements()
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(table_doc(live))
    for changes in rounds:
        touched: dict[str, set[Elem]] = {}
        for name, how, n in changes:
            elem = _elem(name, n)
            getattr(live[name], how)(elem)
            touched.setdefault(name, set()).add(elem)
        kind = data.draw(st.sampled_from(["partial", "partial", "full", "refused"]))
        if kind == "refused":
            backend.fail_next = RuntimeError("refused")
            with contextlib.suppress(RuntimeError):
                engine.sync(table_doc(live), touched=touched)
            if backend.fail_next is None:  # (an empty plan sends nothing to refuse)
                assert engine.last is None
                assert all(s.journal is None for s in live.values())  # the memory is void, the journals too
            backend.fail_next = None
        result = engine.sync(table_doc(live), full=kind == "full", touched=touched)
        assert not result.drift
        observed = engine.observe()
        assert observed is not None
        assert diff(table_doc(live), observed).empty
        for name in ("ingress4", "egress4", "away4"):
            view = engine._memory[name]
            assert isinstance(view, Committed)
            assert view.live is live[name]
    assert engine.sync(table_doc(live), full=True).plan.empty


def test_a_second_engine_on_the_same_sets_keeps_its_own_copy() -> None:
    live = live_elements()
    live["away4"].add("203.0.113.1")
    first, second = Engine(backend=FakeBackend()), Engine(backend=FakeBackend())
    first.sync(table_doc(live))
    second.sync(table_doc(live))
    assert isinstance(first._memory["away4"], Committed)
    assert type(second._memory["away4"]) is set
    live["away4"].add("203.0.113.2")
    touched = {"away4": {"203.0.113.2"}}
    for engine in (first, second):
        assert engine.sync(table_doc(live), touched=touched).plan.added == 1
        assert engine.sync(table_doc(live), full=True).plan.empty


def test_drift_is_still_found_against_a_view() -> None:
    live = live_elements()
    live["away4"].update({"203.0.113.1", "203.0.113.2"})
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(table_doc(live))
    backend.transact(
        [{"delete": {"element": {"family": "inet", "table": "wholeip", "name": "away4", "elem": ["203.0.113.1"]}}}]
    )
    live["away4"].add("203.0.113.3")  # and a change of our own since the commit
    result = engine.sync(table_doc(live), full=True)
    assert result.drift
    assert result.plan.added == 2
    assert diff(table_doc(live), engine.observe()).empty  # type: ignore[arg-type]
