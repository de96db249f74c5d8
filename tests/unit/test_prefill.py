"""The start-up index that follows the informers' lists (:class:`~wholeip.agent.prefill.Prefill`).

Pages of Services and slices come interleaved, the index may begin before or after
some of them, and the caches go on changing (objects changed, replaced by equal
copies, deleted, added; the Nodes changed) until the gate opens: what the first
sync takes must be the index built from the caches at that moment, record by
record. Anything the prefill cannot follow gives it up (None: the first sync
builds the index as it would without one).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from tests.unit.test_fill import _same, plain_clusters
from tests.unit.test_properties import Cluster, _slice_keys, clusters, props

from wholeip.agent.prefill import Prefill
from wholeip.core.delegated import without_history
from wholeip.core.index import ClusterIndex, finish_load
from wholeip.core.objects import split_key
from wholeip.kube.informer import object_key

Obj = dict[str, Any]


class _Caches:
    """Two informers' caches as plain dicts (what the cache holds is the object)."""

    def __init__(self, c: Cluster) -> None:
        self.services: dict[str, Obj] = {}
        for obj in c.services:
            self.services.setdefault(object_key(obj), obj)
        self.slices: dict[str, Obj] = _slice_keys(c.slices)

    def of(self, resource: str) -> dict[str, Obj]:
        return self.services if resource == "services" else self.slices

    def lookup(self, resource: str, key: str) -> Obj | None:
        return self.of(resource).get(key)


def _prefill(caches: _Caches, c: Cluster, batch: int = 2000) -> Prefill:
    return Prefill(node_name=c.node_name, table="wholeip", stored=caches.of, lookup=caches.lookup, batch=batch)


def _built(c: Cluster, caches: _Caches, nodes: list[Obj]) -> ClusterIndex:
    index = ClusterIndex(settings=c.settings, node_name=c.node_name, nodes=nodes, table="wholeip")
    index.update(
        services={split_key(k): [o] for k, o in caches.services.items()},
        slices=dict(caches.slices),
    )
    finish_load(index, pods=(), l2_statuses=())
    return index


def _take(prefill: Prefill, c: Cluster, nodes: list[Obj]) -> Any:
    return asyncio.run(prefill.take(nodes=nodes, settings=c.settings, pods=(), l2_statuses=()))


@props(100)
@given(st.one_of(clusters(), plain_clusters()), st.one_of(clusters(), plain_clusters()), st.data())
def test_the_index_taken_is_the_one_built_from_the_caches_then(c: Cluster, other: Cluster, data: st.DataObject) -> None:
    caches = _Caches(c)
    prefill = _prefill(caches, c, batch=data.draw(st.sampled_from((1, 4, 2000))))
    try:
        _follow(prefill, caches, c, other, data)
    finally:
        prefill.drop("the test is over")  # (a no-op once taken)


Page = tuple[str, list[tuple[str, Obj, object]]]


def pages_in_order(caches: _Caches, data: st.DataObject) -> tuple[list[Page], int]:
    """The caches' objects as pages of both lists in a drawn order, and the page before which
    the index begins (the Nodes listed)."""
    pages: list[Page] = []
    for resource in ("services", "endpointslices"):
        items = list(caches.of(resource).items())
        size = data.draw(st.integers(1, 4))
        pages += [(resource, [(k, o, o) for k, o in items[i : i + size]]) for i in range(0, len(items), size)]
    order = data.draw(st.permutations(range(len(pages))))
    return [pages[i] for i in order], data.draw(st.integers(0, len(pages)))


def _follow(prefill: Prefill, caches: _Caches, c: Cluster, other: Cluster, data: st.DataObject) -> None:
    pages, begin_at = pages_in_order(caches, data)
    for n, page in enumerate(pages):
        if n == begin_at:
            prefill.begin(nodes=c.nodes, settings=c.settings)
        prefill.page(*page)
    change_until_the_gate(caches, other, data)
    nodes = data.draw(st.sampled_from((c.nodes, other.nodes)))
    taken = _take(prefill, c, nodes)
    assert taken is not None
    event(f"caught up: {'some' if taken.caught_up else 'none'}")
    built = _built(c, caches, nodes)
    if nodes is c.nodes:
        _same(taken.index, built)
    else:
        # Other Nodes re-read the endpoints they move in or out of the pod networks, which
        # may list a slice's endpoints in another order than a fresh read: the same index
        # otherwise (test_fill compares a changed index with a fresh one the same way).
        assert taken.index.state() == built.state()
        assert without_history(taken.index.elements) == without_history(built.elements)
        assert sorted(map(repr, taken.index.problems)) == sorted(map(repr, built.problems))
    assert taken.listed == sum(len(p[1]) for p in pages)


def change_until_the_gate(caches: _Caches, other: Cluster, data: st.DataObject) -> None:
    """Until the gate opens: changes, equal copies, deletions and new objects in both caches."""
    later = _Caches(other)
    for resource in ("services", "endpointslices"):
        cache = caches.of(resource)
        for key in list(cache):
            what = data.draw(st.sampled_from(("keep", "keep", "copy", "delete", "replace")))
            if what == "copy":
                cache[key] = copy.deepcopy(cache[key])
            elif what == "delete":
                del cache[key]
            elif what == "replace" and later.of(resource):
                new = copy.deepcopy(data.draw(st.sampled_from(list(later.of(resource).values()))))
                if resource == "services":  # (under its own key, as in an informer's cache)
                    namespace, name = split_key(key)
                    meta = new.get("metadata")
                    new["metadata"] = {**(meta if isinstance(meta, dict) else {}), "namespace": namespace, "name": name}
                cache[key] = new
        for key, obj in list(later.of(resource).items())[: data.draw(st.integers(0, 3))]:
            cache.setdefault(key, obj)


def test_a_key_listed_twice_gives_the_prefill_up() -> None:
    """A list that failed or expired halfway and started again: the first sync builds the
    index from the caches (None)."""
    c = Cluster(*_two_services())
    caches = _Caches(c)
    prefill = _prefill(caches, c)
    prefill.begin(nodes=c.nodes, settings=c.settings)
    first = [(k, o, o) for k, o in caches.services.items()]
    prefill.page("services", first[:1])
    prefill.page("services", first)  # the list again, from its first page
    assert prefill.dropped == "services: a list started again"
    assert _take(prefill, c, c.nodes) is None


def test_other_settings_at_the_gate_give_the_prefill_up() -> None:
    """This node's addresses or the Service networks changed while the informers listed:
    the index began with settings that are no longer true."""
    c = Cluster(*_two_services())
    caches = _Caches(c)
    prefill = _prefill(caches, c)
    prefill.begin(nodes=c.nodes, settings=c.settings)
    prefill.page("services", [(k, o, o) for k, o in caches.services.items()])
    changed = dataclasses.replace(c.settings, lb_to_clusterip=not c.settings.lb_to_clusterip)
    assert asyncio.run(prefill.take(nodes=c.nodes, settings=changed, pods=(), l2_statuses=())) is None
    assert prefill.dropped == "the settings changed while the informers listed"


def test_taken_without_a_beginning_it_begins_at_the_gate() -> None:
    """The Nodes came last: the index begins when the first sync takes it, with what the
    sync has, and every page listed before goes in."""
    c = Cluster(*_two_services())
    caches = _Caches(c)
    prefill = _prefill(caches, c)
    for resource in ("endpointslices", "services"):
        prefill.page(resource, [(k, o, o) for k, o in caches.of(resource).items()])
    taken = _take(prefill, c, c.nodes)
    assert taken is not None
    assert taken.caught_up == 0
    assert len(taken.index.state().mappings) == 2
    _same(taken.index, _built(c, caches, c.nodes))


def _two_services() -> tuple[list[Obj], list[Obj], list[Obj], Any, str]:
    from tests.unit.test_fill import _plain_service

    from wholeip.settings import ModelSettings

    objs = _plain_service(0, "203.0.113.1", "10.244.1.5", "n1") + _plain_service(1, "203.0.113.2", "10.244.1.6", "n1")
    nodes = [{"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    return (
        [o for o in objs if o["kind"] == "Service"],
        [o for o in objs if o["kind"] == "EndpointSlice"],
        nodes,
        ModelSettings(),
        "n1",
    )
