"""``make demo``, one of the README's two commands, run as a user runs it: its own process,
the sandbox, real agents and traffic; every check must pass."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel


def test_the_demo_passes_every_check(kernel_ok: None) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "wholeip_testkit.demo"], capture_output=True, text=True, timeout=240, check=False
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    summary = re.search(r"(\d+) passed, (\d+) failed in [\d.]+s; everything torn down\.", demo.stdout)
    assert summary is not None, demo.stdout[-2000:]
    assert (int(summary.group(1)), int(summary.group(2))) == (16, 0)
    # The Service as kubectl prints it from a real server: its columns, not NAME and AGE only.
    assert re.search(r"vm\s+LoadBalancer\s+10\.96\.\S+\s+203\.0\.113\.10,2001:db8:100::10\s+80:\d+/TCP", demo.stdout)
