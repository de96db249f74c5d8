"""Pausing the cyclic garbage collector around bulk work.

Building the index or a table document makes hundreds of thousands of new,
long-lived, acyclic objects; every collection on the way would scan all of them
again (a third of the time at 100,000 Services). Both the index and the engine
pause it around such work.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_keeps_frozen = False
"""Whether the process froze what it keeps (:func:`freeze_kept`)."""


def freeze_kept() -> None:
    """Freeze every object there is, for the life of the process (the agent's modules, then
    its caches and index): out of every future collection. From then on what
    ``gc_paused(long_lived=True)`` leaves is frozen too."""
    global _keeps_frozen
    _keeps_frozen = True
    gc.freeze()


def unfreeze_kept() -> None:
    """Undo :func:`freeze_kept` (tests that run after an agent in the same process)."""
    global _keeps_frozen
    _keeps_frozen = False
    gc.unfreeze()


@contextlib.contextmanager
def gc_paused(*, long_lived: bool = False) -> Iterator[None]:
    """No cyclic garbage collection inside (restored as it was on the way out).

    ``long_lived``: what is made inside lives on (an index): on the way out every object
    is moved into the oldest generation unscanned (``gc.freeze`` then ``gc.unfreeze``).
    Otherwise the first collection after the pause scans every object made during it,
    which at 100,000 Services is the first 0.4 s of the next thing done; in the oldest
    generation they wait for the next full collection, which is rare. In a process that
    has frozen what it keeps (:func:`freeze_kept`, the agent), they are frozen with it
    instead: unfreezing would hand that back to the collector too. (Whether it has is a
    flag: ``gc.get_freeze_count()`` walks every frozen object, and the agent's start-up
    index pauses the collector once per list page.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if long_lived:
            gc.freeze()
            if not _keeps_frozen:
                gc.unfreeze()
        if enabled:
            gc.enable()
