"""A new table filled while the informers list (:mod:`wholeip.agent.earlyfill`), against the
in-memory kernel (the same steps against the real one: ``tests/nft/test_earlyfill_kernel.py``).

Whatever the steps sent (claims that an older Service listed later takes over, slices
that move, objects changed or gone before the gate), the first sync must leave exactly the
table of the index it takes, without reading the kernel back; before it, the table has no
rule; a table that exists already is not touched; a step that fails leaves a first sync
that reads the kernel and repairs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from tests.unit.test_fill import _plain_service, plain_clusters
from tests.unit.test_prefill import _Caches, change_until_the_gate, pages_in_order
from tests.unit.test_properties import Cluster, clusters, props

from wholeip.agent.earlyfill import EarlyFill
from wholeip.agent.metrics import Metrics
from wholeip.agent.prefill import Prefill
from wholeip.agent.reconcile import Rebuild, Snapshot, Syncer
from wholeip.core.index import ClusterIndex, finish_load
from wholeip.core.objects import split_key
from wholeip.engine import Engine
from wholeip.nft.backend import Rejected
from wholeip.nft.diff import diff
from wholeip.nft.doc import TableDoc
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings

Obj = dict[str, Any]


def _now(fn: Callable[[], tuple[float, float]]) -> Future[tuple[float, float]]:
    """Sends a step at once (the agent sends it from a thread of its own)."""
    future: Future[tuple[float, float]] = Future()
    try:
        future.set_result(fn())
    except Exception as exc:
        future.set_exception(exc)
    return future


class _Reads(FakeBackend):
    """Counts the times the table is read back."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_table(self, family: str, name: str, **kw: Any) -> TableDoc | None:
        self.reads += 1
        return super().read_table(family, name, **kw)


def _kernel(backend: FakeBackend) -> TableDoc | None:
    return FakeBackend.read_table(backend, "inet", "wholeip")


async def _inline(fn: Callable[..., Any], /, *args: Any) -> Any:
    return fn(*args)


@props(100)
@given(st.one_of(clusters(), plain_clusters()), st.one_of(clusters(), plain_clusters()), st.data())
def test_the_first_sync_leaves_the_table_of_the_index_whatever_the_steps_sent(
    c: Cluster, other: Cluster, data: st.DataObject
) -> None:
    asyncio.run(_early(c, other, data))


async def _early(c: Cluster, other: Cluster, data: st.DataObject) -> None:
    caches = _Caches(c)
    backend = _Reads()
    engine = Engine(backend=backend, table="wholeip")
    early = EarlyFill(engine, every=data.draw(st.sampled_from((1, 2, 5, 1000))), submit=_now)
    prefill = Prefill(
        node_name=c.node_name, table="wholeip", stored=caches.of, lookup=caches.lookup, on_filled=early.grew
    )
    pages, begin_at = pages_in_order(caches, data)
    for n, page in enumerate(pages):
        if n == begin_at:
            prefill.begin(nodes=c.nodes, settings=c.settings)
        prefill.page(*page)
        table = _kernel(backend)
        assert table is None or not table.skeleton.rules  # no packet sees it yet
    change_until_the_gate(caches, other, data)
    await early.settle()
    assert early.ended is None
    event(f"steps: {min(early.steps, 3)}")
    taken = await prefill.take(nodes=c.nodes, settings=c.settings, pods=(), l2_statuses=())
    assert taken is not None
    doc = taken.index.doc()
    reads = backend.reads
    if engine.staged:  # (as the Syncer's first commit)
        engine.sync(doc, full=False, touched=engine.unsent(doc))
        assert backend.reads == reads
    else:  # (the index began at the gate: no step)
        assert early.steps == 0
        engine.sync(doc, full=True)
    table = _kernel(backend)
    assert table is not None
    assert diff(doc, table).empty
    assert table.skeleton.rule_tags() == doc.skeleton.rule_tags()
    # And the memory the next syncs diff against is the kernel's table.
    assert engine.last is not None
    assert diff(engine.last, table).empty


def _cluster(n: int) -> tuple[list[Obj], list[Obj], list[Obj]]:
    services: list[Obj] = []
    slices: list[Obj] = []
    for i in range(n):
        made = _plain_service(i, f"203.0.113.{i + 1}", f"10.244.1.{i + 1}", "n1")
        services.append(made[0])
        slices += made[1:]
    node = {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
    }
    return services, slices, [node]


def _syncer(
    backend: FakeBackend, services: list[Obj], slices: list[Obj], nodes: list[Obj], every: int
) -> tuple[Syncer, Prefill, EarlyFill]:
    caches = _Caches(Cluster(services, slices, nodes, ModelSettings(), "n1"))
    engine = Engine(backend=backend, table="wholeip")
    early = EarlyFill(engine, every=every, submit=_now)
    prefill = Prefill(node_name="n1", table="wholeip", stored=caches.of, lookup=caches.lookup, on_filled=early.grew)
    syncer = Syncer(
        engine=engine,
        snapshot=lambda: Snapshot(
            services=list(caches.services.values()), endpoint_slices=list(caches.slices.values()), nodes=nodes
        ),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Rebuild(),
        metrics=Metrics(),
        offload=_inline,
        prefill=prefill,
        early=early,
    )
    return syncer, prefill, early


async def _list(prefill: Prefill, services: list[Obj], slices: list[Obj], nodes: list[Obj]) -> None:
    prefill.begin(nodes=nodes, settings=ModelSettings())
    for resource, objs in (("endpointslices", slices), ("services", services)):
        for i in range(0, len(objs), 4):
            prefill.page(resource, [(_key(o), o, o) for o in objs[i : i + 4]])


def _key(obj: Obj) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _built(services: list[Obj], slices: list[Obj], nodes: list[Obj]) -> TableDoc:
    index = ClusterIndex(settings=ModelSettings(), node_name="n1", nodes=nodes, table="wholeip")
    index.update(services={split_key(_key(o)): [o] for o in services}, slices={_key(o): o for o in slices})
    finish_load(index, pods=(), l2_statuses=())
    return index.doc()


async def test_the_steps_send_most_elements_and_the_first_sync_the_rest_and_every_rule() -> None:
    services, slices, nodes = _cluster(40)
    backend = _Reads()
    syncer, prefill, early = _syncer(backend, services, slices, nodes, every=10)
    await _list(prefill, services, slices, nodes)
    staged = _kernel(backend)
    assert staged is not None
    assert not staged.skeleton.rules
    held = sum(len(e) for e in staged.elements.values())
    want = _built(services, slices, nodes)
    total = sum(len(e) for e in want.elements.values())
    result = await syncer(True)
    assert early.steps >= 4  # the creation, then 10 elements or more at a time
    assert held >= total - 10 - 4 * 5  # (what the last page brought may wait for the sync)
    assert backend.reads == 0  # the first sync trusted what the steps sent
    assert not result.full
    assert result.plan.chains_rebuilt  # the rules came with the first sync
    assert result.plan.added == total - held
    table = _kernel(backend)
    assert table is not None
    assert diff(want, table).empty
    assert not syncer.engine.staged
    # The next sync is an ordinary one: nothing left to do.
    assert (await syncer(False)).plan.empty


async def test_a_table_that_exists_is_left_alone_and_the_first_sync_reads_it() -> None:
    """The agent restarted: its table holds traffic. The first step's ``create`` fails, nothing
    is staged, and the first sync compares with the kernel as always."""
    services, slices, nodes = _cluster(12)
    backend = _Reads()
    old = _built(services[:6], slices[:6], nodes)
    Engine(backend=backend, table="wholeip").sync(old)
    transactions = len(backend.transactions)
    syncer, prefill, early = _syncer(backend, services, slices, nodes, every=2)
    await _list(prefill, services, slices, nodes)
    assert early.ended == "our table exists already: the first sync compares with it"
    assert len(backend.transactions) == transactions  # (the failed create applied nothing)
    table = _kernel(backend)
    assert table is not None
    assert diff(old, table).empty
    await _a_full_first_sync_leaves(syncer, backend, services, slices, nodes)


async def _a_full_first_sync_leaves(
    syncer: Syncer, backend: _Reads, services: list[Obj], slices: list[Obj], nodes: list[Obj]
) -> None:
    """The first sync reads the kernel (a full one) and leaves the cluster's table."""
    reads = backend.reads
    result = await syncer(True)
    assert result.full
    assert backend.reads > reads
    table = _kernel(backend)
    assert table is not None
    assert diff(_built(services, slices, nodes), table).empty


class _Started:
    """20 Services, their slices listed (the index begun), the steps due every 5 elements."""

    def __init__(self) -> None:
        self.services, self.slices, self.nodes = _cluster(20)
        self.backend = _Reads()
        self.syncer, self.prefill, self.early = _syncer(self.backend, self.services, self.slices, self.nodes, every=5)
        self.prefill.begin(nodes=self.nodes, settings=ModelSettings())
        self.prefill.page("endpointslices", [(_key(o), o, o) for o in self.slices])


async def test_a_failed_step_ends_the_steps_and_the_first_sync_reads_and_repairs() -> None:
    started = _Started()
    services, slices, nodes = started.services, started.slices, started.nodes
    backend, syncer, prefill, early = started.backend, started.syncer, started.prefill, started.early
    prefill.page("services", [(_key(o), o, o) for o in services[:10]])
    assert syncer.engine.staged
    assert syncer.engine.held() > 0
    backend.fail_next = Rejected("injected")
    prefill.page("services", [(_key(o), o, o) for o in services[10:]])
    assert not syncer.engine.staged
    assert syncer.engine.last is None
    await _a_full_first_sync_leaves(syncer, backend, services, slices, nodes)
    assert early.ended == "Rejected: injected"


async def test_an_agent_that_stops_sends_no_further_step() -> None:
    started = _Started()
    started.early.cancel()
    transactions = len(started.backend.transactions)
    started.prefill.page("services", [(_key(o), o, o) for o in started.services])
    assert len(started.backend.transactions) == transactions
