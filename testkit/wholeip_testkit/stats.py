"""Order statistics shared by the benchmarks and the soak run."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 <= q <= 1): the value with ``int(q * n)`` values
    below it, so p99 of 200 samples is the second largest. Raises on no values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])
