"""A sample of the property tests' clusters, committed to nf_tables in a fresh network namespace.

``tests/unit/test_properties.py`` holds every compiled table to the fake
backend; this holds a derandomized sample to the kernel itself: the commit is
accepted, the table listed back compares equal (the next diff is empty), and
moving from one table to the next converges too. The namespace is shared by
the examples, so each one also starts from whatever table the previous one
left, as a restarted agent does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import Cluster, check_doc, clusters, props

from wholeip.engine import Engine
from wholeip.nft.backend import Backend
from wholeip.nft.diff import diff
from wholeip.nft.doc import TableDoc
from wholeip.nft.listing import parse_listing

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def kernel(kernel_ok: None) -> Iterator[Backend]:
    from wholeip_testkit.netns import Netns, NetnsBackend

    with Netns() as ns:
        yield NetnsBackend(ns)


def _kernel_holds(backend: Backend, desired: TableDoc) -> None:
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    plan = diff(desired, parse_listing(listing, family="inet", name="wholeip"))
    assert plan.empty, plan.summary()


@props(40)
@given(clusters(), clusters(), st.booleans())
def test_compiled_tables_commit_and_list_back_equal(kernel: Backend, a: Cluster, b: Cluster, grow: bool) -> None:
    if grow:  # B as A plus some more: most elements stay, some are added or taken
        b = Cluster(a.services + b.services, a.slices + b.slices, a.nodes, a.settings, a.node_name)
    state_a = a.state()
    doc_a = a.doc()
    check_doc(state_a, doc_a, a.node_name)
    engine = Engine(backend=kernel)
    engine.sync(doc_a, full=True)  # from whatever the previous example left
    _kernel_holds(kernel, doc_a)
    doc_b = b.doc()
    engine.sync(doc_b)  # from the engine's memory, as the agent's partial syncs
    _kernel_holds(kernel, doc_b)
    assert engine.sync(doc_b, full=True).plan.empty
