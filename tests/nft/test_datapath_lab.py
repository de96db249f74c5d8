"""The datapath contract (docs/datapath.md rows 1-14, IPv4 and IPv6) on a real kernel.

Loads the lab's chosen ruleset (``hack/datapath-lab/rulesets/<FINAL>/n{1,2}.nft``)
into the two nodes of a fresh topology whose ext link has a 1280-byte MTU, runs
the whole traffic matrix once (module fixture, about ten seconds) and reports
every row and family as its own test, so a failure names the row. The lab's
other variants are research, run by hand with ``hack/datapath-lab/lab.py run``;
their results are in ``hack/datapath-lab/FINDINGS.md``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from wholeip_testkit.topology import Topology

pytestmark = pytest.mark.kernel

LAB_DIR = Path(__file__).resolve().parents[2] / "hack" / "datapath-lab"


def _load_lab() -> ModuleType:
    # hack/datapath-lab is not a package (the dash is deliberate: it is a lab,
    # not importable code), so load the module from its file.
    spec = importlib.util.spec_from_file_location("wholeip_datapath_lab", LAB_DIR / "lab.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lab = _load_lab()
ROWS: list[str] = lab.ROW_ORDER
FAMILIES: tuple[int, ...] = lab.FAMILIES


@pytest.fixture(scope="module")
def lab_topo(kernel_ok: None) -> Iterator[Topology]:
    with Topology.create(ext_mtu=lab.EXT_MTU) as topo:
        yield topo


@pytest.fixture(scope="module")
def matrix(lab_topo: Topology) -> object:
    return lab.run_matrix(lab_topo, lab.FINAL)


def test_committed_rulesets_are_current() -> None:
    """The checked-in nft files are exactly what lab.py renders."""
    for variant in lab.VARIANTS:
        for node in ("n1", "n2"):
            path = lab.ruleset_path(variant, node)
            assert path.read_text() == lab.render(variant, node, lab.default_mappings()), (
                f"{path} is stale: run hack/datapath-lab/lab.py render"
            )


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f"v{f}")
@pytest.mark.parametrize("row", ROWS)
def test_row(matrix: object, row: str, family: int) -> None:
    outcome = matrix.results[row][family]  # type: ignore[attr-defined]
    assert outcome.ok, f"row {row} v{family}: {outcome.detail}"


def test_pod_saw_no_icmp_checksum_errors(matrix: object, lab_topo: Topology) -> None:
    """The embedded-header rewrite keeps ICMP checksums valid (the topology turns
    receive checksum offload off, so the pod's kernel really verifies them)."""
    out = lab_topo.exec("pod_a", ["nstat", "-az", "IcmpInCsumErrors", "Icmp6InCsumErrors"]).stdout
    counters = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:]}
    assert counters == {"IcmpInCsumErrors": 0, "Icmp6InCsumErrors": 0}
