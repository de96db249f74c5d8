"""The product's wheel (what the image installs) holds the product only.

The test kit and the benchmarks are packages of their own (testkit/, bench/);
this builds wholeip's wheel the way the Containerfile does and fails if either,
or the tests, slipped into it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_holds_the_product_only(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("wholeip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wholeip"}, tops
    assert "wholeip/cli/main.py" in names
    assert "wholeip/core/index.py" in names
    assert "wholeip/py.typed" in names
    leaked = [n for n in names if any(word in n for word in ("testkit", "testing", "bench", "soak", "tests/"))]
    assert leaked == []
