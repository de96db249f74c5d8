"""Pod ports on the node's address: podnat-controller's annotation, kept incrementally (pure).

A pod on this node publishes ports with one annotation in podnat-controller's format
(the key is ``--podnat-annotation``, default ``bln.space/podnat``)::

    {"entries": [{"srcPort": 25, "dstPort": 25}, {"srcPort": 587, "dstPort": 2587, "proto": "tcp"}]}

Each entry claims ``(address, protocol, srcPort)`` on this node and sends it to
``(pod IP, dstPort)`` with conntrack DNAT (the replies leave with the node's address;
:mod:`wholeip.core.ruleset`, "Pod ports on the node's address"). The address:

* ``ifaceAuto`` (the default): per family where the pod has an address, the Node
  object's ``ExternalIP``, else the source address of the node's default route (read by
  the agent, passed in through :class:`~wholeip.settings.PodNatSettings`), each only if
  it passes the include/exclude networks;
* ``srcIP`` (with ``ifaceAuto`` false or absent): that address, which must be one of
  this node's (its Node object's addresses, or the host's own); any other is refused.

Decisions, each a :class:`~wholeip.core.model.Problem` on the Pod (an Event):

* the annotation is not JSON, or an entry is malformed (a port outside 1-65535, an
  unknown protocol, ``ifaceAuto`` false without ``srcIP``, one key sent to two
  destinations), or the pod is a host-network pod (its addresses are the node's):
  ``InvalidPodNATAnnotation``, and nothing of that pod is published;
* a restricted port (``--podnat-restricted-ports``: 22, 53, 6443 and the agent's own
  port by default): ``PodNATPortRestricted``, that entry only;
* an explicit ``srcIP`` that is not this node's, or no address for the entry:
  ``PodNATAddressRefused`` / ``PodNATNoAddress``, that entry only;
* two pods claiming the same (address, protocol, port): the older pod wins (creation
  time, then namespace/name); ``PodNATPortConflict`` on the other;
* a pod that is also the backend of a whole-IP mapping: its replies from outside leave
  through the stateless path with its external IP, which a published port cannot
  survive, so its entries of that family are withdrawn: ``PodNATOnManagedPod``.

Only running pods of this node with an address are read (the agent's informer watches
``spec.nodeName=<node>``; a cluster file may hold others, skipped here). A pod being
deleted is gone.

Incremental: a changed pod re-parses that pod only and re-resolves the keys it claimed
before and claims now; an element belongs to exactly one key's winner (``podnat4/6`` and
``podnatport4/6``), or to one pod (``podnatself4/6``, present while the pod claims any
key of the family), so the update touches what changed and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from wholeip.core.compact import OneOrMany, add_to, all_of, discard_from
from wholeip.core.model import IPAddress, ObjectRef, PodPort, Problem
from wholeip.core.objects import RawObject, created_seconds, parse_ip
from wholeip.names import PODNAT_ADDR, PODNAT_PORT, PODNAT_SELF
from wholeip.nft.doc import Elem
from wholeip.settings import IPNetwork, PodNatSettings

PROTOCOLS = ("tcp", "udp", "sctp")
"""What an entry's ``proto`` may say (podnat: tcp, udp; we add sctp). Absent: tcp."""

PodKey = tuple[str, str]
"""(namespace, name) of a Pod."""
RouteKey = tuple[str, str, int]
"""(node address as canonical text, protocol, port): what an entry claims."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the annotation, as written."""

    auto: bool
    src_ip: IPAddress | None
    src_port: int
    dst_port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the model reads of an annotated, running pod of this node."""

    ref: ObjectRef
    age: tuple[int, str, str]
    """(creation time in seconds, namespace, name): the older claim wins."""
    ips: tuple[str, ...]
    """The pod's addresses, canonical text, at most one per family."""
    entries: tuple[Entry, ...]


def _port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def parse_entries(text: str) -> tuple[tuple[Entry, ...], str | None]:
    """The entries of an annotation value, or why it is malformed (then no entry counts)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return (), f"not JSON: {exc}"
    except RecursionError:  # (a few kilobytes of brackets: the decoder's recursion limit)
        return (), "not JSON this agent reads: nested too deeply"
    raw = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        return (), 'expected an object with a list "entries"'
    out: list[Entry] = []
    for n, item in enumerate(raw):
        where = f"entries[{n}]"
        if not isinstance(item, dict):
            return (), f"{where} is not an object"
        unknown = sorted(set(item) - {"ifaceAuto", "srcIP", "srcPort", "dstPort", "proto"})
        if unknown:
            return (), f"{where}: unknown key {unknown[0]!r}"
        src, dst = _port(item.get("srcPort")), _port(item.get("dstPort"))
        if src is None or dst is None:
            return (), f"{where}: srcPort and dstPort must be integers from 1 to 65535"
        proto = item.get("proto", "tcp")
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            return (), f"{where}: proto must be one of {', '.join(PROTOCOLS)}"
        auto_raw = item.get("ifaceAuto")
        if auto_raw is not None and not isinstance(auto_raw, bool):
            return (), f"{where}: ifaceAuto must be true or false"
        src_ip = None
        if item.get("srcIP") not in (None, ""):  # (podnat-controller writes "" for none)
            src_ip = parse_ip(item["srcIP"])
            if src_ip is None:
                return (), f"{where}: srcIP {item['srcIP']!r} is not an IP address"
            if auto_raw is True:
                return (), f"{where}: ifaceAuto true and srcIP {src_ip} contradict each other"
        elif auto_raw is False:
            return (), f"{where}: ifaceAuto false needs srcIP"
        out.append(Entry(src_ip is None, src_ip, src, dst, proto.lower()))
    return tuple(out), None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ref(obj: RawObject) -> ObjectRef:
    meta = _dict(obj.get("metadata"))
    return ObjectRef("Pod", str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or ""))


def parse_pod(obj: RawObject, *, annotation: str, node_name: str, problems: list[Problem]) -> PodInfo | None:
    """An annotated, running pod of node ``node_name`` with an address; None otherwise (a
    malformed annotation adds its Problem)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    annotations = meta.get("annotations")
    value = annotations.get(annotation) if isinstance(annotations, dict) else None
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    if value is None or spec.get("nodeName") != node_name or meta.get("deletionTimestamp"):
        return None
    if status.get("phase") != "Running":
        return None
    ips: dict[int, str] = {}
    raw_ips = status.get("podIPs")
    listed = [i.get("ip") for i in raw_ips if isinstance(i, dict)] if isinstance(raw_ips, list) else []
    for raw in [*listed, status.get("podIP")]:
        ip = parse_ip(raw)
        if ip is not None:
            ips.setdefault(ip.version, str(ip))
    if not ips:
        return None
    ref = _ref(obj)
    if spec.get("hostNetwork") is True:
        # Its addresses are the node's: it listens there itself, and its "self" element
        # (node address, node address) would masquerade the node's DNATed flows to itself.
        problems.append(
            Problem(
                ref,
                "InvalidPodNATAnnotation",
                f"annotation {annotation}: a host-network pod listens on the node's addresses itself;"
                " no port of this pod is published",
            )
        )
        return None
    entries, error = parse_entries(value) if isinstance(value, str) else ((), "not a string")
    if error is not None:
        problems.append(
            Problem(
                ref, "InvalidPodNATAnnotation", f"annotation {annotation}: {error}; no port of this pod is published"
            )
        )
        return None
    return PodInfo(ref, (created_seconds(str(meta.get("creationTimestamp") or "")), ref.namespace, ref.name),
                   tuple(ips[v] for v in sorted(ips)), entries)  # fmt: skip


class NodeAddresses(NamedTuple):
    """This node's addresses as the podnat entries see them."""

    auto: Mapping[int, str]
    """Family -> the ``ifaceAuto`` address (none: that family is not published)."""
    own: frozenset[IPAddress]
    """Every address an explicit ``srcIP`` may name."""
    guarded: Mapping[IPAddress, IPNetwork] = {}
    """This node's addresses an explicit ``srcIP`` may not name: those inside the cluster's
    networks (a ClusterIP that kube-proxy's IPVS mode puts on ``kube-ipvs0``, the CNI's
    gateway in the pod network), each with the network. Publishing on one would take that
    address's port from the node's pods (a Service's ClusterIP port, for example)."""


def node_addresses(
    nodes: Iterable[RawObject], node_name: str, settings: PodNatSettings, guard: Iterable[IPNetwork] = ()
) -> NodeAddresses:
    """ExternalIP of this node's Node object per family, else the default route's source;
    filtered by the include/exclude networks. ``guard``: the cluster's networks (pod,
    Service, ``--cluster-cidr``), which no explicit ``srcIP`` may be inside."""
    external: list[IPAddress] = []
    own: set[IPAddress] = {*settings.host_addresses, *settings.default_sources}
    for node in nodes:
        meta = node.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != node_name:
            continue
        addresses = _dict(node.get("status")).get("addresses")
        for addr in addresses if isinstance(addresses, list) else []:
            ip = parse_ip(addr.get("address")) if isinstance(addr, dict) else None
            if ip is None:
                continue
            own.add(ip)
            if addr.get("type") == "ExternalIP":
                external.append(ip)

    def usable(ip: IPAddress) -> bool:
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return False
        if settings.include_cidrs and not any(ip in net for net in settings.include_cidrs):
            return False
        return not any(ip in net for net in settings.exclude_cidrs)

    auto: dict[int, str] = {}
    for ip in [*external, *settings.default_sources]:
        if ip.version not in auto and usable(ip):
            auto[ip.version] = str(ip)
    usable_own = {ip for ip in own if not ip.is_loopback and not ip.is_unspecified}
    networks = tuple(guard)
    guarded = {ip: net for ip in usable_own for net in networks if ip in net}
    return NodeAddresses(auto, frozenset(usable_own - guarded.keys()), guarded)


class _Claims(NamedTuple):
    """What one pod claims now."""

    age: tuple[int, str, str]
    ref: ObjectRef
    routes: tuple[tuple[RouteKey, str, int], ...]
    """(key, pod IP, pod port)."""
    self_ips: tuple[str, ...]
    """Pod IPs of the families it claims anything in (``podnatself``)."""


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def route_elements(key: RouteKey, pod_ip: str, pod_port: int) -> list[tuple[str, Elem]]:
    """The two map elements of one published port."""
    v = _version(key[0])
    return [(PODNAT_ADDR[v], (key, pod_ip)), (PODNAT_PORT[v], (key, pod_port))]


def self_element(pod_ip: str) -> tuple[str, Elem]:
    """The pod's ``podnatself`` element (it may reach itself through the node's address)."""
    return (PODNAT_SELF[_version(pod_ip)], (pod_ip, pod_ip))


def pod_port_elements(ports: Iterable[PodPort], pods: Iterable[str]) -> list[tuple[str, Elem]]:
    """Every podnat element of a state (the full build's way to the same elements)."""
    out = [e for p in ports for e in route_elements((p.address, p.protocol, p.port), p.pod_ip, p.pod_port)]
    out += [self_element(ip) for ip in pods]
    return out


class PodNatIndex:
    """The published ports of this node's pods, updated pod by pod. Writes into the
    caller's live element sets and reports what it touched."""

    def __init__(
        self,
        *,
        settings: PodNatSettings,
        node_name: str,
        nodes: Iterable[RawObject],
        elements: dict[str, set[Elem]],
        managed: Callable[[str], bool],
        guard: Iterable[IPNetwork] = (),
        node_port: Callable[[str, int], str | None] = lambda protocol, port: None,
        external: Callable[[str], str | None] = lambda address: None,
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.addresses = node_addresses(nodes, node_name, settings, guard)
        self._elements = elements
        self._managed = managed
        """Pod IP -> is it the backend of a whole-IP mapping (the ClusterIndex knows)."""
        self._node_port = node_port
        """(protocol, port) -> what holds it on every address of the node (a delegated
        Service's NodePort or health check), if anything."""
        self._external = external
        """An address -> the Service that claims it as its external IP, if one does (its
        traffic goes to that Service's pod: no port of it is the host's)."""
        self._infos: dict[PodKey, PodInfo] = {}
        self._by_ip: dict[str, OneOrMany[PodKey]] = {}
        self._of: dict[PodKey, _Claims] = {}
        self._claims: dict[RouteKey, OneOrMany[PodKey]] = {}
        self._winners: dict[RouteKey, PodKey] = {}
        self._route_elems: dict[RouteKey, tuple[tuple[str, Elem], ...]] = {}
        """The elements of each published route (its winner's), as committed."""
        self._self_count: dict[str, int] = {}
        """Pod IP -> how many pods claim under it (one, but for a moment two may share it)."""
        self._parse_problems: dict[PodKey, tuple[Problem, ...]] = {}
        self._problems: dict[PodKey, tuple[Problem, ...]] = {}
        self._conflicts: dict[RouteKey, tuple[Problem, ...]] = {}

    # ------------------------------------------------------------------ input

    def update(
        self,
        pods: Mapping[PodKey, RawObject | None],
        touched: dict[str, set[Elem]],
        *,
        recheck: Iterable[str] = (),
        addresses: NodeAddresses | None = None,
        ports: Iterable[tuple[str, int]] = (),
        externals: Collection[str] = (),
    ) -> None:
        """Apply changed pods (None: gone); ``recheck``: pod IPs whose whole-IP mappings
        changed (a pod may publish ports only while it has none); ``addresses``: this node's
        addresses, when they changed (every pod claims again); ``externals``: external IPs
        whose claims may have changed (a ``srcIP`` on one is refused)."""
        dirty_pods = set(pods)
        if addresses is not None:
            self.addresses = addresses
            dirty_pods.update(self._infos)
        for ip in recheck:
            dirty_pods.update(all_of(self._by_ip.get(ip)))
        ports = set(ports)
        if ports or externals:
            # Pods with an entry on a port that moved, or on an explicit srcIP whose claim did.
            dirty_pods.update(
                key
                for key, info in self._infos.items()
                if any(
                    (e.protocol, e.src_port) in ports or (e.src_ip is not None and str(e.src_ip) in externals)
                    for e in info.entries
                )
            )
        dirty: set[RouteKey] = set()
        for key in dirty_pods:
            if key in pods:
                old_info = self._infos.pop(key, None)
                for ip in old_info.ips if old_info is not None else ():
                    discard_from(self._by_ip, ip, key)
                self._parse_problems.pop(key, None)
                obj = pods[key]
                problems: list[Problem] = []
                info = None
                if obj is not None:
                    info = parse_pod(
                        obj, annotation=self.settings.annotation, node_name=self.node_name, problems=problems
                    )
                if problems:
                    self._parse_problems[key] = tuple(problems)
                if info is not None:
                    self._infos[key] = info
                    for ip in info.ips:
                        add_to(self._by_ip, ip, key)
        # Every removal before any addition: a new pod may have a gone pod's address.
        for key in dirty_pods:
            old = self._of.pop(key, None)
            self._problems.pop(key, None)
            for route, _, _ in old.routes if old is not None else ():
                discard_from(self._claims, route, key)
                dirty.add(route)
            for ip in old.self_ips if old is not None else ():
                self._self_count[ip] -= 1
                if not self._self_count[ip]:
                    del self._self_count[ip]
                    self._change(self_element(ip), add=False, touched=touched)
        for key in dirty_pods:
            info = self._infos.get(key)
            new = self._claims_of(key, info) if info is not None else None
            if new is not None:
                self._of[key] = new
                for route, _, _ in new.routes:
                    add_to(self._claims, route, key)
                    dirty.add(route)
                for ip in new.self_ips:
                    self._self_count[ip] = self._self_count.get(ip, 0) + 1
                    if self._self_count[ip] == 1:
                        self._change(self_element(ip), add=True, touched=touched)
        for route in dirty:
            self._resolve(route, touched)

    def _change(self, item: tuple[str, Elem], *, add: bool, touched: dict[str, set[Elem]]) -> None:
        name, elem = item
        if add:
            self._elements[name].add(elem)
        else:
            self._elements[name].discard(elem)
        touched.setdefault(name, set()).add(elem)

    def _target(self, route: RouteKey, key: PodKey) -> tuple[str, int]:
        return next((ip, port) for r, ip, port in self._of[key].routes if r == route)

    def _resolve(self, route: RouteKey, touched: dict[str, set[Elem]]) -> None:
        """Who publishes ``route`` now: the oldest claimant; the others get their problem."""
        self._winners.pop(route, None)
        self._conflicts.pop(route, None)
        claimants = sorted(all_of(self._claims.get(route)), key=lambda k: (self._of[k].age, self._of[k].ref.uid))
        old_elems = self._route_elems.pop(route, ())
        new_elems: tuple[tuple[str, Elem], ...] = ()
        if claimants:
            now = self._winners[route] = claimants[0]
            new_elems = tuple(route_elements(route, *self._target(route, now)))
            self._route_elems[route] = new_elems
            winner = self._of[now].ref
            address, proto, port = route
            if len(claimants) > 1:
                self._conflicts[route] = tuple(
                    Problem(
                        self._of[k].ref,
                        "PodNATPortConflict",
                        f"{proto.upper()} {address} port {port} is published by the older pod"
                        f" {winner.namespace}/{winner.name}; not published for this pod",
                    )
                    for k in claimants[1:]
                )
        for item in old_elems:
            if item not in new_elems:
                self._change(item, add=False, touched=touched)
        for item in new_elems:
            if item not in old_elems:
                self._change(item, add=True, touched=touched)

    def _claims_of(self, key: PodKey, info: PodInfo) -> _Claims | None:
        problems: list[Problem] = []
        ips = {_version(ip): ip for ip in info.ips}
        routes: dict[RouteKey, tuple[str, int]] = {}
        restricted = self.settings.restricted_ports
        for entry in info.entries:
            where = f"{entry.protocol.upper()} port {entry.src_port}"
            if entry.src_port in restricted:
                problems.append(
                    Problem(
                        info.ref,
                        "PodNATPortRestricted",
                        f"{where} is restricted on the node's address (--podnat-restricted-ports:"
                        f" {', '.join(map(str, sorted(restricted)))}); not published",
                    )
                )
                continue
            holder = self._node_port(entry.protocol, entry.src_port)
            if holder is not None:
                problems.append(
                    Problem(
                        info.ref,
                        "PodNATPortConflict",
                        f"{where} is {holder} on every address of the node; not published",
                    )
                )
                continue
            if entry.src_ip is not None:
                net = self.addresses.guarded.get(entry.src_ip)
                if net is not None:
                    problems.append(
                        Problem(
                            info.ref,
                            "PodNATAddressRefused",
                            f"{where}: srcIP {entry.src_ip} lies inside the cluster network {net} (a ClusterIP or"
                            " a pod network's address this node carries); not published",
                        )
                    )
                    continue
                service = self._external(str(entry.src_ip))
                if service is not None:
                    problems.append(
                        Problem(
                            info.ref,
                            "PodNATAddressRefused",
                            f"{where}: srcIP {entry.src_ip} is the external IP of {service} (its traffic goes to"
                            " that Service's pod); not published",
                        )
                    )
                    continue
                if entry.src_ip not in self.addresses.own:
                    problems.append(
                        Problem(
                            info.ref,
                            "PodNATAddressRefused",
                            f"{where}: srcIP {entry.src_ip} is not an address of node {self.node_name}; not published",
                        )
                    )
                    continue
                if entry.src_ip.version not in ips:
                    problems.append(
                        Problem(
                            info.ref,
                            "PodNATNoAddress",
                            f"{where}: srcIP {entry.src_ip} is IPv{entry.src_ip.version}"
                            " and the pod has no address of that family; not published",
                        )
                    )
                    continue
                addresses = [str(entry.src_ip)]
            else:
                addresses = [self.addresses.auto[v] for v in sorted(ips) if v in self.addresses.auto]
                if not addresses:
                    problems.append(
                        Problem(
                            info.ref,
                            "PodNATNoAddress",
                            f"{where}: node {self.node_name} has no usable address of the pod's families"
                            " (no ExternalIP, no default route source inside the include/exclude networks);"
                            " not published",
                        )
                    )
                    continue
            for address in addresses:
                route = (address, entry.protocol, entry.src_port)
                target = (ips[_version(address)], entry.dst_port)
                if routes.setdefault(route, target) != target:
                    self._problems[key] = (
                        Problem(
                            info.ref,
                            "InvalidPodNATAnnotation",
                            f"annotation {self.settings.annotation}: {entry.protocol.upper()} {address} port"
                            f" {entry.src_port} is sent to two pod ports; no port of this pod is published",
                        ),
                    )
                    return None
        managed = sorted({v for v in ips if self._managed(ips[v])})
        for v in managed:
            lost = [r for r in routes if _version(r[0]) == v]
            for r in lost:
                del routes[r]
            if lost:
                problems.append(
                    Problem(
                        info.ref,
                        "PodNATOnManagedPod",
                        f"the pod's IPv{v} address {ips[v]} is the backend of a whole-IP Service, whose stateless"
                        " path carries its replies to the outside; its ports are not published on the node's"
                        f" IPv{v} address",
                    )
                )
        if problems:
            self._problems[key] = tuple(problems)
        if not routes:
            return None
        return _Claims(
            info.age,
            info.ref,
            tuple((r, ip, port) for r, (ip, port) in sorted(routes.items())),
            tuple(sorted({ip for r, (ip, _) in routes.items()})),
        )

    # ------------------------------------------------------------------ output

    @property
    def has_pods(self) -> bool:
        """Whether any pod of this node is annotated (a recheck can change nothing otherwise)."""
        return bool(self._infos)

    @property
    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for group in (self._parse_problems.values(), self._problems.values(), self._conflicts.values()):
            for problems in group:
                out += problems
        return out

    def pod_ports(self) -> list[PodPort]:
        """Every published port (the winners)."""
        out = []
        for route, key in self._winners.items():
            ip, port = self._target(route, key)
            out.append(PodPort(route[0], route[1], route[2], ip, port, self._of[key].ref))
        return sorted(out, key=lambda p: p.order)

    def self_pods(self) -> list[str]:
        """Pod IPs with a ``podnatself`` element."""
        return sorted(self._self_count, key=lambda ip: (_version(ip), int(ipaddress.ip_address(ip))))

    def owner(self, address: str, port: int | None = None) -> ObjectRef | None:
        """The Pod that published a port of ``address`` (the first one, when no port is given)."""
        for route, key in self._winners.items():
            if route[0] == address and (port is None or route[2] == port):
                return self._of[key].ref
        return None
