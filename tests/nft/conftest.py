"""Fixtures for real-kernel tests: network-namespace topologies.

Tests here need root (namespaces, veths, nf_tables); without it they are
skipped, not failed, so ``make unit`` style runs stay green on a laptop. Every
topology has its own random namespace prefix, so tests can run while other
people test on the same machine, and it is torn down even when a test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from wholeip_testkit.topology import Topology


@pytest.fixture(scope="module")
def topo(kernel_ok: None) -> Iterator[Topology]:
    """One two-node topology shared by a test module (about a second to build)."""
    with Topology.create() as t:
        yield t


@pytest.fixture
def make_topo(kernel_ok: None) -> Iterator[Callable[..., Topology]]:
    """Factory for tests that need their own topology (e.g. a small MTU)."""
    made: list[Topology] = []

    def make(**kwargs: object) -> Topology:
        t = Topology.create(**kwargs)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture(scope="module")
def make_topo_module(kernel_ok: None) -> Iterator[Topology]:
    """A topology with a 1280-byte MTU on the ext<->rtr link (docs/datapath.md row 13), shared by a module."""
    with Topology.create(ext_mtu=1280) as t:
        yield t
