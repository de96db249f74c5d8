"""The churn soak in small (``python -m wholeip_bench.soak --quick``): 200 Services created,
annotated, re-pointed, de-annotated, deleted and recreated at a steady rate through the
API server double, against one real agent in a private network namespace.

Asserts what the full soak (``make soak``) reports on: the kernel's table equals a fresh
compile of the double's final objects, and the agent wrote about one Event per bad
Service, not a storm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_quick_soak_converges_without_an_event_storm(kernel_ok: None, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "wholeip_bench.soak", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.exists(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    final, events = report["final"], report["events"]
    assert final["equal"], (final, run.stdout[-3000:])
    assert final["services"] > 150
    assert sum(final["mappings"].values()) > 150
    assert report["ops"]["errors"] == {}, report["ops"]["error_examples"]
    assert report["ops"]["by_kind"]["re-point"] > 100
    # Each bad Service is one distinct problem: one Event each, no storm, nothing else.
    problems = events["distinct_problems"]
    assert problems == 4
    assert events["problems_with_event"] == problems
    assert events["writes_total"] <= 2 * problems
    assert events["unexpected_total"] == 0, events["unexpected"]
    assert report["agent"]["exit_code"] == 0
    assert report["canary_lag_s"]["n"] > 0
    assert report["canary_lag_s"]["timeouts"] == 0
    assert run.returncode == 0, run.stdout[-3000:]
