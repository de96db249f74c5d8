"""wholeip's benchmarks: each module a program (``python -m wholeip_bench.<name>``) that
prints a table and writes its rows as JSON (``--out``)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, results: object, *, note: str = "") -> Path:
    """Write a run's results as indented JSON to ``out`` (its folder made), and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"written to {path}{note}")
    return path
