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


@contextlib.contextmanager
def gc_paused(*, long_lived: bool = False) -> Iterator[None]:
    """No cyclic garbage collection inside (restored as it was on the way out).

    ``long_lived``: what is made inside lives on (an index): on the way out every object
    is moved into the oldest generation unscanned (``gc.freeze`` then ``gc.unfreeze``).
    Otherwise the first collection after the pause scans every object made during it,
    which at 100,000 Services is the first 0.4 s of the next thing done; in the oldest
    generation they wait for the next full collection, which is rare. In a process that
    has frozen what it keeps (the agent), they are frozen with it instead: unfreezing
    would hand that back to the collector too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if long_lived:
            frozen_before = gc.get_freeze_count()
            gc.freeze()
            if not frozen_before:
                gc.unfreeze()
        if enabled:
            gc.enable()
