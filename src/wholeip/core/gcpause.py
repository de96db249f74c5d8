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
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (restored as it was on the way out)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
