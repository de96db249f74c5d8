"""The agent's C heap (glibc malloc): few arenas, large blocks mapped, free pages handed back.

Python keeps objects of up to 512 bytes in arenas of its own; everything larger (watch
events' bodies, dict tables, the kernel's replies, libnftables' and pyroute2's buffers)
comes from glibc's ``malloc``, which gives each thread that allocates an arena of its own
(up to eight per core), serves a freed large block's size from the heap from then on
(its mmap threshold rises with every mapped block freed, up to 32 MiB), and returns freed
memory to the system only from the top of the main heap. Under a steady churn the
agent's live data stays flat while its RSS creeps up: in a ten-minute soak of 2,000
Services, live Python blocks and malloc's bytes in use were flat, malloc's free-but-held
memory grew from 25 to 49 MiB (docs/performance.md, "Churn soak").

So, at start (:func:`tune`, before threads exist): two arenas, and the mmap threshold
fixed at glibc's initial 128 KiB (a large block is mapped and unmapped, never a hole in
the heap); and :func:`trim` (``malloc_trim``: free pages inside every arena go back to
the system) after a rebuild or a full sync, and at most every :data:`TRIM_EVERY_S` after
other syncs. Nothing happens where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc's malloc.h): the most arenas malloc creates; the size
from which a block is mapped on its own (setting it turns its rise off)."""

ARENAS = 2
"""Arenas the agent runs with: the event loop's and one for the worker threads (the
sync's commit, the conntrack cleaner, the policy routing) to share."""

MMAP_THRESHOLD = 128 * 1024
"""glibc's initial threshold, kept."""

TRIM_EVERY_S = 60.0
"""At most one :func:`trim` a minute after ordinary syncs (a trim of 50 MiB of free
memory costs well under a millisecond; the pages it gives back are faulted in again
when reused)."""


class _Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
            if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
                libc.mallinfo2.restype = _Mallinfo2
            return libc
    return None


def figures() -> dict[str, float] | None:
    """What malloc holds (``mallinfo2``, over every arena), in MiB: in use, free but held,
    its heaps (arenas), and the blocks mapped on their own (in use).
    None where glibc cannot say. For diagnosis (the churn soak's ``--agent-memstats``)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    mib = 1024 * 1024
    return {
        "malloc_in_use_mib": round(info.uordblks / mib, 2),
        "malloc_free_held_mib": round(info.fordblks / mib, 2),
        "malloc_arena_mib": round(info.arena / mib, 2),
        "malloc_mmap_mib": round(info.hblkhd / mib, 2),
    }


def tune(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap malloc's arenas and fix its mmap threshold (``mallopt``); True when glibc took
    both. Call it before the process starts threads: arenas made before stay."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas)) & bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))


def trim() -> None:
    """Hand the free pages of every malloc arena back to the system (``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Trimmer:
    """:func:`trim`, at most every ``every`` seconds (:meth:`maybe`), or now (:meth:`now`)."""

    def __init__(self, every: float = TRIM_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last = clock()

    def now(self) -> None:
        """Trim, whenever it last did."""
        trim()
        self._last = self._clock()

    def maybe(self) -> bool:
        """Trim if the last was ``every`` seconds ago or more; True when it did."""
        if self._clock() - self._last < self.every:
            return False
        self.now()
        return True
