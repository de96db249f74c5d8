"""Smoke tests of ``make bench``'s cold-commit and one-change benchmarks at tiny N.

They check that each benchmark runs end to end against the real kernel and that
its numbers are sane and consistent, not what they are: this machine is shared
and noisy, and the targets are judged from full runs (docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kernel


def _run(tmp_path: Path, module: str, *args: str) -> Any:
    out = tmp_path / f"{module}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"wholeip_bench.{module}", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_cold_commit_against_the_nft_f_floor(kernel_ok: None, tmp_path: Path) -> None:
    rows = _run(tmp_path, "commit", "--sizes", "100,1000")
    assert [r["services"] for r in rows] == [100, 1000]
    for r in rows:
        # Three elements a whole-IP Service (ingress, ICMP fix, egress), a fourth when its pod is
        # on this node (the row 15 ICMP key), plus the cluster networks.
        assert 3 * r["services"] <= r["elements"] <= 4 * r["services"] + 16, r
        assert 0 < r["commit_s"] < r["ours_process_s"], r
        assert r["floor_nft_f_s"] > 0, r
        assert r["commit_over_floor"] == pytest.approx(r["commit_s"] / r["floor_nft_f_s"])
        assert 10 < r["rss_mib"] < 1024, r
        # The model's baseline did the same pairing in its own loop, in less time than the model.
        assert 0 < r["python_floor_s"] < r["model_s"], r
        assert r["model_over_python_floor"] == pytest.approx(r["model_s"] / r["python_floor_s"])


def test_one_change_inside_the_running_agent(kernel_ok: None, tmp_path: Path) -> None:
    (r,) = _run(tmp_path, "change", "--sizes", "300", "--changes", "20", "--node-cycles", "2")
    assert r["services"] == 300
    assert r["changes"] == 20
    # Each change moved a pod within the node's pod network: elements were added, not only deleted.
    assert r["elements_added_per_change"] >= 1
    assert 0 < r["change_to_commit_p50_ms"] <= r["change_to_commit_p99_ms"] < 5000, r
    assert 0 < r["commit_p50_ms"] <= r["change_to_commit_p99_ms"], r
    assert 0 < r["floor_nft_add_element_p50_ms"] <= r["floor_nft_add_element_p99_ms"], r
    assert r["observe_as_agent_s"] > 0, r
    assert r["observe_libnftables_listing_s"] > 0, r
    assert r["agent_rss_mib"] <= r["agent_peak_rss_mib"], r
    # A Node joined, moved and left twice: each change committed the cluster networks (an
    # interval set is flushed and refilled: a handful of elements), never the mappings.
    assert r["node_changes"] == 8, r
    assert 0 < r["startup_list_s"] < r["agent_ready_s"], r
    assert 0 < r["startup_index_s"] + r["startup_commit_s"] < r["agent_ready_s"], r
    assert 0 < r["node_change_cpu_p50_ms"] <= r["node_change_cpu_max_ms"], r
    assert 1 <= r["node_change_elements_max"] <= 16, r
    assert r["service_change_cpu_p50_ms"] > 0, r
    assert r["rebuild_cpu_ms"] > 0, r


def test_cluster_file_yaml_against_json(tmp_path: Path) -> None:
    """The YAML-against-JSON benchmark runs at a small N and reports sane numbers."""
    rows = _run(tmp_path, "clusterfile", "--services", "50", "--repeat", "1")
    assert [r["services"] for r in rows] == [50]
    r = rows[0]
    assert r["objects"] > 50, r
    assert r["yaml_bytes"] > 0, r
    assert r["json_bytes"] > 0, r
    for key in ("parse_json_s", "parse_yaml_s", "parse_pyyaml_s", "render_json_s", "render_yaml_s", "render_pyyaml_s"):
        assert r[key] > 0, (key, r)
    assert r["render_ratio"] == pytest.approx(r["render_yaml_s"] / r["render_json_s"])


def test_egress_ip_services_against_whole_ip(kernel_ok: None, tmp_path: Path) -> None:
    """The egress IP benchmark at a small N: every member is SNATed here or steered from
    here as the layout says, and the numbers are there with their baseline."""
    r = _run(tmp_path, "egressip", "--services", "40", "--pods", "5", "--nodes", "4", "--changes", "10")
    e, b = r["egress"], r["baseline_whole_ip"]
    # n1 holds every fourth Service's IP (its 5 members SNATed); of the other 30 Services'
    # 150 members, spread over the 4 nodes round robin, 30 run on n1 and are steered.
    assert e["snat"] == 10 * 5, e
    assert e["steer"] == 30, e
    assert b["snat"] == b["steer"] == 0, b
    for side in (e, b):
        assert side["cold_commit_s"] > 0, side
        assert 0 < side["one_change_commit"]["p50_ms"] <= side["one_change_commit"]["p99_ms"], side
    assert r["ratio"]["cold_commit"] == pytest.approx(e["cold_commit_s"] / b["cold_commit_s"], abs=0.01)


def test_delegated_services_cold_commit_and_one_change(kernel_ok: None, tmp_path: Path) -> None:
    """Row 16's benchmarks at a small N: delegated Services of three endpoints each."""
    rows = _run(tmp_path, "commit", "--delegated", "--sizes", "200")
    (r,) = rows
    assert r["kind"] == "delegated"
    # Per Service: the verdict-map entry and 3 slots of address and port, and a hairpin
    # pair per endpoint on this node (n1 of two nodes: one or two of the three).
    assert 7 * 200 + 200 <= r["elements"] <= 7 * 200 + 2 * 200 + 16, r
    assert r["floor_nft_f_s"] > 0, r
    (c,) = _run(tmp_path, "change", "--delegated", "--sizes", "200", "--changes", "10")
    assert c["kind"] == "delegated"
    assert c["elements_added_per_change"] >= 1, c
    assert 0 < c["change_to_commit_p50_ms"] <= c["change_to_commit_p99_ms"] < 5000, c


def test_delegated_slot_fills(tmp_path: Path) -> None:
    rows = _run(tmp_path, "delegated", "--endpoints", "3,16")
    by = {(r["endpoints"], r["fill"]): r for r in rows}
    # Removing one of 3 endpoints moves its own third; Maglev beats modulo beyond 8 endpoints.
    assert by[(3, "modulo")]["remove_moved_needlessly"] == 0.0
    assert by[(16, "maglev")]["add_moved"] < by[(16, "modulo")]["add_moved"]
    # An endpoint joining a front-end with affinity writes the previous table's slots that
    # differ: address and port of each, and the generation's three verdict-map entries.
    gen = by[(16, "maglev, affinity generation")]
    assert gen["generation_elements"] == 2 * gen["slot_elements"] + 3, gen
