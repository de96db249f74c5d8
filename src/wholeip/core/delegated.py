"""Delegated Services: the ClusterIPs and NodePorts of Services labelled for us (pure).

kube-proxy (and every replacement that follows the convention) ignores a Service that
carries ``service.kubernetes.io/service-proxy-name``; when the label names us
(``--proxy-name``), its ClusterIPs and NodePorts are ours to serve. A Service's
*front-ends* (:class:`~wholeip.core.model.Frontend`) are, per family of its ClusterIPs,
every port of the ClusterIP and every allocated NodePort; each gets the endpoints this
node sends it to:

* the endpoints of the Service's EndpointSlices of that family whose port resolves (the
  slice's port of the Service port's name and protocol, else a numeric ``targetPort``);
* all ready ones; with none ready, the serving and terminating ones (as kube-proxy);
* for the ClusterIP with ``internalTrafficPolicy: Local`` and for NodePorts with
  ``externalTrafficPolicy: Local``: those on this node only (the same fallback among them).

The elements (:func:`frontend_elements`) are the data of the fixed skeleton's delegated
part (:mod:`wholeip.core.ruleset`, "delegated Services"): a verdict-map entry naming the
slot-count class, and the slots. Each front-end's elements are a pure function of it;
the only elements two front-ends can share are ``svcself`` pairs (a local endpoint of
several ports), which :class:`DelegatedIndex` counts.

A front-end two Services claim (hand-written objects: the API server allocates
ClusterIPs and NodePorts uniquely) goes to the older Service; the other is told
(``FrontendConflict``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import NamedTuple

from wholeip.core.compact import ServiceKey
from wholeip.core.model import Frontend, HealthCheck, ObjectRef, Problem
from wholeip.core.objects import (
    DelegatedInfo,
    EndpointsInfo,
    RawObject,
    SliceEndpoint,
    parse_delegated_service,
)
from wholeip.core.ruleset import GENERATIONS, rec_chain, slot_count, timeout_class
from wholeip.names import (
    AFF_CHAIN,
    LB_CHAIN,
    NODEPORT,
    NP_ADDR,
    NP_AFF_TIME,
    NP_GEN_B,
    NP_MASQ,
    NP_OLD_ADDR,
    NP_OLD_PORT,
    NP_PORT,
    NP_REFUSE,
    REFUSE,
    SVC,
    SVC_ADDR,
    SVC_AFF_TIME,
    SVC_GEN_B,
    SVC_OLD_ADDR,
    SVC_OLD_PORT,
    SVC_PORT,
    SVC_REFUSE,
    SVC_SELF,
    SVC_UPORT6,
    PerFamily,
)
from wholeip.nft.doc import Elem
from wholeip.settings import ModelSettings

FrontKey = tuple[int, str | None, str, int]
"""(family, ClusterIP or None for a NodePort, protocol, port)."""

MAX_ENDPOINTS = 4096
"""Endpoints beyond this many (in address order) get no slot."""


Generation = tuple[str, tuple[tuple[str, int], ...] | None]
"""A front-end with affinity: its current generation (``a``/``b``) and its previous slot
table, which the clients recorded in the other generation keep (None: no such table)."""

FIRST: Generation = (GENERATIONS[0], None)


class _Kind(NamedTuple):
    """The sets of one kind of front-end (ClusterIP port, or NodePort), per family."""

    front: PerFamily
    addr: PerFamily
    port: PerFamily
    refuse: PerFamily
    times: dict[str, PerFamily]
    gen_b: PerFamily
    old_addr: PerFamily
    old_port: PerFamily


_KINDS = {
    False: _Kind(SVC, SVC_ADDR, SVC_PORT, SVC_REFUSE, SVC_AFF_TIME, SVC_GEN_B, SVC_OLD_ADDR, SVC_OLD_PORT),
    True: _Kind(NODEPORT, NP_ADDR, NP_PORT, NP_REFUSE, NP_AFF_TIME, NP_GEN_B, NP_OLD_ADDR, NP_OLD_PORT),
}
"""By ``f.address is None`` (a NodePort)."""


def _element_key(f: Frontend) -> tuple[str | int, ...]:
    """What a front-end's elements are keyed by: (protocol, NodePort) or (ClusterIP,
    protocol, port)."""
    return (f.protocol, f.port) if f.address is None else (f.address, f.protocol, f.port)


def _other(generation: str) -> str:
    return GENERATIONS[1] if generation == GENERATIONS[0] else GENERATIONS[0]


def _shared_port(f: Frontend) -> int | None:
    """The one port every endpoint of ``f`` listens on, if they share one."""
    ports = {port for _, port in f.endpoints[:MAX_ENDPOINTS]}
    return next(iter(ports)) if len(ports) == 1 else None


def frontend_elements(f: Frontend, generation: Generation = FIRST) -> list[tuple[str, Elem]]:
    """The (set, element) pairs of one front-end (with affinity, in ``generation``)."""
    v = f.family
    out: list[tuple[str, Elem]] = [(SVC_SELF[v], (a, a)) for a in f.local_endpoints]
    kind, key = _KINDS[f.address is None], _element_key(f)
    front, addr_map, port_map, refuse = kind.front[v], kind.addr[v], kind.port[v], kind.refuse[v]
    if not f.endpoints:
        out.append((refuse, (key, "drop" if f.local else f"goto {REFUSE}")))
        return out
    eps = f.endpoints[:MAX_ENDPOINTS]
    # Up to 8 endpoints without affinity: n slots, endpoint i in slot i (the fewest elements,
    # and what moves is only new flows' choice: conntrack keeps established flows). Else
    # Maglev: an endpoint change rewrites and moves about its own share of the slots,
    # where a modulo fill would move nearly all (bench/wholeip_bench/delegated.py).
    table = slots_of(eps) if f.affinity or len(eps) > 8 else eps
    out.append((front, (key, f"goto {AFF_CHAIN if f.affinity else LB_CHAIN}{len(table)}")))
    for i, (address, port) in enumerate(table):
        out.append((addr_map, ((*key, i), address)))
        out.append((port_map, ((*key, i), port)))
    shared = _shared_port(f) if f.affinity and v == 6 and f.address is not None else None
    if shared is not None:
        out.append((SVC_UPORT6, (key, shared)))
    if f.affinity:
        out += _generation_elements(f, key, generation, table)
    if f.masquerade:
        out.append((NP_MASQ[v], key))
    return out


def _generation_elements(
    f: Frontend, key: tuple[str | int, ...], generation: Generation, table: Sequence[tuple[str, int]]
) -> list[tuple[str, Elem]]:
    current, previous = generation
    v, kind = f.family, _KINDS[f.address is None]
    out: list[tuple[str, Elem]] = [
        (kind.times["cur"][v], (key, f"jump {rec_chain(f.affinity_timeout, current)}")),
        (kind.times["old"][v], (key, f"jump {rec_chain(f.affinity_timeout, _other(current))}")),
    ]
    if current == GENERATIONS[1]:
        out.append((kind.gen_b[v], key))
    if previous is not None:
        # Only the slots where it differs: a slot the previous table lacks falls through to
        # the current one (affo_N), so the commit writes about 1/n of the slots, not all.
        for i, (was, now) in enumerate(zip(previous, table, strict=True)):
            if was != now:
                out.append((kind.old_addr[v], ((*key, i), was[0])))
                out.append((kind.old_port[v], ((*key, i), was[1])))
    return out


def next_generation(was: Frontend | None, now: Frontend | None, generation: Generation) -> Generation:
    """A front-end's generation after it changed from ``was`` to ``now``.

    With affinity before and after, and endpoints both times, a change of its slots starts
    a new generation whose previous table is the slots clients used until now (an
    endpoint that is gone replaced by the new table's choice for that slot): the clients
    recorded in the ending generation keep their endpoints within their timeout, the
    others (and every client once its record expires) take the new slots. A change of the
    slot count (a class of its own) or of the Service, losing affinity or every endpoint,
    starts again from :data:`FIRST`. Anything else keeps the generation.
    """
    if now is None or was is None or not (now.affinity and was.affinity and now.endpoints and was.endpoints):
        return FIRST
    if was.service != now.service:
        return FIRST
    return _carry(slots_of(was.endpoints[:MAX_ENDPOINTS]), slots_of(now.endpoints[:MAX_ENDPOINTS]), generation)


Slots = tuple[tuple[str, int], ...]


def _carry(before: Slots, after: Slots, generation: Generation) -> Generation:
    """The generation once the slots went from ``before`` to ``after`` (see above)."""
    if before == after:
        return generation
    if len(before) != len(after):
        return FIRST
    kept = _live(before, after)
    if kept is None:
        return (generation[0], None)  # nobody's endpoint differs: no previous table needed
    return (_other(generation[0]), kept)


def _live(previous: Slots, current: Slots) -> Slots | None:
    """``previous`` with the endpoints ``current`` no longer has replaced by its choice;
    None when that is ``current`` itself."""
    live = set(current)
    kept = tuple(p if p in live else c for p, c in zip(previous, current, strict=True))
    return None if kept == current else kept


def kernel_generation(f: Frontend, kernel: Mapping[str, Mapping[tuple[object, ...], object]]) -> Generation | None:
    """The generation of front-end ``f`` as a previous run of the agent left it in the kernel
    (``kernel``: per set, key -> value), carried to ``f``'s endpoints; None when the kernel
    has no such front-end with affinity or its slots are incomplete."""
    v, kind, key = f.family, _KINDS[f.address is None], _element_key(f)
    if key not in kernel.get(kind.times["cur"][v], {}):
        return None
    current = GENERATIONS[1] if key in kernel.get(kind.gen_b[v], {}) else GENERATIONS[0]
    after = slots_of(f.endpoints[:MAX_ENDPOINTS])
    slots = range(len(after))
    addrs, ports = kernel.get(kind.addr[v], {}), kernel.get(kind.port[v], {})
    try:
        before = tuple((str(addrs[(*key, s)]), int(ports[(*key, s)])) for s in slots)  # type: ignore[call-overload]
    except KeyError:
        return None  # another slot count, or a table cut short: start afresh
    olds, oldp = kernel.get(kind.old_addr[v], {}), kernel.get(kind.old_port[v], {})
    previous = tuple(
        (str(olds.get((*key, s), before[s][0])), int(oldp.get((*key, s), before[s][1])))  # type: ignore[call-overload]
        for s in slots
    )
    if before != after:  # the endpoints changed since: as a change would carry it
        return _carry(before, after, (current, None))
    return (current, _live(previous, after))


FRONT_KEYED: dict[str, bool] = {
    name: nodeport
    for nodeport, names in (
        (nodeport, (*(s for s in kind if isinstance(s, PerFamily)), *kind.times.values(), *extra))
        for (nodeport, kind), extra in zip(_KINDS.items(), ((), (NP_MASQ,)), strict=True)
    )
    for per_family in names
    for name in per_family.both
} | {SVC_UPORT6: False}
"""The sets keyed by a front-end (ClusterIP, protocol, port, ... or protocol, NodePort, ...):
name -> whether by NodePort."""

GENERATION_SETS = frozenset(
    name
    for kind in _KINDS.values()
    for per_family in (kind.gen_b, kind.old_addr, kind.old_port, *kind.times.values())
    for name in per_family.both
)
"""The sets that hold the generations of front-ends with affinity: history, so an index
that followed the changes and a fresh one differ there (and only there)."""


def without_history(elements: Mapping[str, Set[Elem]]) -> dict[str, Set[Elem]]:
    """``elements`` without :data:`GENERATION_SETS` (to compare an index with a fresh one)."""
    return {k: v for k, v in elements.items() if k not in GENERATION_SETS}


AFFINITY_SLOTS = 256
"""The fewest slots of a front-end with sessionAffinity ClientIP: enough for an endpoint
change to move only about 1/n of the clients (see :func:`maglev`)."""


def _hash64(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=salt).digest(), "big")


@functools.lru_cache(maxsize=64)
def slots_of(endpoints: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """:func:`maglev`, remembered for the last front-ends (a change computes the table
    before and after, and the elements of both)."""
    return tuple(maglev(endpoints))


def maglev(endpoints: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The slots of a front-end with affinity or more than 8 endpoints, filled as Maglev does (Eisenbud et al.,
    NSDI 2016): each endpoint has its own order of preferred slots (from a hash of itself)
    and the endpoints take turns claiming their next free preference. Every endpoint gets
    floor or ceil of slots/n slots, and an endpoint that comes or goes moves little more
    than its own share of the clients (the others keep most of their slots), while the
    table stays a pure function of the endpoints (the incremental index and a fresh build
    agree). Slots: :data:`AFFINITY_SLOTS`, or the class for 8n when that is larger; a power
    of two, so an odd step visits every slot."""
    size = slot_count(len(endpoints)) if len(endpoints) > 8 else AFFINITY_SLOTS
    size = max(size, AFFINITY_SLOTS)
    prefs = []
    for address, port in endpoints:
        name = f"{address}:{port}"
        prefs.append((_hash64(name, b"offset") % size, (_hash64(name, b"skip") % (size // 2)) * 2 + 1))
    table: list[tuple[str, int] | None] = [None] * size
    nexts = [0] * len(endpoints)
    filled = 0
    while filled < size:
        for i, (offset, skip) in enumerate(prefs):
            while True:
                slot = (offset + nexts[i] * skip) % size
                nexts[i] += 1
                if table[slot] is None:
                    break
            table[slot] = endpoints[i]
            filled += 1
            if filled == size:
                break
    return [t for t in table if t is not None]


def _order(address: str) -> tuple[int, int]:
    return (0, int(ipaddress.ip_address(address)))


def _choose(candidates: Sequence[tuple[SliceEndpoint, int]]) -> tuple[tuple[str, int], ...]:
    """The ready endpoints, else the serving and terminating ones (kube-proxy's fallback)."""
    ready = [(e.address, p) for e, p in candidates if e.ready]
    if not ready:
        ready = [(e.address, p) for e, p in candidates if e.serving and e.terminating]
    return tuple(sorted(set(ready), key=lambda ep: (_order(ep[0]), ep[1])))


def frontends(
    info: DelegatedInfo, slices: Iterable[EndpointsInfo], node_name: str
) -> tuple[list[Frontend], HealthCheck | None]:
    """A delegated Service's front-ends on node ``node_name``, and its health check."""
    slices = list(slices)
    out: list[Frontend] = []
    local_count = 0
    for ip in info.cluster_ips:
        v = ip.version
        family = [s for s in slices if s.family == v]
        for p in info.ports:
            candidates: dict[str, tuple[SliceEndpoint, int]] = {}
            for sl in family:  # a later slice's entry for the same address wins
                ports = dict(sl.ports)
                number = ports.get((p.name, p.protocol))
                if number is None and isinstance(p.target, int):
                    number = p.target
                if number is None:
                    continue  # a named targetPort this slice's pods do not have
                for e in sl.endpoints:
                    candidates[e.address] = (e, number)
            every = list(candidates.values())
            cluster = _choose(every)
            local = _choose([c for c in every if c[0].node == node_name])
            local_addrs = tuple(a for a, _ in local)
            internal = local if info.internal_local else cluster
            out.append(
                Frontend(
                    service=info.ref,
                    family=v,
                    address=str(ip),
                    protocol=p.protocol,
                    port=p.port,
                    endpoints=internal,
                    affinity=info.affinity,
                    affinity_timeout=timeout_class(info.affinity_timeout),
                    local=info.internal_local and bool(cluster),
                    local_endpoints=tuple(sorted({a for a, _ in internal} & set(local_addrs), key=_order)),
                )
            )
            if p.node_port is not None:
                external = local if info.external_local else cluster
                out.append(
                    Frontend(
                        service=info.ref,
                        family=v,
                        address=None,
                        protocol=p.protocol,
                        port=p.node_port,
                        endpoints=external,
                        affinity=info.affinity,
                        affinity_timeout=timeout_class(info.affinity_timeout),
                        masquerade=not info.external_local,
                        local=info.external_local and bool(cluster),
                        local_endpoints=tuple(sorted({a for a, _ in external} & set(local_addrs), key=_order)),
                    )
                )
            local_count = max(local_count, len(local_addrs))
    health = None
    if info.health_check_port is not None and info.cluster_ips:
        health = HealthCheck(info.health_check_port, info.ref, local_count)
    return out, health


def front_key(f: Frontend) -> FrontKey:
    return (f.family, f.address, f.protocol, f.port)


class _Service(NamedTuple):
    info: DelegatedInfo
    fronts: tuple[Frontend, ...]
    health: HealthCheck | None


class DelegatedIndex:
    """The delegated Services of the cluster, their front-ends on this node and their
    elements, kept current one object at a time (a full build is the same index filled
    at once)."""

    def __init__(
        self,
        *,
        settings: ModelSettings,
        node_name: str,
        elements: dict[str, set[Elem]],
        slices_of: Callable[[ServiceKey], Iterable[EndpointsInfo]],
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.elements = elements
        self.slices_of = slices_of
        """A Service's slices as :func:`~wholeip.core.objects.parse_endpoints` reads them,
        in the order of their keys: the cluster index keeps every slice (a Service that
        becomes delegated later has them), this index none."""
        self._services: dict[ServiceKey, _Service] = {}
        self._claims: dict[FrontKey, set[ServiceKey]] = {}
        self._winners: dict[FrontKey, Frontend] = {}
        self._generations: dict[FrontKey, Generation] = {}
        """Front-ends with affinity past their first generation (see :func:`next_generation`):
        history, which a fresh index does not have (it starts every front-end afresh)."""
        self._counts: dict[tuple[str, Elem], int] = {}
        self._problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        self._parse_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        """What reading a Service found (an unusable port, an affinity timeout out of range)."""
        self._health: dict[int, set[ServiceKey]] = {}

    def update(
        self,
        services: Mapping[ServiceKey, Sequence[RawObject]],
        sliced: Iterable[ServiceKey],
        touched: dict[str, set[Elem]],
    ) -> set[tuple[str, int]]:
        """``services``: changed Services (key -> the objects under it); ``sliced``: the
        Services whose slices changed (as :attr:`slices_of` gives them now). Returns the
        node ports, (protocol, port), whose NodePort or health check may have another owner
        now (:meth:`node_port_owner` answers otherwise): published pod ports give way to them."""
        dirty: set[ServiceKey] = set(sliced)
        infos: dict[ServiceKey, DelegatedInfo | None] = {}
        for key, objs in services.items():
            problems: list[Problem] = []
            parsed = [i for i in (parse_delegated_service(o, self.settings, problems) for o in objs) if i is not None]
            if problems:
                self._parse_problems[key] = tuple(problems)
            else:
                self._parse_problems.pop(key, None)
            if len(parsed) > 1:
                parsed.sort(key=lambda i: (i.age_key, i.ref.uid, repr(i)))
            infos[key] = parsed[0] if parsed else None
            dirty.add(key)
        changed: set[FrontKey] = set()
        ports: set[int] = set()
        for key in dirty:
            old_svc = self._services.pop(key, None)
            info = infos.get(key, old_svc.info if old_svc is not None else None)
            if old_svc is not None:
                for f in old_svc.fronts:
                    self._claims[front_key(f)].discard(key)
                    changed.add(front_key(f))
                if old_svc.health is not None:
                    self._health[old_svc.health.port].discard(key)
                    ports.add(old_svc.health.port)
            if info is None:
                continue
            fronts, health = frontends(info, self.slices_of(key), self.node_name)
            self._services[key] = _Service(info, tuple(fronts), health)
            for f in fronts:
                self._claims.setdefault(front_key(f), set()).add(key)
                changed.add(front_key(f))
            if health is not None:
                self._health.setdefault(health.port, set()).add(key)
                ports.add(health.port)
        problem_keys: set[ServiceKey] = set(dirty)
        for port in ports:  # (who shares a health check port learns whose it is now)
            problem_keys.update(self._health.get(port, ()))
        for fk in changed:
            was = self._winners.pop(fk, None)
            claimants = sorted(self._claims.get(fk, ()), key=lambda k: self._services[k].info.age_key)
            if not claimants:
                self._claims.pop(fk, None)
            now = None
            if claimants:
                owner = claimants[0]
                now = next(f for f in self._services[owner].fronts if front_key(f) == fk)
                self._winners[fk] = now
                problem_keys.update(claimants)
            if was == now:
                continue
            generation = self._generations.pop(fk, FIRST)
            for name, elem in frontend_elements(was, generation) if was is not None else ():
                self._count(name, elem, -1, touched)
            generation = next_generation(was, now, generation)
            if now is not None and generation != FIRST:
                self._generations[fk] = generation
            for name, elem in frontend_elements(now, generation) if now is not None else ():
                self._count(name, elem, +1, touched)
        for port in ports:
            if not self._health.get(port):
                self._health.pop(port, None)
        for key in problem_keys:
            self._reproblem(key)
        moved = {(fk[2], fk[3]) for fk in changed if fk[1] is None}
        moved.update(("tcp", port) for port in ports)
        return moved

    def node_port_owner(self, protocol: str, port: int) -> str | None:
        """What holds this port on every address of the node, if a delegated Service does: its
        NodePort, or its health check (TCP); for the Event of a pod that would publish it."""
        for family in (4, 6):
            front = self._winners.get((family, None, protocol, port))
            if front is not None:
                return f"the NodePort of Service {front.service.namespace}/{front.service.name}"
        keys = self._health.get(port) if protocol == "tcp" else None
        if keys:
            ref = self._oldest(keys).info.ref
            return f"the health check port of Service {ref.namespace}/{ref.name}"
        return None

    def _oldest(self, keys: Iterable[ServiceKey]) -> _Service:
        """The oldest of these Services (who owns a health check port they share)."""
        return self._services[min(keys, key=lambda k: self._services[k].info.age_key)]

    def _count(self, name: str, elem: Elem, delta: int, touched: dict[str, set[Elem]]) -> None:
        item = (name, elem)
        n = self._counts.get(item, 0) + delta
        if n > 0:
            self._counts[item] = n
        else:
            self._counts.pop(item, None)
        if (n > 0) != (n - delta > 0):
            if n > 0:
                self.elements[name].add(elem)
            else:
                self.elements[name].discard(elem)
            touched.setdefault(name, set()).add(elem)

    def _reproblem(self, key: ServiceKey) -> None:
        svc = self._services.get(key)
        if svc is None:
            self._problems.pop(key, None)
            return
        problems = []
        for f in svc.fronts:
            win = self._winners.get(front_key(f))
            if win is not None and win.service != f.service:
                what = f"ClusterIP {f.address} port" if f.address else "NodePort"
                problems.append(
                    Problem(
                        f.service,
                        "FrontendConflict",
                        f"{what} {f.protocol.upper()}/{f.port} is claimed by the older Service"
                        f" {win.service.namespace}/{win.service.name}; not served for this one",
                    )
                )
        sharers = self._health.get(svc.health.port, ()) if svc.health is not None else ()
        if len(sharers) > 1 and svc.health is not None:
            owner = self._oldest(sharers).info.ref
            if owner != svc.info.ref:
                problems.append(
                    Problem(
                        svc.info.ref,
                        "HealthCheckPortConflict",
                        f"healthCheckNodePort {svc.health.port} is the older Service {owner.namespace}/{owner.name}'s"
                        " as well; it answers with that Service's endpoints, not this one's",
                    )
                )
        for f in svc.fronts:
            if f.affinity and f.family == 6 and f.address and f.endpoints and _shared_port(f) is None:
                problems.append(
                    Problem(
                        f.service,
                        "AffinityPerFlow",
                        f"ClusterIP {f.address} port {f.protocol.upper()}/{f.port}: its endpoints listen on"
                        " different ports, so on IPv6 its connections spread per flow without sessionAffinity"
                        " (see the README)",
                        warning=False,
                    )
                )
        applied = timeout_class(svc.info.affinity_timeout)
        if svc.info.affinity and applied != svc.info.affinity_timeout:
            problems.append(
                Problem(
                    svc.info.ref,
                    "AffinityTimeoutRounded",
                    f"sessionAffinity timeoutSeconds {svc.info.affinity_timeout} is applied as {applied},"
                    " the nearest of wholeip's fixed timeouts (see the README)",
                    warning=False,
                )
            )
        if problems:
            self._problems[key] = tuple(problems)
        else:
            self._problems.pop(key, None)

    # ------------------------------------------------------------------ output

    @property
    def problems(self) -> list[Problem]:
        return [p for group in (self._parse_problems, self._problems) for ps in group.values() for p in ps]

    def adopt(self, kernel: Mapping[str, Set[Elem]], touched: dict[str, set[Elem]]) -> int:
        """Take the generations of the front-ends with affinity from the table a previous run
        of the agent left in the kernel (at start: a restart keeps the recorded clients on
        their endpoints). Returns how many front-ends it took over."""
        wanted = {name for name in GENERATION_SETS | set(FRONT_KEYED) if name in kernel}
        grouped: dict[str, dict[tuple[object, ...], object]] = {}
        for name in wanted:
            table: dict[tuple[object, ...], object] = {}
            for elem in kernel[name]:
                if isinstance(elem, tuple) and len(elem) == 2 and isinstance(elem[0], tuple):
                    table[elem[0]] = elem[1]  # a map: key -> value
                elif isinstance(elem, tuple):
                    table[elem] = True  # a set of keys
            grouped[name] = table
        adopted = 0
        for fk, f in self._winners.items():
            if not f.affinity or not f.endpoints or fk in self._generations:
                continue
            generation = kernel_generation(f, grouped)
            if generation is None or generation == FIRST:
                continue
            for name, elem in frontend_elements(f):
                self._count(name, elem, -1, touched)
            self._generations[fk] = generation
            for name, elem in frontend_elements(f, generation):
                self._count(name, elem, +1, touched)
            adopted += 1
        return adopted

    def has_affinity(self) -> bool:
        return any(f.affinity for f in self._winners.values())

    def frontends(self) -> list[Frontend]:
        """Every served front-end, in a deterministic order."""
        return sorted(self._winners.values(), key=_frontend_order)

    def health_checks(self) -> list[HealthCheck]:
        """One health check per port (the oldest Service's), by port."""
        out = []
        for keys in self._health.values():
            health = self._oldest(keys).health
            if health is not None:
                out.append(health)
        return sorted(out)

    def endpoints_of(self, ref: ObjectRef) -> list[tuple[str, int]]:
        """The (address, port) pairs a Service's front-ends send to on this node."""
        svc = self._services.get((ref.namespace, ref.name))
        return sorted({ep for f in svc.fronts for ep in f.endpoints}) if svc is not None else []

    def frontend_count(self) -> int:
        return len(self._winners)

    def owner(self, set_name: str, leaves: Sequence[str | int]) -> ObjectRef | None:
        """The Service of an element of a front-end's set (a kernel refusal is its
        problem): ``leaves`` are the element's key parts in order, as sent."""
        nodeport = FRONT_KEYED.get(set_name)
        if nodeport is None:
            return None
        v = 6 if set_name.endswith("6") else 4
        parts = list(leaves) if nodeport else list(leaves[1:])
        if len(parts) < 2 or not isinstance(parts[0], str) or not isinstance(parts[1], int):
            return None
        address = None if nodeport else str(leaves[0]) if leaves else None
        win = self._winners.get((v, address, parts[0], parts[1]))
        return win.service if win is not None else None


def _frontend_order(f: Frontend) -> tuple[int, tuple[int, int], str, int]:
    return (f.family, _order(f.address) if f.address else (-1, 0), f.protocol, f.port)


def delegated_elements(fronts: Iterable[Frontend]) -> list[tuple[str, Elem]]:
    """Every front-end's elements (a full build)."""
    return [item for f in fronts for item in frontend_elements(f)]
