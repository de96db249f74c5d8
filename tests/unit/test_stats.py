"""The one percentile every benchmark and the soak run report with."""

from __future__ import annotations

import pytest

from wholeip_testkit.stats import percentile


def test_nearest_rank() -> None:
    values = [float(v) for v in range(200, 0, -1)]  # 200 .. 1, unsorted on purpose
    assert percentile(values, 0.5) == 101.0
    assert percentile(values, 0.99) == 199.0  # two values at or above it
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 200.0
    assert percentile([7.0], 0.99) == 7.0


def test_no_values_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
