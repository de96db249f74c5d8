"""The cluster index (pure): the model, kept current one object at a time.

:func:`wholeip.model.build_state` answers "what does this cluster map to" from
scratch; at 100,000 Services that costs seconds. The agent cannot pay that for
every changed pod, so it keeps a :class:`ClusterIndex`: every Service and
EndpointSlice parsed once, the resolved mapping of every external IP, and the
elements of every set. A change re-parses only the objects that changed and
re-resolves only what they can affect:

* a Service or its slices change -> that Service's external IPs, old and new;
* an external IP's winner changes -> the pods it pointed at, old and new (who
  leaves with which external IP depends on every mapping of the pod);
* a mapping changes -> its own elements (every element belongs to exactly one
  mapping, see :func:`wholeip.compile.mapping_elements`).

Nodes and settings decide the cluster networks and the guards for every
external IP at once; a change to them builds a new index.

The decisions themselves are the model's (one implementation):
:func:`build_state` *is* an index filled with every object, so the
incremental path and the full path cannot disagree on a rule; a property test
drives both with random changes and compares them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from wholeip.compile import FAMILY, empty_elements, mapping_elements, network_elements, skeleton
from wholeip.model import (
    ClusterState,
    IPAddress,
    Mapping1to1,
    Mode,
    ObjectRef,
    PortSpec,
    Problem,
    ServiceInfo,
    SliceInfo,
    collapse,
    node_networks,
    parse_service,
    parse_slice,
    refusal,
    resolve_ports,
)
from wholeip.nft.doc import Elem, TableDoc
from wholeip.settings import ModelSettings

ServiceKey = tuple[str, str]
"""(namespace, name)."""

Touched = dict[str, set[Elem]]
"""Per set: the elements an update added or removed (a changed map entry: both pairs)."""

_SKELETON = skeleton()


def service_key(obj: Mapping[str, Any]) -> ServiceKey:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else "", name if isinstance(name, str) else "")


@dataclasses.dataclass(slots=True)
class _View:
    """A managed Service with its endpoints."""

    info: ServiceInfo
    ready: dict[int, Mapping[IPAddress, str | None]]
    ports: tuple[PortSpec, ...]
    problems: tuple[Problem, ...]


class ClusterIndex:
    """The model and the elements of one node's table, updated object by object."""

    def __init__(
        self,
        *,
        settings: ModelSettings,
        node_name: str,
        nodes: Iterable[Mapping[str, Any]],
        table: str = "wholeip",
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.table = table
        node_problems: list[Problem] = []
        pod_cidrs, node_ips = node_networks(nodes, node_problems)
        self.cluster_networks = collapse(
            [
                *(settings.cluster_cidrs or pod_cidrs),
                *settings.service_cidrs,
                *(ipaddress.ip_network(ip) for ip in node_ips),
            ]
        )
        self._guard_nets = collapse([*settings.cluster_cidrs, *pod_cidrs, *settings.service_cidrs])
        pod_nets = collapse(settings.cluster_cidrs or pod_cidrs)
        self._pod_nets = {v: tuple(n for n in pod_nets if n.version == v) for v in (4, 6)}
        """Where a backend may live, per family (empty: that family's pod networks are unknown)."""
        self._node_ips = frozenset(node_ips)
        self._node_problems = tuple(node_problems)
        # Services: parse results (managed or not) and their problems.
        self._parsed: dict[ServiceKey, ServiceInfo | None] = {}
        self._parse_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        # EndpointSlices.
        self._slices: dict[str, SliceInfo] = {}
        self._slices_of: dict[ServiceKey, tuple[str, ...]] = {}
        self._slice_problems: dict[str, tuple[Problem, ...]] = {}
        # Managed Services with endpoints, and who claims which external IP.
        self._views: dict[ServiceKey, _View] = {}
        self._view_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        self._claims: dict[IPAddress, tuple[ServiceKey, ...]] = {}
        self._ip_problems: dict[IPAddress, tuple[Problem, ...]] = {}
        self._winners: dict[IPAddress, Mapping1to1] = {}
        """External IP -> its mapping, egress not decided yet (always False here)."""
        self._pod_exts: dict[IPAddress, tuple[IPAddress, ...]] = {}
        self._pod_egress: dict[IPAddress, IPAddress] = {}
        """Pod IP -> the external IP it leaves with."""
        self._pod_problems: dict[IPAddress, tuple[Problem, ...]] = {}
        self._final: dict[IPAddress, Mapping1to1] = {}
        self.elements: dict[str, set[Elem]] = empty_elements()
        """Live sets: the table's elements as of the last update (read only outside)."""
        for name, elem in network_elements(self.cluster_networks):
            self.elements[name].add(elem)

    # ------------------------------------------------------------------ input

    def update(
        self,
        *,
        services: Mapping[ServiceKey, Sequence[Mapping[str, Any]]] = {},
        slices: Mapping[str, Mapping[str, Any] | None] = {},
    ) -> Touched:
        """Apply changed objects; return the elements that changed.

        ``services``: key -> the Service objects now under that key (none: deleted;
        more than one only in a flat list with duplicates). ``slices``: any unique
        slice key -> the slice now (None: deleted).
        """
        dirty: set[ServiceKey] = set(services)
        for skey, obj in slices.items():
            old = self._slices.pop(skey, None)
            self._slice_problems.pop(skey, None)
            if old is not None:
                _discard(self._slices_of, old.service, skey)
                dirty.add(old.service)
            new = parse_slice(obj) if obj is not None else None
            if new is not None:
                self._slices[skey] = new
                if new.problems:
                    self._slice_problems[skey] = new.problems
                _add(self._slices_of, new.service, skey)
                dirty.add(new.service)
        for key, objs in services.items():
            self._put_service(key, objs)
        touched: Touched = {}
        affected: set[IPAddress] = set()
        for key in dirty:
            old_view = self._views.pop(key, None)
            self._view_problems.pop(key, None)
            new_view = self._make_view(key)
            if old_view is not None:
                for ip in old_view.info.external_ips:
                    _discard(self._claims, ip, key)
                affected.update(old_view.info.external_ips)
            if new_view is not None:
                self._views[key] = new_view
                if new_view.problems:
                    self._view_problems[key] = new_view.problems
                for ip in new_view.info.external_ips:
                    _add(self._claims, ip, key)
                affected.update(new_view.info.external_ips)
        pods: set[IPAddress] = set()
        for ip in affected:
            was = self._winners.pop(ip, None)
            now = self._resolve_ip(ip)
            if was is not None:
                _discard(self._pod_exts, was.pod_ip, ip)
                pods.add(was.pod_ip)
            if now is not None:
                self._winners[ip] = now
                _add(self._pod_exts, now.pod_ip, ip)
                pods.add(now.pod_ip)
        refresh = set(affected)
        for pod in pods:
            refresh.update(self._resolve_egress(pod))
        # Every removal before any addition: while a pod's egress moves from one mapping
        # to another, both contribute the same self-hairpin element.
        changed = [
            (ip, final) for ip, final in ((ip, self._final_of(ip)) for ip in refresh) if final != self._final.get(ip)
        ]
        for ip, _ in changed:
            previous = self._final.get(ip)
            # A mapping's elements are a pure function of it: recomputed, not stored.
            for name, elem in mapping_elements(previous, node_name=self.node_name) if previous is not None else ():
                self.elements[name].discard(elem)
                touched.setdefault(name, set()).add(elem)
        for ip, final in changed:
            if final is None:
                self._final.pop(ip, None)
                continue
            self._final[ip] = final
            for name, elem in mapping_elements(final, node_name=self.node_name):
                self.elements[name].add(elem)
                touched.setdefault(name, set()).add(elem)
        return touched

    def _put_service(self, key: ServiceKey, objs: Sequence[Mapping[str, Any]]) -> None:
        problems: list[Problem] = []
        parsed = [p for p in (parse_service(o, self.settings, problems) for o in objs) if p is not None]
        # Same-age duplicates (a flat list holding one Service twice): content decides, not input order.
        parsed.sort(key=lambda s: (s.age_key, s.ref.uid, repr(s)))
        for dup in parsed[1:]:
            problems.append(
                Problem(dup.ref, "DuplicateObject", "the same Service appears twice; the first one is used")
            )
        if parsed:
            self._parsed[key] = parsed[0]
        else:
            self._parsed.pop(key, None)
        if problems:
            self._parse_problems[key] = tuple(problems)
        else:
            self._parse_problems.pop(key, None)

    def _make_view(self, key: ServiceKey) -> _View | None:
        info = self._parsed.get(key)
        if info is None:
            return None
        ready: dict[int, Mapping[IPAddress, str | None]] = {}
        slice_ports: dict[tuple[str, str], int] = {}
        for skey in sorted(self._slices_of.get(key, ())):
            sl = self._slices[skey]
            have = ready.get(sl.family)
            # One slice per family (the usual case): share its mapping, copy nothing.
            ready[sl.family] = sl.ready if have is None else {**have, **sl.ready}
            slice_ports.update(sl.ports)
        problems: list[Problem] = []
        for family, addrs in list(ready.items()):
            nets = self._pod_nets[family]
            outside = [a for a in addrs if nets and not any(a in n for n in nets)]
            if outside:
                # A hand-written EndpointSlice must not point a whole IP at another
                # tenant's address or a node (the CVE-2021-25740 pattern).
                ready[family] = {a: n for a, n in addrs.items() if a not in outside}
                problems += [
                    Problem(
                        info.ref,
                        "EndpointOutsidePodNetwork",
                        f"endpoint {a} lies outside the pod networks ({', '.join(map(str, nets))}); ignored",
                    )
                    for a in sorted(outside, key=int)
                ]
        if not info.external_ips:
            problems.append(
                Problem(info.ref, "NoExternalIP", "managed Service has no status.loadBalancer.ingress IP yet", False)
            )
            ports: tuple[PortSpec, ...] = ()
        else:
            ports = resolve_ports(info, slice_ports, problems) if info.mode is Mode.PER_PORT else ()
        return _View(info, ready, ports, tuple(problems))

    # ------------------------------------------------------------------ resolution

    def _resolve_ip(self, ip: IPAddress) -> Mapping1to1 | None:
        """The oldest claimant with a ready endpoint wins; everybody else learns why not."""
        claimants = sorted((self._views[k] for k in self._claims.get(ip, ())), key=lambda v: v.info.age_key)
        problems: list[Problem] = []
        winner: Mapping1to1 | None = None
        why = (
            refusal(
                ip,
                cluster=self._guard_nets,
                node_ips=self._node_ips,
                allowed=self.settings.allowed_external_cidrs,
            )
            if claimants
            else None
        )
        for view in claimants:
            svc = view.info
            if why is not None:
                problems.append(Problem(svc.ref, "ExternalIPRefused", f"external IP refused: {why}"))
                continue
            if winner is not None:
                owner = winner.service
                problems.append(
                    Problem(
                        svc.ref,
                        "ExternalIPConflict",
                        f"external IP {ip} is already claimed by the older Service {owner.namespace}/{owner.name}",
                    )
                )
                continue
            ready = view.ready.get(ip.version, {})
            if not ready:
                problems.append(
                    Problem(svc.ref, "NoReadyEndpoint", f"no ready IPv{ip.version} endpoint for external IP {ip}")
                )
                continue
            pod_ip = min(ready, key=int)
            if len(ready) > 1:
                problems.append(
                    Problem(
                        svc.ref,
                        "SeveralReadyEndpoints",
                        f"{len(ready)} ready IPv{ip.version} endpoints; a whole IP maps to one pod,"
                        f" using {pod_ip} (the lowest address)",
                    )
                )
            winner = Mapping1to1(
                service=svc.ref,
                external_ip=ip,
                pod_ip=pod_ip,
                node_name=ready[pod_ip],
                mode=svc.mode,
                allow_icmp=svc.allow_icmp,
                ports=view.ports,
                source_ranges=svc.source_ranges,
                egress=False,
            )
        if problems:
            self._ip_problems[ip] = tuple(problems)
        else:
            self._ip_problems.pop(ip, None)
        return winner

    def _egress_order(self, ext: IPAddress) -> tuple[tuple[str, str, str], int]:
        info = self._views[_key(self._winners[ext].service)].info
        return info.age_key, info.external_ips.index(ext)

    def _resolve_egress(self, pod: IPAddress) -> tuple[IPAddress, ...]:
        """Which external IP the pod leaves with: its oldest Service's first. Returns the pod's IPs."""
        exts = self._pod_exts.get(pod)
        if not exts:
            self._pod_exts.pop(pod, None)
            self._pod_egress.pop(pod, None)
            self._pod_problems.pop(pod, None)
            return ()
        ordered = sorted(exts, key=self._egress_order)
        first = self._winners[ordered[0]].service
        self._pod_egress[pod] = ordered[0]
        problems = [
            Problem(
                m.service,
                "EgressClaimedByOlderService",
                f"pod {pod} already leaves with the external IP of the older Service {first.namespace}/{first.name}",
                warning=False,
            )
            for m in (self._winners[e] for e in ordered[1:])
            if m.service != first
        ]
        if problems:
            self._pod_problems[pod] = tuple(problems)
        else:
            self._pod_problems.pop(pod, None)
        return exts

    def _final_of(self, ip: IPAddress) -> Mapping1to1 | None:
        winner = self._winners.get(ip)
        if winner is None:
            return None
        return dataclasses.replace(winner, egress=self._pod_egress.get(winner.pod_ip) == ip)

    # ------------------------------------------------------------------ output

    def doc(self) -> TableDoc:
        """The table, over the live sets (valid until the next update)."""
        return TableDoc(family=FAMILY, name=self.table, skeleton=_SKELETON, elements=self.elements)

    @property
    def problems(self) -> list[Problem]:
        """Every problem, in no particular order (a :class:`~wholeip.model.ProblemSource`)."""
        out: list[Problem] = [*self._node_problems]
        groups: tuple[Mapping[Any, tuple[Problem, ...]], ...] = (
            self._parse_problems,
            self._slice_problems,
            self._view_problems,
            self._ip_problems,
            self._pod_problems,
        )
        for group in groups:
            for problems in group.values():
                out += problems
        return out

    def owner(self, address: str) -> ObjectRef | None:
        """The Service whose mapping an element keyed by ``address`` belongs to (external IP,
        or the pod IP of an egress element), if any."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        final = self._final.get(ip)
        if final is None and ip in self._pod_egress:
            final = self._final.get(self._pod_egress[ip])
        return final.service if final is not None else None

    def mapping_count(self) -> int:
        return len(self._final)

    def backend_nodes(self, namespace: str, name: str) -> list[str | None]:
        """The nodes of the pods a Service's mappings point at."""
        view = self._views.get((namespace, name))
        if view is None:
            return []
        ref = view.info.ref
        return [
            m.node_name
            for m in (self._final.get(ip) for ip in view.info.external_ips)
            if m is not None and m.service == ref  # a lost claim is the winner's mapping
        ]

    def state(self) -> ClusterState:
        """The whole model as one immutable ClusterState (costs O(Services))."""
        return ClusterState(
            mappings=tuple(sorted(self._final.values(), key=lambda m: (m.external_ip.version, int(m.external_ip)))),
            cluster_networks=self.cluster_networks,
            problems=tuple(sorted(self.problems, key=_problem_order)),
            managed_services=tuple(sorted(p.ref for p in self._parsed.values() if p is not None)),
        )


def _add(index: dict[Any, tuple[Any, ...]], key: Any, value: Any) -> None:
    # Small tuples, not sets: nearly every entry holds one value, and an empty set
    # costs 216 bytes where a one-tuple costs 48 (tens of MiB at 100,000 Services).
    have = index.get(key, ())
    if value not in have:
        index[key] = (*have, value)


def _discard(index: dict[Any, tuple[Any, ...]], key: Any, value: Any) -> None:
    rest = tuple(v for v in index.get(key, ()) if v != value)
    if rest:
        index[key] = rest
    else:
        index.pop(key, None)


def _key(ref: ObjectRef) -> ServiceKey:
    return (ref.namespace, ref.name)


def _problem_order(p: Problem) -> tuple[ObjectRef, str, str]:
    return (p.ref, p.reason, p.message)


def load(
    *,
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    node_name: str,
    settings: ModelSettings,
    table: str = "wholeip",
) -> ClusterIndex:
    """An index holding every given object (duplicates allowed, as in a flat list).

    The cyclic garbage collector is paused meanwhile: the index is hundreds of thousands
    of new, long-lived, acyclic objects, and every collection on the way would scan all
    of them again (a third of the time at 100,000 Services).
    """
    with gc_paused():
        return _load(services, endpoint_slices, nodes, node_name, settings, table)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (restored as it was on the way out)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_unique(
    *,
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    node_name: str,
    settings: ModelSettings,
    table: str = "wholeip",
    batch: int = 2000,
) -> ClusterIndex:
    """An index of objects with unique keys (an informer's cache), read as a stream.

    Nothing is kept of an object but what the index makes of it, so a cache that
    decodes objects on the way (:class:`~wholeip.kube.informer.PackedCache`) is never
    held decoded as a whole. Slices go first, so each Service is resolved once.
    """
    with gc_paused():
        index = ClusterIndex(settings=settings, node_name=node_name, nodes=nodes, table=table)
        pending: dict[str, Mapping[str, Any] | None] = {}
        for obj in endpoint_slices:
            ns, name = service_key(obj)
            pending[f"{ns}/{name}" if ns else name] = obj
            if len(pending) >= batch:
                index.update(slices=pending)
                pending = {}
        index.update(slices=pending)
        grouped: dict[ServiceKey, list[Mapping[str, Any]]] = {}
        for obj in services:
            grouped[service_key(obj)] = [obj]
            if len(grouped) >= batch:
                index.update(services=grouped)
                grouped = {}
        index.update(services=grouped)
        return index


def _load(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    node_name: str,
    settings: ModelSettings,
    table: str,
) -> ClusterIndex:
    index = ClusterIndex(settings=settings, node_name=node_name, nodes=nodes, table=table)
    grouped: dict[ServiceKey, list[Mapping[str, Any]]] = {}
    for obj in services:
        grouped.setdefault(service_key(obj), []).append(obj)
    by_base: dict[str, list[Mapping[str, Any]]] = {}
    for obj in endpoint_slices:
        ns, name = service_key(obj)
        by_base.setdefault(f"{ns}/{name}" if ns else name, []).append(obj)  # the informers' cache key
    slices: dict[str, Mapping[str, Any]] = {}
    for base, objs in by_base.items():
        # Duplicates in a flat list: keep them all, numbered by content (a later slice's
        # endpoints win), so that input order never decides.
        for obj in sorted(objs, key=repr) if len(objs) > 1 else objs:
            key, n = base, 0
            while key in slices:
                n += 1
                key = f"{base}#{n}"
            slices[key] = obj
    index.update(services=grouped, slices=slices)
    return index
