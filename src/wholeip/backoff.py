"""Retry delays: one rule for every loop that retries (the watches, the syncs)."""

from __future__ import annotations


def backoff_delay(failures: int, *, base: float, cap: float, random: float) -> float:
    """Delay before attempt ``failures + 1``: exponential from ``base``, capped at ``cap``,
    with "equal jitter" (half fixed, half drawn: ``random`` is a draw from [0, 1)).

    Half fixed so that a crowd of agents never retries at once yet none retries
    at once after a failure either.
    """
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 32))
    return ceiling / 2 + random * ceiling / 2
