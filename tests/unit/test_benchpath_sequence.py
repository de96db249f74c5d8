"""The packet-path benchmark's target sequences (``wholeip_bench.datapath.sequence``), without a
kernel: the benchmark itself runs in ``tests/nft/test_benchpath.py``."""

from __future__ import annotations

import random
from collections import Counter

from wholeip_bench.datapath import CLIENT_SOCKETS, sequence


def test_skewed_targets_follow_a_zipf_law() -> None:
    """``--zipf``: the k-th most popular mapping is hit about 1/k as often as the first, the
    hot set is the same whatever the round's seed, and uniform targets never repeat a
    (socket, mapping) pair."""
    pool = list(range(0, 20_000, 2))
    a = Counter(sequence(random.Random("one"), pool, 50_000, zipf=1.0))
    b = Counter(sequence(random.Random("two"), pool, 50_000, zipf=1.0))
    top = [m for m, _ in a.most_common(3)]
    assert top[0] == b.most_common(1)[0][0]  # one hot set per pool
    assert set(a) <= set(pool)
    first, third = a[top[0]], a[top[2]]
    assert 2.0 < first / third < 4.5, (first, third)  # 1/k: about 3
    hottest_tenth = sum(n for _, n in a.most_common(len(pool) // 10))
    assert hottest_tenth > 0.6 * 50_000  # H(1000)/H(10000): 0.76

    uniform = sequence(random.Random("one"), pool, 5_000)
    pairs = [(j % CLIENT_SOCKETS, m) for j, m in enumerate(uniform)]
    assert len(set(pairs)) == len(pairs)
    assert max(Counter(uniform).values()) < 10
