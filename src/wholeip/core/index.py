"""The cluster index (pure): the model, kept current one object at a time.

:func:`build_state` answers "what does this cluster map to" from
scratch; at 100,000 Services that costs seconds. The agent cannot pay that for
every changed pod, so it keeps a :class:`ClusterIndex`: every Service and
EndpointSlice parsed once, the resolved mapping of every external IP, and the
elements of every set. A change re-parses only the objects that changed and
re-resolves only what they can affect:

* a Service or its slices change -> that Service's external IPs, old and new;
* an external IP's winner changes -> the pods it pointed at, old and new (who
  leaves with which external IP, and whether the pod's node filters for it,
  depends on every mapping of the pod);
* a mapping changes -> its own elements (every element belongs to exactly one
  mapping, see :func:`wholeip.core.elements.mapping_elements`).

Nodes and the Service networks decide the cluster networks, the pod networks
and the guards for every external IP at once, yet a change to them updates the
index too (:meth:`ClusterIndex._renetwork`): the cluster networks' elements, the
external IPs inside a network that changed (found by address, not by a scan),
and the Services with endpoints inside pod networks that went away or outside
those that came.

The decisions themselves are the model's (one implementation):
:func:`build_state` *is* an index filled with every object, so the
incremental path and the full path cannot disagree on a rule; a property test
drives both with random changes and compares them. So do the elements: an external
IP's mapping is turned into elements by the same function as in the full build
(:func:`wholeip.core.elements.entry_elements`), recomputed when it changes rather
than stored.

Memory is a design constraint: the agent holds this index for every Service of the
cluster (100,000 in well under 300 MiB). One record per object, plain tuples (a
NamedTuple costs what a tuple costs), addresses as their canonical text (the very
strings the table's elements hold), no dict where a tuple does, and a value that
usually comes alone kept alone: those layouts have types of their own and the only
functions that read them in :mod:`wholeip.core.compact`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, ParamSpec, TypeVar, cast

from wholeip.core.compact import (
    NO_ENDPOINTS,
    NO_PORTS,
    AddressBook,
    Endpoint,
    OneOrMany,
    PackedUid,
    Ready,
    SlicePorts,
    add_to,
    address_of,
    all_of,
    chosen,
    discard_from,
    endpoint_count,
    endpoints,
    first_of,
    ipv4_number,
    numeric,
    one_or_many,
    pack_uid,
    pod_ips,
    ready_of,
    unpack_uid,
)
from wholeip.core.compact import ServiceKey as ServiceKey  # the agent files changes under it
from wholeip.core.delegated import DelegatedIndex
from wholeip.core.egressip import EgressIndex
from wholeip.core.elements import (
    PodFilter,
    entry_elements,
    lb_elements,
    lb_redirect_element,
    live_elements,
    network_elements,
    plain_elements,
    pod_filter,
    table_doc,
    udp_filter,
)
from wholeip.core.gcpause import gc_paused
from wholeip.core.model import (
    ClusterState,
    IPAddress,
    LbRedirect,
    Mapping1to1,
    Mode,
    ObjectRef,
    PortSpec,
    Problem,
    RawPort,
    collapse,
    normalised,
    ordinary_v4,
    refusal,
    resolve_ports,
)
from wholeip.core.objects import (
    NEWEST,
    EndpointsInfo,
    LbServiceInfo,
    RawObject,
    ServiceRead,
    SliceEndpoint,
    SliceInfo,
    SliceRead,
    created_seconds,
    namespaced_name,
    node_networks,
    own_pod_cidrs,
    parse_ip,
    parse_lb_service,
    parse_service,
    read_service,
    read_slice,
)
from wholeip.core.podnat import NodeAddresses, PodKey, PodNatIndex, node_addresses
from wholeip.core.ruleset import steer_slots
from wholeip.names import (
    API_SERVER_SERVICE,
    EGRESS_IP_ANNOTATION,
    L2_STATUS_KIND,
    METALEG_LABEL,
    PROXY_NAME_LABEL,
    TABLE,
)
from wholeip.nft.doc import Elem, TableDoc
from wholeip.settings import IPNetwork, ModelSettings

Touched = dict[str, set[Elem]]
"""Per set: the elements an update added or removed (a changed map entry: both pairs)."""

_SHAPES_MAX = 4096
"""Most distinct slice port lists kept shared (see ``ClusterIndex._shared_ports``)."""


service_key = namespaced_name
"""The key of a Service or EndpointSlice in the index."""


def _service_ref(key: ServiceKey, uid: PackedUid) -> ObjectRef:
    # Made when asked (problems, mappings): one ObjectRef per Service would cost 7 MiB at 100,000.
    return ObjectRef("Service", key[0], key[1], unpack_uid(uid))


class _Slice(NamedTuple):
    """What the index keeps of an EndpointSlice."""

    service: ServiceKey
    family: int
    ready: Ready
    """Ready endpoints inside the family's pod networks."""
    outside: Ready
    """Ready endpoints outside them (ignored, reported on the Service)."""
    ports: SlicePorts
    """((port name, protocol), pod port) pairs."""


class _View(NamedTuple):
    """A managed Service with its endpoints (one record per Service): what the index keeps
    of the parsed Service (:class:`~wholeip.core.objects.ServiceInfo`, addresses as text,
    its reference as the key it is filed under and its uid), then what its slices add
    (empty until :meth:`ClusterIndex._make_view`). It is also what an external IP's
    mapping is kept as: the pod is the view's ready endpoint of the IP's family (see
    :func:`_backend`)."""

    key: ServiceKey
    uid: PackedUid
    created: int
    """creationTimestamp in seconds (see :func:`~wholeip.core.objects.created_seconds`)."""
    mode: Mode
    allow_icmp: bool
    ext_or_exts: str | tuple[str, ...]
    """The external IPs: one as itself (nearly every Service), several as a tuple."""
    raw_ports: tuple[RawPort, ...]
    source_ranges: tuple[IPNetwork, ...]
    closed: bool
    """Source ranges listed but none valid: no outside source (see :class:`~wholeip.core.model.Mapping1to1`)."""
    ready4: Ready = NO_ENDPOINTS
    ready6: Ready = NO_ENDPOINTS
    ports: tuple[PortSpec, ...] = ()
    """What a per-port Service forwards (resolved against its slices)."""
    problems: tuple[Problem, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return _service_ref(self.key, self.uid)

    @property
    def exts(self) -> tuple[str, ...]:
        return (self.ext_or_exts,) if isinstance(self.ext_or_exts, str) else self.ext_or_exts

    @property
    def age_key(self) -> tuple[int, str, str]:
        return (self.created, *self.key)


_OWN_FIELDS = _View._fields.index("ready4")
"""How many of a view's fields the Service says on its own (the rest its slices add)."""


def _backend(view: _View, ip: str) -> Endpoint:
    """The (pod IP, node) external IP ``ip`` maps to when ``view`` won it: its only ready
    endpoint of the family, or the lowest address of several."""
    return chosen(view.ready4 if _version(ip) == 4 else view.ready6)


class _PlainSlice(NamedTuple):
    """A slice that can make a plain mapping (see :meth:`ClusterIndex.fill`), as it waits
    for its Service."""

    skey: str
    family: int
    ready: Ready
    """Its one ready endpoint, inside the pod networks."""
    ports: SlicePorts
    every: EndpointsInfo

    def read(self) -> SliceRead:
        """The slice as :func:`~wholeip.core.objects.read_slice` read it."""
        pod, node = chosen(self.ready)
        return SliceInfo(self.every.service, self.family, {pod: node}, dict(self.ports), ()), self.every


_Plains = tuple[_PlainSlice, ...]
"""The plain slices of one Service so far: at most one of each family, in the order they came."""


def _as_kept(every: EndpointsInfo, ready: int, ports: SlicePorts) -> bool:
    """Whether the delegated Services read of a slice no more than the index keeps of it:
    its ``ready`` ready endpoints, each serving and not terminating, and its ``ports``, every
    number valid. (Every ready endpoint is among ``every``'s, under the same address; the
    same count, all ready, means the same endpoints on the same nodes.) Then
    :meth:`ClusterIndex._endpoints_info` makes it again rather than keeping it."""
    return (
        len(every.endpoints) == ready
        and every.ports == tuple(sorted(ports))
        and all(e.ready and e.serving and not e.terminating for e in every.endpoints)
    )


def _covered(plains: _Plains, read: ServiceRead) -> bool:
    """Whether every slice so far is of a family of the Service's external IPs."""
    if len(plains) == 1 and len(read.external_ips) == 1:  # (nearly always)
        return plains[0].family == _version(read.external_ips[0])
    families = {_version(ip) for ip in read.external_ips}
    return all(ps.family in families for ps in plains)


def _plain_read(key: ServiceKey, objs: Sequence[RawObject], settings: ModelSettings) -> ServiceRead | None:
    """The Service under ``key`` as a plain whole-IP mapping reads it: one object with one
    external IP, or two of different families (dual-stack), nothing to report, and nobody
    but the 1:1 mappings reading it (no egress selection, no proxy-name label of ours, not
    the API server's); None otherwise."""
    if len(objs) != 1 or key == API_SERVER_SERVICE:
        return None
    read = read_service(objs[0], settings)
    if not read or read.mode is not Mode.WHOLE_IP:
        return None
    exts = read.external_ips
    if len(exts) != 1 and (len(exts) != 2 or _version(exts[0]) == _version(exts[1])):
        return None
    meta = objs[0]["metadata"]  # (a dict with a name: read_service read it)
    annotations, labels = meta.get("annotations"), meta.get("labels")
    if isinstance(annotations, dict) and EGRESS_IP_ANNOTATION in annotations:
        return None
    if isinstance(labels, dict) and (
        METALEG_LABEL in labels or (settings.proxy_name and labels.get(PROXY_NAME_LABEL) == settings.proxy_name)
    ):
        return None
    return read


_PLAIN_AT_POD = pod_filter([udp_filter(Mode.WHOLE_IP, (), (), closed=False)])
"""The filter at the pod's node of a pod whose one mapping is a plain whole IP."""


class _Side(NamedTuple):
    """An external IP's mapping, before or after an update, as its elements see it."""

    view: _View
    egress: bool
    """The mapping is its pod's egress."""
    at_pod: PodFilter | None
    """The filter the pod's node applies for every mapping of the pod, if any."""


def _slice_ports(slices: Sequence[_Slice], ready: Mapping[int, Ready]) -> dict[tuple[str, str], int]:
    """The pod ports a per-port Service's ports resolve with: those of the slice that lists
    the backend it forwards to (the IPv4 one, else the IPv6 one; the last such slice, as for
    its endpoint). During a rolling update a named ``targetPort`` can resolve to other
    numbers in another slice's pods, and only the chosen pod's own numbers say what reaches
    it. Without a ready endpoint, or when that slice lists no ports: every slice's ports,
    a later slice's winning."""
    for family in (4, 6):
        if ready[family]:
            pod = chosen(ready[family])[0]
            mine = (sl.ports for sl in reversed(slices) if sl.family == family and pod in pod_ips(sl.ready))
            own = next(mine, ())
            if own:
                return dict(own)
            break
    merged: dict[tuple[str, str], int] = {}
    for sl in slices:
        merged.update(sl.ports)
    return merged


def _shape(ip: str, side: _Side) -> tuple[object, ...]:
    """Everything the elements of ``ip``'s mapping depend on."""
    view = side.view
    return (
        *_backend(view, ip),
        side.egress,
        side.at_pod,
        view.mode,
        view.allow_icmp,
        view.ports,
        view.source_ranges,
        view.closed,
    )


def _version(address: str) -> int:
    return 6 if ":" in address else 4


class _Networks(NamedTuple):
    """What the Nodes and the Service networks decide for the whole index."""

    cluster: tuple[IPNetwork, ...]
    """The cluster networks (the ``cluster`` sets)."""
    guard: tuple[IPNetwork, ...]
    """Where no external IP may lie (see :func:`~wholeip.core.model.refusal`)."""
    pod: dict[int, tuple[IPNetwork, ...]]
    """Where a backend may live, per family (empty: that family's pod networks are unknown)."""
    node_ips: frozenset[IPAddress]
    problems: tuple[Problem, ...]
    local_pods: tuple[IPNetwork, ...]
    """This node's pod CIDRs, with ``--lb-to-clusterip`` (the pods it redirects)."""
    pod4: tuple[tuple[int, int], ...]
    """``pod[4]`` as (network number, mask) pairs: a dotted address is tested without an
    address object."""
    guard4: tuple[tuple[int, int], ...]
    """The IPv4 networks of ``guard``, likewise."""
    node4: frozenset[int]
    """The IPv4 addresses of ``node_ips``, as numbers."""
    allowed4: tuple[tuple[int, int], ...]
    """The IPv4 networks of ``--allowed-external-cidrs``, as ``pod4``."""


def _v4_ranges(networks: Iterable[IPNetwork]) -> tuple[tuple[int, int], ...]:
    return tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)


def _v4_numbers(addresses: Iterable[IPAddress]) -> frozenset[int]:
    return frozenset(int(ip) for ip in addresses if ip.version == 4)


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address lies in one of the networks (parsed once, not once a network:
    a cluster has a pod network per Node)."""
    return any(address in net for net in networks)


def _inside(number: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    """Whether the IPv4 address with this number lies in one of these :func:`_v4_ranges`."""
    return any(number & mask == base for base, mask in ranges)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _weakly(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """A bound method of the index, held without holding the index. A sub-index's callback
    into its parent made the two a reference cycle, which only the cyclic collector frees;
    the agent freezes what it keeps (``gc.freeze``, see gcpause), so an index replaced by a
    rebuild (a relist, a quarantine scan) was never freed: a whole index leaked each time.
    Without cycles, reference counting frees it, frozen or not (tests/unit/test_index.py)."""
    ref = weakref.WeakMethod(method)

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = ref()
        assert bound is not None, "the index is gone"
        return bound(*args, **kwargs)

    return call


def _unique_nodes(nodes: Iterable[RawObject]) -> tuple[RawObject, ...]:
    """The Nodes, one per name. Two under one name (a cluster file can hold both; an
    informer's cache never does): the first in content order, so that input order does not
    decide this node's podnat address or the egress steering's next hop. Nameless ones stay
    (nothing says they are one)."""
    nodes = tuple(nodes)
    names = [namespaced_name(node)[1] for node in nodes]
    named = [name for name in names if name]
    if len(set(named)) == len(named):
        return nodes  # (always, from an informer)
    kept: dict[str, RawObject] = {}
    for node, name in sorted(zip(nodes, names, strict=True), key=lambda pair: repr(pair[0])):
        if name:
            kept.setdefault(name, node)
    return tuple(node for node, name in zip(nodes, names, strict=True) if not name or kept[name] is node)


def _networks(nodes: Sequence[RawObject], settings: ModelSettings, node_name: str) -> _Networks:
    problems: list[Problem] = []
    pod_cidrs, node_ips = node_networks(nodes, problems)
    pod_nets = collapse(settings.cluster_cidrs or pod_cidrs)
    local: tuple[IPNetwork, ...] = ()
    if settings.lb_to_clusterip:
        local = collapse(own_pod_cidrs(nodes, node_name))
        if not local:
            problems.append(
                Problem(
                    ObjectRef("Node", "", node_name),
                    "NoPodCIDR",
                    f"--lb-to-clusterip: Node {node_name} has no spec.podCIDRs, so its pods are not"
                    " redirected to ClusterIPs (its own processes are)",
                )
            )
    guard = collapse([*settings.cluster_cidrs, *pod_cidrs, *settings.service_cidrs])
    return _Networks(
        cluster=collapse(
            [
                *(settings.cluster_cidrs or pod_cidrs),
                *settings.service_cidrs,
                *(ipaddress.ip_network(ip) for ip in node_ips),
            ]
        ),
        guard=guard,
        pod={v: tuple(n for n in pod_nets if n.version == v) for v in (4, 6)},
        node_ips=frozenset(node_ips),
        problems=tuple(problems),
        local_pods=local,
        pod4=_v4_ranges(pod_nets),
        guard4=_v4_ranges(guard),
        node4=_v4_numbers(node_ips),
        allowed4=_v4_ranges(settings.allowed_external_cidrs),
    )


_CARRIERS = (
    ipaddress.IPv6Network("::ffff:0:0/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)
"""Where an IPv6 address spells an IPv4 one (:func:`~wholeip.core.model.embedded_ipv4`):
its guard answers for that IPv4 address too."""


class ClusterIndex:
    """The model and the elements of one node's table, updated object by object."""

    def __init__(
        self,
        *,
        settings: ModelSettings,
        node_name: str,
        nodes: Iterable[RawObject],
        table: str = TABLE,
    ) -> None:
        nodes = _unique_nodes(nodes)  # read twice: the cluster networks, and this node's pod CIDRs
        self.settings = settings
        self.node_name = node_name
        self.table = table
        self._nodes = nodes
        self._net = _networks(nodes, settings, node_name)
        """What the Nodes and the Service networks decide (see :meth:`_renetwork`)."""
        self._configured_api = {
            normalised(ip): "the API server address the agent is configured with" for ip in settings.control_plane_ips
        }
        self._api_slices: dict[str, tuple[str, ...]] = {}
        """Slices of the ``default/kubernetes`` Service -> their addresses (ready or not,
        inside the pod networks or not): the API server as the cluster publishes it."""
        self._control_plane: dict[IPAddress, str] = dict(self._configured_api)
        """Where this node reaches the API server: never an external IP (see :func:`refusal`)."""
        self._control4 = _v4_numbers(self._control_plane)
        """The IPv4 addresses of ``_control_plane``, as numbers (see :meth:`_refusal`)."""
        self._parse_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        # EndpointSlices, and which ones each Service has (one key, or a list of several).
        self._slices: dict[str, _Slice] = {}
        self._endpoints: AddressBook[str] = AddressBook()
        """Ready endpoint address -> the keys of the slices that list it (a Node change
        re-reads the endpoints inside the pod networks it took away)."""
        self._outside: set[str] = set()
        """Keys of the slices with endpoints outside the pod networks (few: a mistake)."""
        self._slices_of: dict[ServiceKey, OneOrMany[str]] = {}
        self._every: dict[str, EndpointsInfo] = {}
        """Slices whose every endpoint, as delegated Services read them, is more than the
        slice's record says (an endpoint not ready, not serving or terminating; a port out of range):
        kept as read. Any other slice's is made again when asked (:meth:`_endpoints_infos`),
        which saves a second record of every slice of the cluster."""
        self._slice_problems: dict[str, tuple[Problem, ...]] = {}
        self._port_shapes: dict[SlicePorts, SlicePorts] = {}
        # Managed Services with their endpoints, and who claims which external IP.
        self._views: dict[ServiceKey, _View] = {}
        self._view_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        self._claims: dict[str, OneOrMany[ServiceKey]] = {}
        self._claimed: AddressBook[str] = AddressBook()
        """The external IPs of ``_claims``, by network (a Node change re-resolves those
        inside the networks it changed)."""
        self._ip_problems: dict[str, tuple[Problem, ...]] = {}
        self._winners: dict[str, _View] = {}
        """External IP -> the Service that won it (the mapping, see :func:`_backend`)."""
        self._pods: dict[str, OneOrMany[str]] = {}
        """Pod IP -> the external IPs mapped to it, the one it leaves with first."""
        self._pod_problems: dict[str, tuple[Problem, ...]] = {}
        self.elements: dict[str, set[Elem]] = live_elements()
        """Live sets: the table's elements as of the last update (read only outside)."""
        for name, elem in network_elements(self._net.cluster):
            self.elements[name].add(elem)
        self.podnat = PodNatIndex(
            settings=settings.podnat,
            node_name=node_name,
            nodes=nodes,
            elements=self.elements,
            managed=_weakly(self._is_backend),
            guard=self._net.guard,
            node_port=_weakly(self._node_port_owner),
            external=_weakly(self._claimant),
        )
        """Ports this node's pods publish on its address (the podnat annotation)."""
        self.egress = EgressIndex(
            node_name=node_name,
            nodes=nodes,
            elements=self.elements,
            endpoints=_weakly(self._service_endpoints),
            whole_ip=_weakly(self._is_backend),
            external=_weakly(self._is_mapped),
            slot_capacity=steer_slots(settings.egress_mark_mask),
        )
        """Egress Services: their holders and members (the egressIP annotation)."""
        self.delegated = DelegatedIndex(
            settings=settings, node_name=node_name, elements=self.elements, slices_of=_weakly(self._endpoints_infos)
        )
        """The ClusterIPs and NodePorts of Services labelled for us."""
        self._init_lb()

    @property
    def cluster_networks(self) -> tuple[IPNetwork, ...]:
        return self._net.cluster

    @property
    def local_pod_networks(self) -> tuple[IPNetwork, ...]:
        """This node's pod CIDRs, with ``--lb-to-clusterip`` (the pods it redirects)."""
        return self._net.local_pods

    # ------------------------------------------------------------------ input

    def update(
        self,
        *,
        services: Mapping[ServiceKey, Sequence[RawObject]] = {},
        slices: Mapping[str, RawObject | None] = {},
        pod_objects: Mapping[PodKey, RawObject | None] = {},
        l2_statuses: Mapping[str, RawObject | None] = {},
        nodes: Iterable[RawObject] | None = None,
        settings: ModelSettings | None = None,
        reads: Mapping[ServiceKey, ServiceRead] = {},
        read_slices: Mapping[str, SliceRead | None] = {},
    ) -> Touched:
        """Apply changed objects; return the elements that changed.

        ``services``: key -> the Service objects now under that key (none: deleted;
        more than one only in a flat list with duplicates). ``slices``: any unique
        slice key -> the slice now (None: deleted). ``pod_objects``: (namespace, name) -> the
        Pod now (None: deleted), for the ports they publish on this node's address.
        ``nodes``: every Node now, when any changed; ``settings``: the settings now, when the
        Service networks changed (nothing else of them may: ValueError). ``reads`` and
        ``read_slices``: Services and slices already read (:meth:`fill`): a Service as
        :func:`_plain_read` gives it (one object, which no other reader selects), a slice
        as :func:`~wholeip.core.objects.read_slice` gives it.
        """
        touched: Touched = {}
        if reads:
            # Only the 1:1 mappings read these: to the others, no Service of theirs.
            services = {**services, **dict.fromkeys(reads, ())}
        dirty: set[ServiceKey] = set(services)
        affected: set[str] = set()
        readdress = None
        if nodes is not None or settings is not None:
            readdress = self._renetwork(
                self._nodes if nodes is None else _unique_nodes(nodes),
                settings or self.settings,
                dirty,
                affected,
                touched,
            )
        # The Services first: a new slice is filed under its Service's very key object.
        parsed: dict[ServiceKey, _View | None] = {
            key: self._view_of_read(reads[key]) if key in reads else self._put_service(key, objs)
            for key, objs in services.items()
        }
        api_before = set(self._control_plane)
        sliced: set[ServiceKey] = set()
        """The Services whose slices changed (for the delegated Services)."""
        for skey, both in self._read_all(slices, read_slices):
            old = self._slices.pop(skey, None)
            self._slice_problems.pop(skey, None)
            self._api_slices.pop(skey, None)
            self._every.pop(skey, None)
            if old is not None:
                self._unfile(skey, old, affected)
                discard_from(self._slices_of, old.service, skey)
                sliced.add(old.service)
            new = self._ingest_slice(skey, both, parsed) if both is not None else None
            if new is not None and new.service == API_SERVER_SERVICE:
                self._api_slices[skey] = (*pod_ips(new.ready), *pod_ips(new.outside))
            if new is not None:
                self._slices[skey] = new
                self._file(skey, new, affected)
                add_to(self._slices_of, new.service, skey)
                sliced.add(new.service)
        dirty |= sliced
        if slices or read_slices:
            # The API server's published addresses decide the guard of those addresses only.
            self._control_plane = dict(self._configured_api)
            for addresses in self._api_slices.values():
                for text in addresses:
                    self._control_plane.setdefault(
                        normalised(address_of(text)), "an endpoint of the Service default/kubernetes"
                    )
            self._control4 = _v4_numbers(self._control_plane)
            affected.update(str(ip) for ip in api_before ^ set(self._control_plane))
        for key in dirty:
            old_view = self._views.pop(key, None)
            self._view_problems.pop(key, None)
            svc = parsed.get(key, old_view)
            if old_view is not None:
                for ip in old_view.exts:
                    discard_from(self._claims, ip, key)
                affected.update(old_view.exts)
            if svc is not None:
                view = self._make_view(svc)
                self._views[view.key] = view
                if view.problems:
                    self._view_problems[key] = view.problems
                for ip in svc.exts:
                    add_to(self._claims, ip, view.key)
                self._share_key(view.key)
                affected.update(svc.exts)
        for ip in affected:
            if ip in self._claims:
                self._claimed.add(ip, ip)
            else:
                self._claimed.discard(ip, ip)
        # Resolve the external IPs, remembering how each one's mapping looked before.
        before: dict[str, _View | None] = {}
        pods: set[str] = set()
        gained: dict[str, set[str]] = {}
        for ip in affected:
            was = before[ip] = self._winners.pop(ip, None)
            now = self._resolve_ip(ip)
            if was is not None:
                pods.add(_backend(was, ip)[0])
            if now is not None:
                self._winners[ip] = now
                pod = _backend(now, ip)[0]
                gained.setdefault(pod, set()).add(ip)
                pods.add(pod)

        def old_winner(ext: str) -> _View | None:
            return before[ext] if ext in before else self._winners.get(ext)

        egress_before = {pod: first_of(self._pods.get(pod)) for pod in pods}
        at_pod_before = {pod: self._at_pod(pod, old_winner) for pod in pods}
        refresh = set(affected)
        for pod in pods:
            refresh.update(self._resolve_egress(pod, gained.get(pod, set())))
        at_pod_now = {pod: self._at_pod(pod, self._winners.get) for pod in pods}
        # (mapping, is the pod's egress, its pod's node filters for it): every pod here is in
        # ``pods`` (an external IP in ``refresh`` was affected, or is one of those pods').
        changed: list[tuple[str, _Side | None, _Side | None]] = []
        for ip in refresh:
            was_side = now_side = None
            if (was := old_winner(ip)) is not None:
                pod = _backend(was, ip)[0]
                was_side = _Side(was, egress_before[pod] == ip, at_pod_before[pod])
            if (now := self._winners.get(ip)) is not None:
                pod = _backend(now, ip)[0]
                now_side = _Side(now, first_of(self._pods.get(pod)) == ip, at_pod_now[pod])
            if (was_side and _shape(ip, was_side)) != (now_side and _shape(ip, now_side)):
                changed.append((ip, was_side, now_side))
        # Every removal before any addition: while a pod's egress moves from one mapping
        # to another, both contribute the same self-hairpin element.
        for ip, was_side, _ in changed:
            # A mapping's elements are a pure function of it: recomputed, not stored.
            for name, elem in self._elements_of(ip, was_side) if was_side is not None else ():
                self.elements[name].discard(elem)
                touched.setdefault(name, set()).add(elem)
        for ip, _, now_side in changed:
            for name, elem in self._elements_of(ip, now_side) if now_side is not None else ():
                self.elements[name].add(elem)
                into = touched.get(name)
                if into is None:  # (not setdefault: a cold start adds a million elements here)
                    into = touched[name] = set()
                into.add(elem)
        if self.settings.lb_to_clusterip and services:
            # A Service we map 1:1 is left out: its external IPs work in the cluster already.
            self._update_lb(
                {key: self._lb_info_of(objs) if parsed.get(key) is None else None for key, objs in services.items()},
                touched,
            )
        moved: set[tuple[str, int]] = set()
        if services or sliced:
            moved = self.delegated.update(services, sliced, touched)
        # A pod may publish ports only while it is no whole-IP backend, and not on a delegated
        # Service's NodePort: recheck those whose mappings changed, and the ports that moved.
        if pod_objects or readdress is not None or ((pods or moved or affected) and self.podnat.has_pods):
            self.podnat.update(pod_objects, touched, recheck=pods, addresses=readdress, ports=moved, externals=affected)
        if nodes is not None:
            self.egress.set_nodes(self._nodes, touched)
        self.egress.update(
            touched, services=services, endpoints_of=dirty, statuses=l2_statuses, pods=pods, external_ips=affected
        )
        return touched

    def fill(
        self,
        services: Iterable[tuple[ServiceKey, Sequence[RawObject]]],
        slices: Iterable[tuple[str, RawObject]],
        *,
        batch: int = 2000,
    ) -> None:
        """Load Services (key -> its objects, each key once) and slices (unique keys) into
        a new index: the index :meth:`update` would make of them, in a fraction of its time
        (a :class:`Filler` given every slice, then every Service)."""
        filler = Filler(self, batch=batch)
        filler.slices(slices)
        filler.slices_done()
        filler.services(services)
        filler.finish()

    def _plain_slice(self, skey: str, both: SliceRead) -> _PlainSlice | None:
        """The slice as a plain mapping takes it: one ready endpoint, inside the pod
        networks, nothing to report; None otherwise."""
        info, every = both
        if info.problems or len(info.ready) != 1 or info.service == API_SERVER_SERVICE:
            return None
        ready, outside = self._split(info.family, info.ready.items())
        if outside:
            return None
        return _PlainSlice(skey, info.family, ready, self._shared_ports(tuple(info.ports.items())), every)

    def _put_plain(self, read: ServiceRead, plains: _Plains) -> bool:
        """Write the plain mappings of :meth:`fill` as :meth:`update` would: each external
        IP to the endpoint of the one slice of its family (``plains``, in the order of the
        IPs), if no IP is anybody's claim, no pod anybody's backend and no IP refused;
        False otherwise (nothing written)."""
        exts = read.external_ips
        claims = self._claims
        for ip, ps in zip(exts, plains, strict=True):
            pod = ps.ready[0]
            if ip in claims or pod in self._pods or pod in claims or pod in exts or self._refusal(ip) is not None:
                return False  # (a pod at an external IP's address: refused by update(), see _refusal)
        # What _make_view makes of it with these slices: their endpoints, no ports, no problems.
        ready4 = ready6 = NO_ENDPOINTS
        for ps in plains:
            if ps.family == 4:
                ready4 = ps.ready
            else:
                ready6 = ps.ready
        view = self._view_of_read(read, ready4=ready4, ready6=ready6)
        key = view.key
        self._views[key] = view
        self._slices_of[key] = one_or_many([ps.skey for ps in plains])
        elements = self.elements
        for ip, ps in zip(exts, plains, strict=True):
            pod, node = cast(tuple[str, str | None], ps.ready)  # (its one endpoint)
            self._slices[ps.skey] = _Slice(key, ps.family, ps.ready, NO_ENDPOINTS, ps.ports)
            self._endpoints.add(pod, ps.skey)
            if not _as_kept(ps.every, 1, ps.ports):
                self._every[ps.skey] = ps.every
            self._claims[ip] = key
            self._claimed.add(ip, ip)
            self._winners[ip] = view
            self._pods[pod] = ip
            ext_n = ipv4_number(ip)
            pod_n = ipv4_number(pod) if ext_n is not None else None
            if ext_n is not None and pod_n is not None:
                elems = plain_elements(ip, pod, ext_n, pod_n, here=node == self.node_name)
            else:
                elems = self._elements_of(ip, _Side(view, True, _PLAIN_AT_POD))
            for name, elem in elems:
                elements[name].add(elem)
        return True

    def _is_backend(self, pod: str) -> bool:
        """Whether a pod IP is the backend of a 1:1 mapping."""
        return pod in self._pods

    def _is_mapped(self, ip: str) -> bool:
        """Whether an external IP is mapped (some Service won it)."""
        return ip in self._winners

    def _node_port_owner(self, protocol: str, port: int) -> str | None:
        return self.delegated.node_port_owner(protocol, port)

    def _claimant(self, ip: str) -> str | None:
        """The Service (the oldest, if several) that claims ``ip`` (canonical text) as its
        external IP, if one does: for podnat, where no pod may publish a port."""
        claims = self._claims.get(ip)
        if claims is None:
            return None
        key = min(all_of(claims), key=lambda k: self._views[k].age_key)
        return f"Service {key[0]}/{key[1]}"

    def _service_endpoints(self, key: ServiceKey) -> dict[int, list[tuple[str, str | None]]]:
        """A Service's ready endpoints per family, inside the pod networks (a later slice's
        entry for the same address wins)."""
        merged: dict[int, dict[str, str | None]] = {4: {}, 6: {}}
        for skey in sorted(all_of(self._slices_of.get(key))):
            sl = self._slices[skey]
            merged[sl.family].update(endpoints(sl.ready))
        return {v: list(d.items()) for v, d in merged.items()}

    def _file(self, skey: str, sl: _Slice, affected: set[str]) -> None:
        """File the slice's ready endpoints; into ``affected``: those that are external IPs
        (a pod's address is none: :meth:`_refusal`)."""
        claims = self._claims
        for address in pod_ips(sl.ready):
            self._endpoints.add(address, skey)
            if address in claims:
                affected.add(address)
        if sl.outside:
            self._outside.add(skey)

    def _unfile(self, skey: str, sl: _Slice, affected: set[str]) -> None:
        claims = self._claims
        for address in pod_ips(sl.ready):
            self._endpoints.discard(address, skey)
            if address in claims:
                affected.add(address)
        self._outside.discard(skey)

    def _renetwork(
        self,
        nodes: tuple[RawObject, ...],
        settings: ModelSettings,
        dirty: set[ServiceKey],
        affected: set[str],
        touched: Touched,
    ) -> NodeAddresses | None:
        """The Nodes or the Service networks changed: recompute what they decide and find
        what that can change, nothing more (at 100,000 Services a Node joining is a few
        elements, not a rebuild). Into ``dirty``: the Services whose endpoints moved in or
        out of the pod networks (or whose problem names those networks); into ``affected``:
        the external IPs whose guard may answer otherwise (those inside a network that
        changed, a Node address that came or went, or spelling an IPv4 address in IPv6).
        Returns this node's addresses for podnat when they changed."""
        if dataclasses.replace(settings, service_cidrs=self.settings.service_cidrs) != self.settings:
            raise ValueError("only the Service networks of the settings may change in an update")
        old = self._net
        new = self._net = _networks(nodes, settings, self.node_name)
        self.settings = self.delegated.settings = settings
        self._nodes = nodes
        before = {*network_elements(old.cluster), *lb_elements((), old.local_pods)}
        after = {*network_elements(new.cluster), *lb_elements((), new.local_pods)}
        for add, items in ((False, before - after), (True, after - before)):
            for name, elem in items:
                (self.elements[name].add if add else self.elements[name].discard)(elem)
                touched.setdefault(name, set()).add(elem)
        # The guards: refusal() reads the guard networks (naming the one an address is in)
        # and the Node addresses, of the address or of the IPv4 address it spells.
        regions: list[IPNetwork] = [*(set(old.guard) ^ set(new.guard))]
        regions += (ipaddress.ip_network(ip) for ip in old.node_ips ^ new.node_ips)
        if regions:
            for net in (*regions, *_CARRIERS):
                affected.update(address for address, _ in self._claimed.within(net))
            if self.settings.lb_to_clusterip:
                # The LoadBalancer IPs filed by network: those inside a region (or spelling an
                # IPv4 address in IPv6), not every unmanaged LoadBalancer Service of the cluster.
                near = {key for net in (*regions, *_CARRIERS) for _, keys in self._lb_ips.within(net) for key in keys}
                infos = {key: self._lb_info[key] for key in near}
                self._update_lb(
                    {
                        key: info
                        for key, info in infos.items()
                        if any(x in net for ip in info.lb_ips for x in {ip, normalised(ip)} for net in regions)
                    },
                    touched,
                )
        # The pod networks: which endpoints count, and the problem that names them.
        for family in (4, 6):
            if old.pod[family] == new.pod[family]:
                continue
            resplit = {k for k in self._outside if self._slices[k].family == family}
            if not old.pod[family]:  # every endpoint counted: now some may not
                resplit.update(k for k, sl in self._slices.items() if sl.family == family)
            for net in set(old.pod[family]) - set(new.pod[family]):
                for _, skeys in self._endpoints.within(net):
                    resplit.update(skeys)
            for skey in resplit:
                sl = self._slices[skey]
                self._unfile(skey, sl, affected)
                ready, outside = self._split(family, (*endpoints(sl.ready), *endpoints(sl.outside)))
                sl = self._slices[skey] = sl._replace(ready=ready, outside=outside)
                self._file(skey, sl, affected)
                dirty.add(sl.service)
        addresses = node_addresses(nodes, self.node_name, settings.podnat, new.guard)
        return addresses if addresses != self.podnat.addresses else None

    def _at_pod(self, pod: str, winner: Callable[[str], _View | None]) -> PodFilter | None:
        """The filter the pod's node applies for every mapping of the pod (see
        :func:`wholeip.core.elements.pod_filter`); ``winner``: the mapping of an external IP
        (now, or as it was before an update)."""
        if pod not in self._pods:
            return None  # no mapping: nothing to filter
        filters = []
        for ext in all_of(self._pods.get(pod)):
            w = winner(ext)
            if w is not None:
                filters.append(udp_filter(w.mode, w.ports, w.source_ranges, closed=w.closed))
        return pod_filter(filters)

    def _share_key(self, key: ServiceKey) -> None:
        """File the Service's slices under the very key object its view holds (slices
        arrive first at start-up, each with a key tuple and name string of its own)."""
        entry = self._slices_of.get(key)
        if entry is None or (isinstance(entry, str) and self._slices[entry].service is key):
            return  # (the usual cases: no slice, or one filed so already)
        skeys = all_of(entry)
        if all(self._slices[skey].service is key for skey in skeys):
            return
        self._slices_of[key] = self._slices_of.pop(key)
        for skey in skeys:
            self._slices[skey] = self._slices[skey]._replace(service=key)

    def compact(self) -> None:
        """Drop the dicts' deleted slots after a bulk load (re-filed keys leave them)."""
        self._slices_of = dict(self._slices_of)

    def _elements_of(self, ip: str, side: _Side) -> list[tuple[str, Elem]]:
        win = side.view
        pod, node = _backend(win, ip)
        return entry_elements(
            ip,
            pod,
            egress=side.egress,
            pod_node=node,
            node_name=self.node_name,
            mode=win.mode,
            allow_icmp=win.allow_icmp,
            ports=win.ports,
            source_ranges=win.source_ranges,
            closed=win.closed,
            at_pod=side.at_pod,
        )

    @staticmethod
    def _read_all(
        slices: Mapping[str, RawObject | None], read: Mapping[str, SliceRead | None]
    ) -> Iterator[tuple[str, SliceRead | None]]:
        """Every changed slice as :func:`~wholeip.core.objects.read_slice` reads it (None:
        deleted, or nothing to read)."""
        for skey, obj in slices.items():
            yield skey, read_slice(obj) if obj is not None else None
        yield from read.items()

    def _ingest_slice(self, skey: str, both: SliceRead, parsed: Mapping[ServiceKey, _View | None]) -> _Slice:
        """The slice as the index keeps it (and, when that is not all they read, as the
        delegated Services read it). ``parsed``: the Services of the same update (the slice
        is filed under its Service's very key object, one per Service)."""
        info, every = both
        if info.problems:
            self._slice_problems[skey] = info.problems
        ports = tuple(info.ports.items())
        if not _as_kept(every, len(info.ready), ports):
            self._every[skey] = every
        ready, outside = self._split(info.family, info.ready.items())
        view = parsed.get(info.service) or self._views.get(info.service)
        return _Slice(
            view.key if view is not None else (sys.intern(info.service[0]), info.service[1]),
            info.family,
            ready,
            outside,
            self._shared_ports(ports),
        )

    def _endpoints_infos(self, key: ServiceKey) -> list[EndpointsInfo]:
        """A Service's slices as the delegated Services read them, in the order of their keys."""
        return [self._endpoints_info(skey) for skey in sorted(all_of(self._slices_of.get(key)))]

    def _endpoints_info(self, skey: str) -> EndpointsInfo:
        """A slice as :func:`~wholeip.core.objects.parse_endpoints` reads it (its endpoints
        in another order, perhaps)."""
        every = self._every.get(skey)
        if every is not None:
            return every
        sl = self._slices[skey]
        found = (*endpoints(sl.ready), *endpoints(sl.outside))
        return EndpointsInfo(
            sl.service,
            sl.family,
            tuple(SliceEndpoint(address, node, True, True, False) for address, node in found),
            tuple(sorted(sl.ports)),
        )

    def _split(self, family: int, found: Iterable[Endpoint]) -> tuple[Ready, Ready]:
        """Ready endpoints (address, node) inside the family's pod networks, and those
        outside them."""
        nets = self._net.pod[family]
        ready: list[Endpoint] = []
        outside: list[Endpoint] = []
        for address, node in found:
            node = sys.intern(node) if node is not None else None
            number = ipv4_number(address) if family == 4 else None
            if number is not None:
                inside = not nets or _inside(number, self._net.pod4)
            else:
                inside = not nets or _within(address_of(address), nets)
            if not inside:
                # A hand-written EndpointSlice must not point a whole IP at another
                # tenant's address or a node (the CVE-2021-25740 pattern).
                outside.append((address, node))
            else:
                ready.append((address, node))
        return ready_of(ready), ready_of(outside) if outside else NO_ENDPOINTS

    def _shared_ports(self, ports: SlicePorts) -> SlicePorts:
        # Most slices list the same few ports: keep one copy of each list (bounded).
        if not ports:
            return NO_PORTS
        shared = self._port_shapes.get(ports)
        if shared is None:
            if len(self._port_shapes) >= _SHAPES_MAX:
                self._port_shapes.clear()
            shared = self._port_shapes[ports] = ports
        return shared

    def _put_service(self, key: ServiceKey, objs: Sequence[RawObject]) -> _View | None:
        if len(objs) == 1:
            read = read_service(objs[0], self.settings)
            if read is None:
                self._parse_problems.pop(key, None)
                return None
            if read is not False:
                return self._view_of_read(read)
        problems: list[Problem] = []
        parsed = [p for p in (parse_service(o, self.settings, problems) for o in objs) if p is not None]
        if len(parsed) > 1:
            # Same-age duplicates (a flat list holding one Service twice): content decides, not input order.
            parsed.sort(key=lambda s: (s.age_key, s.ref.uid, repr(s)))
        for dup in parsed[1:]:
            problems.append(
                Problem(dup.ref, "DuplicateObject", "the same Service appears twice; the first one is used")
            )
        if problems:
            self._parse_problems[key] = tuple(problems)
        else:
            self._parse_problems.pop(key, None)
        if not parsed:
            return None
        info = parsed[0]
        exts = tuple(map(str, info.external_ips))
        return _View(
            key=(sys.intern(info.ref.namespace), info.ref.name),
            uid=pack_uid(info.ref.uid),
            created=created_seconds(info.created),
            mode=info.mode,
            allow_icmp=info.allow_icmp,
            ext_or_exts=exts[0] if len(exts) == 1 else exts,
            raw_ports=info.ports,
            source_ranges=info.source_ranges,
            closed=info.closed,
        )

    def _view_of_read(self, read: ServiceRead, *, ready4: Ready = NO_ENDPOINTS, ready6: Ready = NO_ENDPOINTS) -> _View:
        """The view of a Service :func:`~wholeip.core.objects.read_service` read (nothing to
        report), before its slices (``ready4``, ``ready6``: or with the one endpoint of each
        family a plain mapping's slices give it, see :meth:`_put_plain`)."""
        self._parse_problems.pop((read.namespace, read.name), None)
        exts = read.external_ips
        return _View(
            (sys.intern(read.namespace), read.name),
            pack_uid(read.uid),
            created_seconds(read.created),
            read.mode,
            read.allow_icmp,
            exts[0] if len(exts) == 1 else exts,
            read.ports,
            (),
            False,
            ready4,
            ready6,
        )

    def _make_view(self, svc: _View) -> _View:
        ready: dict[int, Ready] = {4: NO_ENDPOINTS, 6: NO_ENDPOINTS}
        outside: dict[int, set[str]] = {}
        merged: dict[int, dict[str, str | None]] = {}
        skeys = self._slices_of.get(svc.key)
        if skeys is None:
            slices = []
        elif isinstance(skeys, list):
            slices = [self._slices[skey] for skey in sorted(skeys)]
        else:
            slices = [self._slices[skeys]]
        for sl in slices:
            if sl.outside:
                outside.setdefault(sl.family, set()).update(pod_ips(sl.outside))
            if not ready[sl.family]:
                # One slice per family (the usual case): share its endpoints, copy nothing.
                ready[sl.family] = sl.ready
            elif sl.ready:
                # Several: a later slice's entry for the same address wins.
                into = merged.setdefault(sl.family, dict(endpoints(ready[sl.family])))
                into.update(endpoints(sl.ready))
                ready[sl.family] = ready_of(into.items())
        problems: list[Problem] = []
        for family in (4, 6) if outside else ():
            nets = self._net.pod[family]
            problems += [
                Problem(
                    svc.ref,
                    "EndpointOutsidePodNetwork",
                    f"endpoint {a} lies outside the pod networks ({', '.join(map(str, nets))}); ignored",
                )
                for a in sorted(outside.get(family, set()) - set(pod_ips(ready[family])), key=numeric)
            ]
        if not svc.exts:
            problems.append(
                Problem(svc.ref, "NoExternalIP", "managed Service has no status.loadBalancer.ingress IP yet", False)
            )
            ports: tuple[PortSpec, ...] = ()
        elif svc.mode is Mode.PER_PORT:
            ports = resolve_ports(svc.ref, svc.raw_ports, _slice_ports(slices, ready), problems)
        else:
            ports = ()
        # (The Service's own fields, then what its slices add: _replace, without its cost.)
        return _View._make((*svc[:_OWN_FIELDS], ready[4], ready[6], ports, tuple(problems)))

    # ------------------------------------------------------------------ resolution

    def _resolve_ip(self, ip: str) -> _View | None:
        """The oldest claimant with a ready endpoint wins; everybody else learns why not."""
        claims = self._claims.get(ip)
        if isinstance(claims, list):
            claimants = sorted((self._views[k] for k in claims), key=lambda v: v.age_key)
        else:
            claimants = [self._views[claims]] if claims is not None else []
        problems: list[Problem] = []
        winner: _View | None = None
        why = self._refusal(ip) if claimants else None
        version = _version(ip)
        for view in claimants:
            svc = view
            if why is not None:
                problems.append(Problem(svc.ref, "ExternalIPRefused", f"external IP refused: {why}"))
                continue
            if winner is not None:
                problems.append(Problem(svc.ref, "ExternalIPConflict", _conflict_message(ip, winner, view)))
                continue
            ready = view.ready4 if version == 4 else view.ready6
            if not ready:
                problems.append(
                    Problem(svc.ref, "NoReadyEndpoint", f"no ready IPv{version} endpoint for external IP {ip}")
                )
                continue
            if endpoint_count(ready) > 1:
                pod, _ = _backend(view, ip)
                problems.append(
                    Problem(
                        svc.ref,
                        "SeveralReadyEndpoints",
                        f"{endpoint_count(ready)} ready IPv{version} endpoints; a whole IP maps to one pod,"
                        f" using {pod} (the lowest address)",
                    )
                )
            winner = view
        if problems:
            self._ip_problems[ip] = tuple(problems)
        else:
            self._ip_problems.pop(ip, None)
        return winner

    def _refusal(self, ip: str) -> str | None:
        """:func:`~wholeip.core.model.refusal` of an external IP (canonical text). An ordinary
        dotted IPv4 address outside every guard, nobody's Node or API server address and
        inside the allowed CIDRs (if any) is told apart by numbers, without an address
        object (the answer for nearly every external IP of a cluster); anything else is
        asked the long way. Then: no ready endpoint's address."""
        net = self._net
        number = ipv4_number(ip)
        if not (
            number is not None
            and ordinary_v4(number)
            and number not in net.node4
            and number not in self._control4
            and not _inside(number, net.guard4)
            and (not self.settings.allowed_external_cidrs or _inside(number, net.allowed4))
        ):
            why = refusal(
                address_of(ip),
                cluster=net.guard,
                node_ips=net.node_ips,
                allowed=self.settings.allowed_external_cidrs,
                control_plane=self._control_plane,
            )
            if why is not None:
                return why
        # A pod's own address, which only the pod networks' guard above would have told
        # where they are known (Nodes without podCIDRs, no --cluster-cidr: every endpoint
        # counts): its mapping and the pod's, keyed by the same address, would share the
        # filter's elements.
        pod_of = self._endpoints.get(ip)
        if pod_of is not None:
            return f"{ip} is a pod's address (a ready endpoint in EndpointSlice {first_of(pod_of)})"
        return None

    def _egress_order(self, ext: str) -> tuple[tuple[int, str, str], int]:
        view = self._winners[ext]
        return view.age_key, view.exts.index(ext)

    def _resolve_egress(self, pod: str, gained: set[str]) -> tuple[str, ...]:
        """Which external IP the pod leaves with: its oldest Service's first. ``gained``: the
        external IPs that now map to the pod and may not have before. Returns the pod's
        external IPs, before and after."""
        before = all_of(self._pods.get(pod))
        mine = {*(e for e in before if (w := self._winners.get(e)) is not None and _backend(w, e)[0] == pod), *gained}
        exts = sorted(mine, key=self._egress_order) if len(mine) > 1 else list(mine)
        if not exts:
            self._pods.pop(pod, None)
            self._pod_problems.pop(pod, None)
            return tuple(before)
        if len(exts) == 1:  # (nearly every pod: nobody else to tell)
            self._pods[pod] = exts[0]
            self._pod_problems.pop(pod, None)
            return (*before, *exts)
        self._pods[pod] = exts
        first = self._winners[exts[0]].ref
        problems = [
            Problem(
                ref,
                "EgressClaimedByOlderService",
                f"pod {pod} already leaves with the external IP of the older Service {first.namespace}/{first.name}",
                warning=False,
            )
            for ref in (self._winners[e].ref for e in exts[1:])
            if ref != first
        ]
        if problems:
            self._pod_problems[pod] = tuple(problems)
        else:
            self._pod_problems.pop(pod, None)
        return (*before, *exts)

    # ------------------------------------------------------------------ output

    def doc(self) -> TableDoc:
        """The table, over the live sets (valid until the next update)."""
        return table_doc(self.elements, table=self.table, mark_mask=self.settings.egress_mark_mask)

    @property
    def problems(self) -> list[Problem]:
        """Every problem, in no particular order (a :class:`~wholeip.core.model.ProblemSource`)."""
        out: list[Problem] = [*self._net.problems]
        delegated = self.delegated.problems
        groups: tuple[Iterable[tuple[Problem, ...]], ...] = (
            self._parse_problems.values(),
            self._slice_problems.values(),
            self._view_problems.values(),
            self._ip_problems.values(),
            self._pod_problems.values(),
            (tuple(self.podnat.problems),),
            (tuple(self.egress.problems),),
            (tuple(delegated),),
        )
        for group in groups:
            for problems in group:
                out += problems
        # Once each: a delegated LoadBalancer Service's unusable port is read by both readers.
        return list(dict.fromkeys(out)) if delegated else out

    def owner(self, address: str) -> ObjectRef | None:
        """The Service whose mapping an element keyed by ``address`` belongs to (external IP,
        or the pod IP of an egress element), if any."""
        ip = parse_ip(address)
        if ip is None:
            return None
        text = str(ip)
        win = self._winners.get(text)
        if win is None:
            egress = first_of(self._pods.get(text))
            win = self._winners.get(egress) if egress is not None else None
        return win.ref if win is not None else None

    def mapping_count(self) -> int:
        return len(self._winners)

    def backend_nodes(self, namespace: str, name: str) -> list[str | None]:
        """The nodes of the pods a Service's mappings point at."""
        view = self._views.get((namespace, name))
        if view is None:
            return []
        return [
            _backend(w, ip)[1]
            for ip, w in ((ip, self._winners.get(ip)) for ip in view.exts)
            if w is not None and w.key == view.key  # a lost claim is the winner's mapping
        ]

    def mappings(self, refs: Mapping[ServiceKey, ObjectRef] | None = None) -> list[Mapping1to1]:
        """Every mapping, as the model's type (built on demand: the index keeps text);
        ``refs``: the Services' references, when the caller made them already."""
        out = []
        for ext, win in self._winners.items():
            pod, node = _backend(win, ext)
            out.append(
                Mapping1to1(
                    service=refs[win.key] if refs is not None else win.ref,
                    external_ip=address_of(ext),
                    pod_ip=address_of(pod),
                    node_name=node,
                    mode=win.mode,
                    allow_icmp=win.allow_icmp,
                    ports=win.ports,
                    source_ranges=win.source_ranges,
                    egress=first_of(self._pods.get(pod)) == ext,
                    closed=win.closed,
                )
            )
        return out

    def state(self) -> ClusterState:
        """The whole model as one immutable ClusterState (costs O(Services))."""
        # One reference per Service, in order: a Service's is (kind, namespace, name), the
        # kind is the same for all and the key is (namespace, name).
        refs = {key: self._views[key].ref for key in sorted(self._views)}
        return ClusterState(
            mappings=tuple(sorted(self.mappings(refs), key=lambda m: (m.external_ip.version, int(m.external_ip)))),
            cluster_networks=self._net.cluster,
            problems=tuple(sorted(self.problems, key=_problem_order)),
            managed_services=tuple(refs.values()),
            lb_redirects=self._lb_sorted(),
            local_pod_networks=self._net.local_pods,
            pod_ports=tuple(self.podnat.pod_ports()),
            podnat_pods=tuple(self.podnat.self_pods()),
            egress_snat=tuple(self.egress.snat()),
            egress_steer=tuple(self.egress.steer()),
            egress_services=self.egress.served(),
            frontends=tuple(self.delegated.frontends()),
            health_checks=tuple(self.delegated.health_checks()),
        )

    # ------------------------------------------------------------------ LoadBalancer IP -> ClusterIP
    #
    # ``--lb-to-clusterip``: every LoadBalancer Service we do not manage claims, per port of
    # each of its LoadBalancer IPs, the key (LB IP, protocol, port) -> its ClusterIP of that
    # family. One Service change re-computes its own claims; a key two Services claim (one
    # LB IP, the same port: a mistake, shared IPs use other ports) goes to the oldest, as an
    # external IP does. Nothing here is reported: these Services are not ours.

    def _init_lb(self) -> None:
        self._lb_info: dict[ServiceKey, LbServiceInfo] = {}
        """Every unmanaged LoadBalancer Service's own say (a Node change re-weighs the
        guards on their LoadBalancer IPs)."""
        self._lb_ips: AddressBook[ServiceKey] = AddressBook()
        """The LoadBalancer IPs of ``_lb_info``, by network (a Node change re-weighs the
        Services with one inside the networks it changed)."""
        self._lb_of: dict[ServiceKey, _LbClaims] = {}
        self._lb_claims: dict[_LbKey, OneOrMany[ServiceKey]] = {}
        self._lb_winners: dict[_LbKey, tuple[ServiceKey, str]] = {}
        """Key -> (the Service that won it, its ClusterIP): the ``lbclusterip`` elements."""
        for name, elem in lb_elements((), self._net.local_pods):
            self.elements[name].add(elem)

    @staticmethod
    def _lb_info_of(objs: Sequence[RawObject]) -> LbServiceInfo | None:
        infos = [i for i in map(parse_lb_service, objs) if i is not None]
        return min(infos, key=lambda i: (i.age_key, i.ref.uid, repr(i))) if infos else None

    def _lb_claims_of(self, info: LbServiceInfo) -> _LbClaims | None:
        cluster = {ip.version: str(ip) for ip in info.cluster_ips}
        entries = tuple(
            ((str(ip), proto, port), cluster[ip.version])
            for ip in info.lb_ips
            if ip.version in cluster and refusal(ip, cluster=self._net.guard, node_ips=self._net.node_ips) is None
            for proto, port in info.ports
        )
        return _LbClaims(info.age_key, entries) if entries else None

    def _update_lb(self, infos: Mapping[ServiceKey, LbServiceInfo | None], touched: Touched) -> None:
        """Re-weigh the claims of these Services (None: no unmanaged LoadBalancer Service)."""
        dirty: set[_LbKey] = set()
        for key, info in infos.items():
            old = self._lb_of.pop(key, None)
            for lb_key, _ in old.entries if old is not None else ():
                discard_from(self._lb_claims, lb_key, key)
                dirty.add(lb_key)
            said = self._lb_info.pop(key, None)
            for ip in said.lb_ips if said is not None else ():
                self._lb_ips.discard(str(ip), key)
            if info is None:
                continue
            self._lb_info[key] = info
            for ip in info.lb_ips:
                self._lb_ips.add(str(ip), key)
            new = self._lb_claims_of(info)
            if new is not None:
                self._lb_of[key] = new
                for lb_key, _ in new.entries:
                    add_to(self._lb_claims, lb_key, key)
                    dirty.add(lb_key)
        for lb_key in dirty:
            was = self._lb_winners.pop(lb_key, None)
            claimants = all_of(self._lb_claims.get(lb_key))
            now = None
            if claimants:
                owner = min(claimants, key=lambda k: self._lb_of[k].age)
                now = (owner, next(c for k, c in self._lb_of[owner].entries if k == lb_key))
                self._lb_winners[lb_key] = now
            if (was and was[1]) == (now and now[1]):
                continue  # another owner with the same ClusterIP: the same element
            if was is not None:
                name, elem = lb_redirect_element(*lb_key, was[1])
                self.elements[name].discard(elem)
                touched.setdefault(name, set()).add(elem)
            if now is not None:
                name, elem = lb_redirect_element(*lb_key, now[1])
                self.elements[name].add(elem)
                touched.setdefault(name, set()).add(elem)

    def _lb_sorted(self) -> tuple[LbRedirect, ...]:
        """The redirects in address order (each LB IP parsed once, not once per port)."""
        parsed: dict[str, tuple[int, int]] = {}

        def order(r: LbRedirect) -> tuple[int, int, str, int]:
            if r.lb_ip not in parsed:
                ip = address_of(r.lb_ip)
                parsed[r.lb_ip] = (ip.version, int(ip))
            return (*parsed[r.lb_ip], r.protocol, r.port)

        return tuple(sorted(self.lb_redirects(), key=order))

    def lb_redirects(self) -> list[LbRedirect]:
        """Every LoadBalancer IP port sent to a ClusterIP (``--lb-to-clusterip``)."""
        return [
            LbRedirect(lb, proto, port, cluster_ip, ObjectRef("Service", *owner))
            for (lb, proto, port), (owner, cluster_ip) in self._lb_winners.items()
        ]


_LbKey = tuple[str, str, int]
"""(LoadBalancer IP as canonical text, protocol, port)."""


class Filler:
    """Services and slices streamed into a new index, in any order and interleaving: the
    index :meth:`ClusterIndex.update` would make of them, in a fraction of its time.

    A Service whose slices and own fields make plain whole-IP mappings of it (one external
    IP, or an IPv4 and an IPv6 one; one slice of each of their families, each with one ready
    endpoint inside the pod networks; nothing to report, no other reader selecting the
    Service) is written straight into the index as soon as all have come, when none of its
    external IPs is anybody's claim yet, none of its pods anybody's backend and no IP
    refused: the index it leaves is the one :meth:`~ClusterIndex.update` would leave,
    without the comparisons with what was there before (nothing) and the re-resolution of
    others (none). Until its partners come, such a Service or slice waits as what was read
    of it (not the object). Everything else takes :meth:`~ClusterIndex.update`, in batches
    of ``batch`` objects, so that a stream is never held whole. The index is correct after
    every step, so whatever comes later (a second slice of a written Service, a Service
    claiming the same IP, the API server's addresses) is resolved as any change is;
    :meth:`finish` sends what still waits. Every key comes once (each resource's own).

    :meth:`ClusterIndex.fill` gives it every slice and then every Service; the agent gives
    it the pages of its first lists as they arrive (see ``wholeip.agent.prefill``). A
    property test holds a filled index to one updated object by object, in both orders and
    through later updates.
    """

    def __init__(self, index: ClusterIndex, *, batch: int = 2000) -> None:
        if index._views or index._slices or index._claims:
            raise ValueError("fill: the index is not new")
        self.index = index
        self.batch = batch
        self._single: dict[ServiceKey, _Plains] = {}
        """Service not paired yet -> its slices so far, while each can make a plain mapping
        and no two are of one family."""
        self._several: set[ServiceKey] = set()
        """Services with a slice that cannot, or with two of one family."""
        self._waiting: dict[ServiceKey, ServiceRead] = {}
        """Plain Services whose slices have not all come (yet)."""
        self._slices_done = False
        """Every slice has come: a Service without its slices waits for none."""
        self._general: dict[ServiceKey, Sequence[RawObject]] = {}
        self._reads: dict[ServiceKey, ServiceRead] = {}
        self._pending: dict[str, SliceRead | None] = {}
        self._written: list[tuple[str, str]] = []
        """The (external IP, pod) pairs written."""

    def slices(self, slices: Iterable[tuple[str, RawObject]]) -> None:
        """Take slices (their index keys, see :func:`_slice_key`)."""
        index, single, several = self.index, self._single, self._several
        for skey, obj in slices:
            both = read_slice(obj)
            if both is None:
                continue  # (as update() files it: nothing)
            key = both[0].service
            plain = index._plain_slice(skey, both) if key not in several else None
            read = self._waiting.get(key)
            if plain is not None:
                had = single.get(key)
                if had is None and read is None:  # (nearly always: the first slice, no Service yet)
                    single[key] = (plain,)
                    continue
                plains = (*(had or ()), plain)
                if len({ps.family for ps in plains}) == len(plains) and (read is None or _covered(plains, read)):
                    if read is not None and len(plains) == len(read.external_ips):
                        del self._waiting[key]
                        single.pop(key, None)
                        self._pair(key, read, plains)
                    else:
                        single[key] = plains
                    continue
            several.add(key)
            if read is not None:
                self._reads[key] = self._waiting.pop(key)
            self._long_way(single.pop(key, ()))
            self._pending[skey] = both
            self._flush(full_only=True)

    def slices_done(self) -> None:
        """No slice comes any more: a plain Service that comes later has none to wait for."""
        self._slices_done = True

    def services(self, services: Iterable[tuple[ServiceKey, Sequence[RawObject]]]) -> None:
        """Take Services (key -> the objects under it)."""
        settings = self.index.settings
        for key, objs in services:
            plains = self._single.pop(key, ())
            read = None
            if key not in self._several and (plains or not self._slices_done):
                read = _plain_read(key, objs, settings)
            if read is not None and plains and not _covered(plains, read):
                read = None  # a slice of a family it has no external IP of
            if read is None:
                self._general[key] = objs
                self._long_way(plains)
            elif len(plains) == len(read.external_ips):
                self._pair(key, read, plains)
            elif self._slices_done:
                self._reads[key] = read
                self._long_way(plains)
            else:
                self._waiting[key] = read
                if plains:
                    self._single[key] = plains
            self._flush(full_only=True)

    def _pair(self, key: ServiceKey, read: ServiceRead, plains: _Plains) -> None:
        """Write a plain Service with a plain slice of each of its external IPs' families."""
        ordered = (
            plains
            if len(plains) == 1
            else tuple(sorted(plains, key=lambda ps: _version(read.external_ips[0]) != ps.family))
        )
        if self.index._put_plain(read, ordered):
            self._written += ((ip, cast(str, ps.ready[0])) for ip, ps in zip(read.external_ips, ordered, strict=True))
        else:
            self._reads[key] = read
            self._long_way(plains)

    def _long_way(self, plains: _Plains) -> None:
        """Send these slices, as read, through :meth:`~ClusterIndex.update` (with the next batch)."""
        self._pending.update((ps.skey, ps.read()) for ps in plains)

    def _flush(self, *, full_only: bool) -> None:
        if full_only and len(self._general) + len(self._reads) + len(self._pending) < self.batch:
            return
        self.index.update(services=self._general, reads=self._reads, read_slices=self._pending)
        self._general, self._reads, self._pending = {}, {}, {}

    def finish(self) -> None:
        """Send what still waits: plain Services without their slices, slices of no Service (yet)."""
        for plains in self._single.values():
            self._long_way(plains)
        self._reads.update(self._waiting)
        self._single.clear()
        self._waiting.clear()
        self._flush(full_only=False)
        # The egress Services and the published ports of the written pods: as update() tells them.
        written, self._written = self._written, []
        if written:
            index = self.index
            pods = {pod for _, pod in written}
            touched: Touched = {}  # (nobody to tell: the index is new)
            if index.podnat.has_pods:
                index.podnat.update({}, touched, recheck=pods)
            index.egress.update(touched, pods=pods, external_ips=[ip for ip, _ in written])


class _LbClaims(NamedTuple):
    """What one LoadBalancer Service claims (``--lb-to-clusterip``)."""

    age: tuple[int, str, str]
    entries: tuple[tuple[_LbKey, str], ...]
    """(key, ClusterIP of the key's family) for each port of each LoadBalancer IP."""


def _stamp(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conflict_message(ip: str, winner: _View, loser: _View) -> str:
    """Why ``loser`` did not get ``ip``, saying what really decided. creationTimestamp counts
    whole seconds, so two claims made within one second are ordered by namespace/name, not by
    which came first: the message must not call the winner older then."""
    owner = f"{winner.key[0]}/{winner.key[1]}"
    if winner.created != loser.created:
        # (A missing or malformed timestamp counts as the newest, so the winner's is valid here.)
        return f"external IP {ip} is already claimed by the older Service {owner} (created {_stamp(winner.created)})"
    same = (
        "neither Service has a valid creationTimestamp"
        if winner.created == NEWEST
        else f"both Services were created in the same second ({_stamp(winner.created)};"
        " creationTimestamp has one-second resolution)"
    )
    return (
        f"external IP {ip} is claimed by Service {owner} as well and {same}, so namespace/name order"
        f" decided: {owner} comes before {loser.key[0]}/{loser.key[1]}"
    )


def _problem_order(p: Problem) -> tuple[ObjectRef, str, str]:
    return (p.ref, p.reason, p.message)


def load(
    *,
    services: Iterable[RawObject],
    endpoint_slices: Iterable[RawObject],
    nodes: Iterable[RawObject],
    node_name: str,
    settings: ModelSettings,
    table: str = TABLE,
    pods: Iterable[RawObject] = (),
    l2_statuses: Iterable[RawObject] = (),
) -> ClusterIndex:
    """An index holding every given object (duplicates allowed, as in a flat list).

    The cyclic garbage collector is paused meanwhile: the index is hundreds of thousands
    of new, long-lived, acyclic objects, and every collection on the way would scan all
    of them again (a third of the time at 100,000 Services).
    """
    with gc_paused(long_lived=True):
        return _load(services, endpoint_slices, nodes, node_name, settings, table, pods, l2_statuses)


def load_unique(
    *,
    services: Iterable[RawObject],
    endpoint_slices: Iterable[RawObject],
    nodes: Iterable[RawObject],
    node_name: str,
    settings: ModelSettings,
    table: str = TABLE,
    batch: int = 2000,
    pods: Iterable[RawObject] = (),
    l2_statuses: Iterable[RawObject] = (),
) -> ClusterIndex:
    """An index of objects with unique keys (an informer's cache), read as a stream.

    Nothing is kept of an object but what the index makes of it, so a cache that
    decodes objects on the way (:class:`~wholeip.kube.informer.PackedCache`) is never
    held decoded as a whole. Slices go first, so each Service is resolved once.
    """
    with gc_paused(long_lived=True):
        index = ClusterIndex(settings=settings, node_name=node_name, nodes=nodes, table=table)
        index.fill(
            ((service_key(obj), (obj,)) for obj in services),
            ((_slice_key(obj), obj) for obj in endpoint_slices),
            batch=batch,
        )
        finish_load(index, pods=pods, l2_statuses=l2_statuses)
        return index


def finish_load(index: ClusterIndex, *, pods: Iterable[RawObject], l2_statuses: Iterable[RawObject]) -> None:
    """What a load of unique keys (an informer's caches) adds after the Services and the
    slices: this node's Pods and MetalLB's statuses; then the index is compacted."""
    index.update(pod_objects={service_key(obj): obj for obj in pods})
    index.update(l2_statuses=_keyed(l2_statuses))
    index.compact()


def _load(
    services: Iterable[RawObject],
    endpoint_slices: Iterable[RawObject],
    nodes: Iterable[RawObject],
    node_name: str,
    settings: ModelSettings,
    table: str,
    pods: Iterable[RawObject] = (),
    l2_statuses: Iterable[RawObject] = (),
) -> ClusterIndex:
    index = ClusterIndex(settings=settings, node_name=node_name, nodes=nodes, table=table)
    grouped: dict[ServiceKey, list[RawObject]] = {}
    for obj in services:
        grouped.setdefault(service_key(obj), []).append(obj)
    by_base: dict[str, list[RawObject]] = {}
    for obj in endpoint_slices:
        by_base.setdefault(_slice_key(obj), []).append(obj)
    slices: dict[str, RawObject] = {}
    for base, objs in by_base.items():
        # Duplicates in a flat list: keep them all, numbered by content (a later slice's
        # endpoints win), so that input order never decides.
        for obj in sorted(objs, key=repr) if len(objs) > 1 else objs:
            key, n = base, 0
            while key in slices:
                n += 1
                key = f"{base}#{n}"
            slices[key] = obj
    index.fill(grouped.items(), slices.items())
    index.update(pod_objects=_unique_pods(pods), l2_statuses=_keyed(l2_statuses))
    index.compact()
    return index


def _slice_key(obj: RawObject) -> str:
    """A slice's key in the index: the informers' cache key."""
    ns, name = service_key(obj)
    return f"{ns}/{name}" if ns else name


def _keyed(objs: Iterable[RawObject]) -> dict[str, RawObject]:
    """Objects under their ``namespace/name`` (a duplicate: the one first in content order)."""
    out: dict[str, RawObject] = {}
    for obj in sorted(objs, key=repr):
        ns, name = service_key(obj)
        out.setdefault(f"{ns}/{name}", obj)
    return out


def _unique_pods(pods: Iterable[RawObject]) -> dict[PodKey, RawObject]:
    """One Pod per key from a flat list: a duplicate is decided by content, not input order."""
    out: dict[PodKey, RawObject] = {}
    for obj in sorted(pods, key=repr):
        out.setdefault(service_key(obj), obj)
    return out


# --------------------------------------------------------------------------- the state at once


def _split_kinds(objects: Iterable[RawObject]) -> tuple[list[RawObject], ...]:
    services: list[RawObject] = []
    slices: list[RawObject] = []
    nodes: list[RawObject] = []
    pods: list[RawObject] = []
    l2: list[RawObject] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Service":
            services.append(obj)
        elif kind == "EndpointSlice":
            slices.append(obj)
        elif kind == "Node":
            nodes.append(obj)
        elif kind == "Pod":
            pods.append(obj)
        elif kind == L2_STATUS_KIND:
            l2.append(obj)
    return services, slices, nodes, pods, l2


def build_state_from_objects(objects: Iterable[RawObject], *, node_name: str, settings: ModelSettings) -> ClusterState:
    """Like :func:`build_state`, for a flat list of objects of any kind (others are ignored)."""
    return load_objects(objects, node_name=node_name, settings=settings).state()


def load_objects(
    objects: Iterable[RawObject], *, node_name: str, settings: ModelSettings, table: str = TABLE
) -> ClusterIndex:
    """Like :func:`load`, for a flat list of objects of any kind (others are ignored)."""
    services, slices, nodes, pods, l2 = _split_kinds(objects)
    return load(
        services=services,
        endpoint_slices=slices,
        nodes=nodes,
        node_name=node_name,
        settings=settings,
        table=table,
        pods=pods,
        l2_statuses=l2,
    )


def build_state(
    *,
    services: Iterable[RawObject],
    endpoint_slices: Iterable[RawObject],
    nodes: Iterable[RawObject],
    node_name: str,
    settings: ModelSettings,
    pods: Iterable[RawObject] = (),
    l2_statuses: Iterable[RawObject] = (),
) -> ClusterState:
    """The ClusterState for the given raw objects, seen from node ``node_name``.

    Deterministic: the same objects in any order give an equal state. The work is done
    by :class:`ClusterIndex` (the agent keeps one current, object by
    object); this is the same index filled at once.
    """
    return load(
        services=services,
        endpoint_slices=endpoint_slices,
        nodes=nodes,
        node_name=node_name,
        settings=settings,
        pods=pods,
        l2_statuses=l2_statuses,
    ).state()
