"""The agent as a process: what ``wholeip run`` does before its loop starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = """
import gc, sys
from wholeip.agent import app
from wholeip.settings import Settings
code = app.run(Settings(node_name="n1", port=0, kubeconfig=sys.argv[1]))
print(code, gc.get_freeze_count())
"""


def test_the_agent_freezes_what_it_loaded_before_it_starts(tmp_path: Path) -> None:
    """The modules the agent loaded live as long as the process, so ``app.run`` moves them
    out of every collection before anything else (a full collection of them alone took
    40-48 ms, and a start at 100,000 Services ran 19). Here the start fails at once (no
    kubeconfig) and the process says how many objects are frozen."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "no-kubeconfig")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    code, frozen = result.stdout.split()
    assert code == "1", result.stderr
    assert int(frozen) > 10_000, result.stdout
