"""Pausing the cyclic collector around bulk work (``core.gcpause``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from wholeip.core.gcpause import freeze_kept, gc_paused, unfreeze_kept


@pytest.fixture(autouse=True)
def _nothing_frozen() -> Iterator[None]:
    unfreeze_kept()
    yield
    unfreeze_kept()


def _generation_of(obj: object) -> int | None:
    """The generation holding ``obj``; None when frozen (in no generation)."""
    return next((g for g in range(3) if any(o is obj for o in gc.get_objects(generation=g))), None)


def test_paused_inside_and_restored() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused(long_lived=True):
            pass
        assert not gc.isenabled()  # as it was
    finally:
        gc.enable()


def test_what_lives_long_goes_to_the_oldest_generation_unscanned() -> None:
    with gc_paused():
        short = [[1]]
    assert _generation_of(short) == 0  # the next collection scans it
    with gc_paused(long_lived=True):
        kept = [[1]]
    assert _generation_of(kept) == 2
    assert gc.get_freeze_count() == 0


def test_in_a_process_that_froze_what_it_keeps_it_is_frozen_too() -> None:
    """The agent froze its modules and caches: a new index joins them, and what was frozen
    is not handed back to the collector."""
    before = [[1]]
    freeze_kept()
    with gc_paused(long_lived=True):
        kept = [[2]]
    assert _generation_of(before) is None
    assert _generation_of(kept) is None
