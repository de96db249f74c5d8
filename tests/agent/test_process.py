"""``wholeip run`` as a process, with the real libnftables backend, in a private network namespace.

Marked ``kernel``: needs root (``unshare --net``). The namespace is private to
the test, so the host's nftables are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def test_run_serves_syncs_and_leaves_the_table_on_sigterm() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nft") is None:
        pytest.skip("needs root, unshare and nft")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        ["unshare", "--net", sys.executable, str(here / "proc_main.py")],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    logs = [json.loads(line) for line in result["log"] if line.startswith("{")]
    assert result["exit"] == 0, logs
    assert "198.51.100.10" in result["before"]
    assert result["after"] == result["before"]  # the rules outlive the process
    events = [entry["event"] for entry in logs]
    assert "informers synced" in events
    assert "agent stopped; table left in place" in events
    synced = next(entry for entry in logs if entry["event"] == "synced")
    assert synced["sync_id"]
    if "early fill: elements sent while the informers listed" in events:
        # A fresh namespace: the early fill created the table while the informers listed,
        # and the first sync completed it (its rules) without reading it back.
        assert synced["full"] is False
        assert "rebuilt chains" in synced["changes"]
    else:
        # The Nodes were listed last, so the start-up index began at the gate, after the
        # early fill had been settled: the first sync read the kernel and created the table.
        assert synced["full"] is True
        assert "created table" in synced["changes"]
