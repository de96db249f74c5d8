"""Smoke test of ``make bench-datapath``: ``--quick`` (tiny N, one round) end to end.

It checks that every variant ran and that the numbers are sane (every request
answered from the address it was sent to, throughput measured, no conntrack
entry on the stateless path, the lowered ``nf_conntrack_max`` put back), not
what they are: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wholeip_bench.datapath import CT_MAX

pytestmark = pytest.mark.kernel


def test_quick_run_reports_every_variant(kernel_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "datapath.json"
    ct_max_before = Path(CT_MAX).read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "wholeip_bench.datapath", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Path(CT_MAX).read_text() == ct_max_before
    result = json.loads(out.read_text())

    path = result["packet_path"]["variants"]
    assert set(path) == {"a", "a_n1", "a_ct", "b", "c", "b100", "l", "l100", "d100", "d1000"}
    for name, v in path.items():
        m = v["median"]
        assert v["requests"] >= 100, name  # --quick: 150 per variant, less a partial block
        assert v["lost"] <= v["requests"] * 0.05, (name, v["lost"])
        assert v["wrong_source"] == 0, name
        assert 0 < m["p50_us"] <= m["p99_us"] < 1_000_000, (name, m)
        if shutil.which("iperf3"):
            assert m["udp_pps"] > 1000, (name, m)
            assert m["tcp_gbps"] > 0.01, (name, m)
        assert all(r is None or r > 0 for r in v["over_a"].values()), (name, v["over_a"])
    assert path["a"]["over_a"]["p50_us"] == 1.0
    assert "excess_p50_us_over_c" in result["packet_path"]["linear"]
    assert set(result["packet_path"]["targets"]) == {"b_within_5pct_of_a", "d_linear"}

    flood = result["conntrack_pressure"]["variants"]
    assert set(flood) == {"a", "a_n1", "b", "b100", "l", "l100", "ct_dnat"}
    for name, v in flood.items():
        assert v["median"]["offered_flows_per_s"] > 1000, (name, v)
        assert v["median"]["delivered_flows_per_s"] > 0, (name, v)
    stateless = flood["b"]
    assert stateless["median"]["n1_conntrack_count"] == 0
    assert stateless["conntrack_drops"] == 0
    assert stateless["median"]["loss_percent"] <= 1.0
    tracked = flood["ct_dnat"]
    assert tracked["median"]["n1_conntrack_count"] > 0
    assert tracked["median"]["n1_conntrack_count"] <= result["config"]["ct_max"]


def test_quick_skewed_run_measures_the_stateless_variants(kernel_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "datapath.json"
    proc = subprocess.run(
        [sys.executable, "-m", "wholeip_bench.datapath", "--quick", "--zipf", "1.0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["zipf"] == 1.0
    path = result["packet_path"]["variants"]
    assert set(path) == {"a", "b", "b100", "l", "l100"}
    for name, v in path.items():
        assert v["requests"] >= 100, name
        assert v["wrong_source"] == 0, name
        assert v["lost"] <= v["requests"] * 0.05, (name, v["lost"])
    assert "conntrack_pressure" not in result
