"""The bulk load (:meth:`ClusterIndex.fill`) against the index built object by object.

``fill`` writes plain whole-IP mappings straight into a new index while their IP
and pod are nobody else's, and sends everything else through ``update``. Both ways must leave the very same index:
not only the same state and elements, but the same records inside (a Node change
or a later update reads those), and an index loaded at once must go on as one
built by updates. The clusters are ``test_properties``' (colliding names and
addresses, shared pods, garbage spliced in), plus clusters where nearly every
Service is plain, so that both ways of ``fill`` are taken.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from tests.unit.test_properties import Cluster, _by_key, _slice_keys, clusters, props

from wholeip.core.compact import AddressBook
from wholeip.core.delegated import GENERATION_SETS, without_history
from wholeip.core.index import ClusterIndex, Filler, load, load_unique
from wholeip.core.objects import EndpointsInfo, parse_endpoints
from wholeip.names import EGRESS_IP_ANNOTATION, WHOLE_IP_ANNOTATION
from wholeip.settings import ModelSettings

_SKIP = {"settings", "podnat", "egress", "delegated", "elements", "_port_shapes", "_nodes"}
"""Not records: the settings, the sub-indexes (compared on their own), the live sets
(compared as such), a cache of shared port lists, the Nodes as given."""


def _norm(value: Any) -> Any:
    """A record in a form that ignores the order things were filed in."""
    if isinstance(value, AddressBook):
        return _norm(value._buckets)
    if isinstance(value, dict):
        return frozenset((k, _norm(v)) for k, v in value.items())
    if isinstance(value, list | set | frozenset):
        return frozenset(_norm(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_norm(v) for v in value)
    return value


def _records(obj: object, skip: set[str] = _SKIP) -> dict[str, Any]:
    return {k: _norm(v) for k, v in vars(obj).items() if k not in skip and not callable(v)}


def _part(index: ClusterIndex, part: str) -> dict[str, Any]:
    """A sub-index's records; the delegated one's without the affinity generations, history
    that an index that followed changes has and a fresh one does not (as its elements)."""
    records = _records(getattr(index, part), {"settings", "elements", "_elements"})  # (the live sets)
    if part == "delegated":
        del records["_generations"]
        records["_counts"] = _norm({k: n for k, n in index.delegated._counts.items() if k[0] not in GENERATION_SETS})
    return records


def _same(a: ClusterIndex, b: ClusterIndex) -> None:
    assert _records(a) == _records(b)
    for part in ("delegated", "egress", "podnat"):
        assert _part(a, part) == _part(b, part), part
    assert without_history(a.elements) == without_history(b.elements)
    assert a.state() == b.state()
    assert sorted(map(repr, a.problems)) == sorted(map(repr, b.problems))


def _reads_as_parsed(index: ClusterIndex, slices: dict[str, dict[str, Any]]) -> None:
    """Each slice the index keeps reads, for the delegated Services, as the object does
    (:func:`parse_endpoints`): made again from its record, or kept as read where the record
    says less (an endpoint not ready, or terminating; a port out of range)."""

    def norm(e: EndpointsInfo | None) -> Any:
        return None if e is None else (e.service, e.family, sorted(e.endpoints), e.ports)

    assert {skey: norm(index._endpoints_info(skey)) for skey in index._slices} == {
        skey: norm(read) for skey, obj in slices.items() if (read := parse_endpoints(obj)) is not None
    }
    event(f"slices kept as read: {'some' if index._every else 'none'}")


def _by_updates(c: Cluster, services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> ClusterIndex:
    index = ClusterIndex(settings=c.settings, node_name=c.node_name, nodes=c.nodes)
    index.update(services=_by_key(services), slices=_slice_keys(slices))
    return index


def _loaded(c: Cluster, services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> ClusterIndex:
    index = ClusterIndex(settings=c.settings, node_name=c.node_name, nodes=c.nodes)
    index.fill(_by_key(services).items(), _slice_keys(slices).items(), batch=2)
    return index


def _plain_service(
    i: int, ip: str, pod: str, node: str, *, egress: bool = False, v6: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """A plain whole-IP Service and its slice; ``v6``: an IPv6 external IP and pod as well
    (dual-stack: a second slice), or instead (``ip`` empty: IPv6 only)."""
    annotations = {WHOLE_IP_ANNOTATION: "true"}
    if egress:
        annotations[EGRESS_IP_ANNOTATION] = "true"
    name = f"p{i}"
    ingress = [{"ip": ip}] if ip else []
    if v6 is not None:
        ingress.append({"ip": v6[0]})
    out: list[dict[str, Any]] = [
        {
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": str(uuid.UUID(int=i + 1)),
                "creationTimestamp": f"2026-01-01T00:00:{i % 60:02d}Z",
                "annotations": annotations,
            },
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": ingress}},
        }
    ]
    for family, address, suffix in (("IPv4", pod if ip else "", "x"), ("IPv6", v6[1] if v6 else "", "y")):
        if address:
            out.append(
                {
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{name}-{suffix}",
                        "namespace": "ns",
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": family,
                    "endpoints": [{"addresses": [address], "nodeName": node, "conditions": {"ready": True}}],
                }
            )
    return out


@st.composite
def plain_clusters(draw: st.DrawFn) -> Cluster:
    """Mostly plain Services from small pools of external IPs and pods (so they collide),
    some of them egress Services, over one of the property clusters."""
    base = draw(clusters(max_services=3))
    services, slices = list(base.services), list(base.slices)
    for i in range(draw(st.integers(1, 12))):
        ip = f"203.0.113.{draw(st.integers(1, 8))}"
        pod = f"10.244.{draw(st.integers(0, 2))}.{draw(st.integers(1, 6))}"
        v6 = (f"2001:db8:113::{draw(st.integers(1, 8))}", f"fd00:10:244::{draw(st.integers(1, 6)):x}")
        node, egress = draw(st.sampled_from(("n1", "n2", "elsewhere"))), draw(st.booleans())
        # IPv4 only (most), dual-stack, IPv6 only; now and then slices of other families
        # than the Service's external IPs (a dual-stack Service with one family's IP).
        stack = draw(st.sampled_from(("v4", "v4", "dual", "v6")))
        slice_stack = draw(st.sampled_from((stack, stack, stack, "v4", "dual", "v6")))

        made = {
            x: _plain_service(i, "" if x == "v6" else ip, pod, node, egress=egress, v6=None if x == "v4" else v6)
            for x in (stack, slice_stack)
        }
        services.append(made[stack][0])
        slices += (sl for sl in made[slice_stack][1:] if draw(st.integers(0, 5)))  # (now and then one is missing)
        if draw(st.integers(0, 5)) == 0:  # now and then a second slice of one family, another pod
            again = made[slice_stack][-1]
            n = draw(st.integers(7, 9))
            other = f"10.244.1.{n}" if again["addressType"] == "IPv4" else f"fd00:10:244::{n:x}"
            endpoint = {**again["endpoints"][0], "addresses": [other]}
            slices.append({**again, "metadata": {**again["metadata"], "name": f"p{i}-z"}, "endpoints": [endpoint]})
    return Cluster(services, slices, base.nodes, base.settings, base.node_name)


@props(150)
@given(st.one_of(clusters(), plain_clusters()))
def test_a_filled_index_is_the_index_updates_build(c: Cluster) -> None:
    filled = _loaded(c, c.services, c.slices)
    written = len(filled._views)
    _same(filled, _by_updates(c, c.services, c.slices))
    _reads_as_parsed(filled, _slice_keys(c.slices))
    event(f"mappings: {'some' if written else 'none'}")


@props(150)
@given(st.one_of(clusters(), plain_clusters()), st.data())
def test_a_stream_in_any_order_fills_the_index_updates_build(c: Cluster, data: st.DataObject) -> None:
    """Services and slices given to a :class:`Filler` in chunks, interleaved in any order
    (as the agent's two lists deliver their pages), leave the index of updates."""
    stream: list[tuple[str, list[Any]]] = []
    services, slices = list(_by_key(c.services).items()), list(_slice_keys(c.slices).items())
    while services or slices:
        take_services = bool(services) and (not slices or data.draw(st.booleans()))
        source = services if take_services else slices
        n = data.draw(st.integers(1, 4))
        stream.append(("services" if take_services else "slices", source[:n]))
        del source[:n]
    index = ClusterIndex(settings=c.settings, node_name=c.node_name, nodes=c.nodes)
    filler = Filler(index, batch=data.draw(st.sampled_from((1, 3, 2000))))
    for what, chunk in stream:
        if what == "services":
            filler.services(chunk)
        else:
            filler.slices(chunk)
    filler.finish()
    event(f"mappings: {'some' if index._views else 'none'}")
    _same(index, _by_updates(c, c.services, c.slices))


def test_every_order_of_a_service_with_a_plain_slice_and_another() -> None:
    """A plain Service, a slice that is not plain (two endpoints) and a plain one, in every
    order and flushed at once: the plain slice must never be written as the Service's only
    one (the other is filed already, or still waits to be)."""
    svc, plain = _plain_service(0, "203.0.113.1", "10.244.1.5", "n1")
    other = {**plain, "metadata": {**plain["metadata"], "name": "p0-y"}}
    other["endpoints"] = [
        {"addresses": [a], "nodeName": "n1", "conditions": {"ready": True}} for a in ("10.244.1.6", "10.244.1.7")
    ]
    nodes = [{"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    c = Cluster([svc], [plain, other], nodes, ModelSettings(), "n1")
    for order in itertools.permutations((svc, plain, other)):
        for done in (False, True) if order[-1] is svc else (False,):  # (done: no slice comes after)
            index = ClusterIndex(settings=c.settings, node_name="n1", nodes=nodes)
            filler = Filler(index, batch=1)
            for obj in order:
                if obj is svc:
                    if done:
                        filler.slices_done()
                    filler.services(_by_key([obj]).items())
                else:
                    filler.slices(_slice_keys([obj]).items())
            filler.finish()
            _same(index, _by_updates(c, c.services, c.slices))
            assert len(index.state().mappings) == 1


def test_a_dual_stack_service_with_two_slices_of_one_family() -> None:
    """A dual-stack Service whose two slices are both IPv6 (its IPv4 one missing), in every
    order: two slices of one family are no pair for its two IPs (the IPv4 IP must not be
    written to an IPv6 pod), whatever comes first."""
    svc, _, six = _plain_service(0, "203.0.113.1", "10.244.1.5", "n1", v6=("2001:db8::1", "fd00:10:244:1::5"))
    other = {**six, "metadata": {**six["metadata"], "name": "p0-z"}}
    other["endpoints"] = [{"addresses": ["fd00:10:244:1::6"], "nodeName": "n1", "conditions": {"ready": True}}]
    nodes = [{"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    c = Cluster([svc], [six, other], nodes, ModelSettings(), "n1")
    for order in itertools.permutations((svc, six, other)):
        index = ClusterIndex(settings=c.settings, node_name="n1", nodes=nodes)
        filler = Filler(index, batch=1)
        for obj in order:
            if obj is svc:
                filler.services(_by_key([obj]).items())
            else:
                filler.slices(_slice_keys([obj]).items())
        filler.finish()
        _same(index, _by_updates(c, c.services, c.slices))


@props(100)
@given(st.one_of(clusters(), plain_clusters()), st.one_of(clusters(), plain_clusters()), st.data())
def test_a_filled_index_goes_on_like_one_built_by_updates(a: Cluster, other: Cluster, data: st.DataObject) -> None:
    """From A loaded at once and from A built by updates, the same changes to B (Services,
    slices and the Nodes) leave the same index, equal to B loaded at once."""

    def keep(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        mask = data.draw(st.lists(st.booleans(), min_size=len(objs), max_size=len(objs)))
        return [o for o, k in zip(objs, mask, strict=True) if k]

    b_services = keep(a.services) + other.services[:3]
    b_slices = keep(a.slices) + other.slices[:4]
    b_nodes = data.draw(st.sampled_from((a.nodes, other.nodes)))
    was, now = _by_key(a.services), _by_key(b_services)
    was_slices, now_slices = _slice_keys(a.slices), _slice_keys(b_slices)
    change = {
        "services": {k: now.get(k, []) for k in was.keys() | now.keys()},
        "slices": {k: now_slices.get(k) for k in was_slices.keys() | now_slices.keys()},
        "nodes": b_nodes,
    }
    filled, updated = _loaded(a, a.services, a.slices), _by_updates(a, a.services, a.slices)
    assert filled.update(**change) == updated.update(**change)  # type: ignore[arg-type]
    _same(filled, updated)
    _reads_as_parsed(filled, now_slices)
    fresh = ClusterIndex(settings=a.settings, node_name=a.node_name, nodes=b_nodes)
    fresh.fill(now.items(), now_slices.items())
    assert fresh.state() == filled.state()
    assert without_history(fresh.elements) == without_history(filled.elements)


def test_plain_pairs_take_the_short_way_and_the_rest_the_long_one() -> None:
    """What ``fill`` writes itself and what it sends through ``update``: counted, so that
    a change that sent everything the long way (or nothing) fails here."""
    objs: list[dict[str, Any]] = []
    for i in range(6):
        objs += _plain_service(i, f"203.0.113.{10 + i}", f"10.244.1.{10 + i}", "n1")
    objs += _plain_service(6, "203.0.113.10", "10.244.1.99", "n1")  # p0's external IP, younger
    objs += _plain_service(7, "203.0.113.30", "10.244.1.11", "n1")  # p1's pod
    objs += _plain_service(8, "203.0.113.31", "10.244.1.40", "n1", egress=True)
    objs += _plain_service(9, "203.0.113.32", "10.244.1.41", "n1", v6=("2001:db8::32", "fd00:10:244:1::41"))
    objs += _plain_service(10, "", "", "n1", v6=("2001:db8::33", "fd00:10:244:1::42"))
    nodes = [
        {
            "kind": "Node",
            "metadata": {"name": "n1"},
            "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]},
        }
    ]
    calls: Counter[str] = Counter()

    class Counting(ClusterIndex):
        def update(self, **kwargs: Any) -> Any:  # type: ignore[override]
            for what in ("services", "reads", "read_slices", "slices"):
                calls[what] += len(kwargs.get(what, {}))
            return super().update(**kwargs)

    index = Counting(settings=ModelSettings(), node_name="n1", nodes=nodes)
    services = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    index.fill(_by_key(services).items(), _slice_keys(slices).items())
    # p0..p5, p9 (dual-stack) and p10 (IPv6) written; p6 (p0's IP) and p7 (p1's pod) read
    # but left to update(), as p8 (egress).
    assert +calls == {"services": 1, "reads": 2, "read_slices": 3}
    # The same when the Services come first and wait for their slices.
    calls.clear()
    first = Counting(settings=ModelSettings(), node_name="n1", nodes=nodes)
    filler = Filler(first)
    filler.services(_by_key(services).items())
    filler.slices(_slice_keys(slices).items())
    filler.finish()
    assert +calls == {"services": 1, "reads": 2, "read_slices": 3}
    _same(first, index)
    _same(index, _by_updates(Cluster(services, slices, nodes, ModelSettings(), "n1"), services, slices))
    streamed = load_unique(
        services=services, endpoint_slices=slices, nodes=nodes, node_name="n1", settings=ModelSettings()
    )
    flat = load(services=services, endpoint_slices=slices, nodes=nodes, node_name="n1", settings=ModelSettings())
    _same(streamed, flat)
    assert {str(m.external_ip) for m in flat.state().mappings} == {
        *(f"203.0.113.{i}" for i in (10, 11, 12, 13, 14, 15, 30, 31, 32)),
        "2001:db8::32",
        "2001:db8::33",
    }


def test_an_external_ip_at_a_pods_address_is_refused_by_a_fill_in_any_order_as_by_updates() -> None:
    """Where no Node has pod CIDRs (every endpoint counts), an external IP may be a pod's
    address: another Service's pod, or its own. Its mapping and the pod's would be keyed by
    the same address in the filter's sets, so the external IP is refused, whether a fill
    meets the Service or the slice first."""
    objs = [
        *_plain_service(0, "203.0.113.1", "10.0.0.5", "n1"),
        *_plain_service(1, "203.0.113.2", "203.0.113.1", "n1"),  # a pod at p0's external IP
        *_plain_service(2, "203.0.113.3", "203.0.113.3", "n1"),  # a pod at its own external IP
    ]
    services = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    c = Cluster(services, slices, [], ModelSettings(), "n1")
    updates = _by_updates(c, services, slices)
    assert {(str(m.external_ip), str(m.pod_ip)) for m in updates.state().mappings} == {("203.0.113.2", "203.0.113.1")}
    assert sorted((p.ref.name, p.reason) for p in updates.problems) == [
        ("p0", "ExternalIPRefused"),
        ("p2", "ExternalIPRefused"),
    ]
    assert all("is a pod's address" in p.message for p in updates.problems)
    for order in itertools.permutations(range(3)):
        for services_first in (True, False):
            index = ClusterIndex(settings=c.settings, node_name="n1", nodes=[])
            filler = Filler(index, batch=1)
            keyed = list(_slice_keys(slices).items())  # (in the order of the Services)
            chunks: list[tuple[str, list[Any]]] = [("slices", [keyed[i]]) for i in order]
            chunks.insert(0 if services_first else len(chunks), ("services", [services[i] for i in order]))
            for what, chunk in chunks:
                if what == "services":
                    filler.services(_by_key(chunk).items())
                else:
                    filler.slices(chunk)
            filler.finish()
            _same(index, updates)
