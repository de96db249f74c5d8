"""wholeip.agent.heap: glibc's arenas capped, free pages handed back, at most every minute."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wholeip.agent import heap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return out.stdout


def test_trim_hands_freed_heap_back_to_the_system() -> None:
    """100 MiB in blocks malloc keeps in its heap (above pymalloc's 512 bytes, below the mmap
    threshold), all freed but the last, which pins the top: the RSS stays until trim()."""
    out = _run(
        """
        from wholeip.agent import heap

        def rss_mib():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

        blocks = [bytes(4000) + bytes([i % 256]) for i in range(25_000)]
        pin = blocks[-1]
        del blocks
        held = rss_mib()
        heap.trim()
        print(held, rss_mib())
        """
    )
    held, after = map(float, out.split())
    assert held - after > 50, (held, after)


def test_a_large_block_is_mapped_whatever_was_freed_before() -> None:
    """With the threshold fixed, a freed 1 MiB block does not raise it: the next 200 KiB
    blocks are mapped (and unmapped when freed) instead of growing the heap."""
    out = _run(
        """
        from wholeip.agent import heap

        print(heap.tune())
        big = bytearray(1 << 20)  # mapped; freed, it raises an untuned threshold past 200 KiB
        del big
        blocks = [bytearray(200 * 1024) for _ in range(20)]
        print(heap.figures()["malloc_mmap_mib"])
        """
    )
    took, mapped = out.split()
    assert took == "True"
    assert float(mapped) >= 20 * 200 / 1024


def test_the_trimmer_trims_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[float] = []
    now = [100.0]
    monkeypatch.setattr(heap, "trim", lambda: trims.append(now[0]))
    t = heap.Trimmer(every=60.0, clock=lambda: now[0])
    assert not t.maybe()
    assert trims == []
    now[0] = 159.9
    assert not t.maybe()
    now[0] = 160.0
    assert t.maybe()
    assert trims == [160.0]
    now[0] = 200.0
    t.now()  # a full sync trims whenever the last one was
    assert trims == [160.0, 200.0]
    now[0] = 259.0
    assert not t.maybe()
    now[0] = 260.0
    assert t.maybe()
    assert trims == [160.0, 200.0, 260.0]
