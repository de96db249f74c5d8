"""Egress IP: every pod of a Service leaves with the Service's LoadBalancer IP (pure).

A Service is an *egress Service* with the annotation ``networking.cozystack.io/egressIP:
"true"`` or MetalEG's label ``metaleg.de/rewriteSrcIP: "true"``. It is independent of our
other selection: its ports are served by whoever serves them; only its pods' outbound
traffic changes. Its IP is *held* by one node, the one that announces it:

* the MetalLB ``ServiceL2Status`` objects (``status.node`` of the one naming the Service;
  several: the first node name in order), where the cluster has that API;
* else the annotation ``networking.cozystack.io/egressNode: <node>``;
* else the Service is not served: ``EgressNodeUnknown``.

Its *members* are its ready endpoint pods inside the pod networks, both families; a pod
leaves with the Service's LoadBalancer IP of its own family (the first one listed; no
such IP: that family's egress is unchanged). Decisions, each a
:class:`~wholeip.core.model.Problem` on the Service (an Event):

* the annotation or the label has a value other than ``"true"``/``"false"``:
  ``InvalidEgressIPSelection``, not served;
* a member that is the backend of a whole-IP mapping keeps its whole IP (both ways):
  ``EgressPodHasWholeIP``;
* a pod that is a member of two egress Services leaves with the older one's IP
  (creation time, then namespace/name): ``EgressPodClaimedByOlderService`` on the other;
* an egress IP that is also one of our external IPs (a whole-IP or per-port mapping,
  whose stateless path would take its replies): ``EgressIPIsExternalIP``, that family not
  served; likewise an egress IP that is the address of a 1:1-mapped pod (the pod's node
  takes every packet to it from outside, replies included): ``EgressIPIsPodAddress``;
* on a node whose members must be steered: the holder is not on-link from this node
  (``EgressNodeNotOnLink``), has no address of the family (``EgressNodeNoAddress``),
  every mark value is in use (``EgressNoSlot``), or its rule or route could not be put in
  place (``EgressNotRouted``): this node leaves its pods' egress alone. These are this
  node's own findings (:data:`NODE_REASONS`): each node reports its own.

What each node programs (:mod:`wholeip.core.ruleset`, "egress IP"):

* the holder: ``egresssnat4/6``, pod IP -> egress IP for every member, wherever it runs
  (conntrack SNAT; the replies find the pod through conntrack);
* every other node: ``egresssteer4/6``, pod IP -> ``goto steer_slot_<n>`` for its own
  members, where ``n`` is the holder's *slot* on this node: the mark the packet gets and
  the routing table the policy routing keeps for that holder. Slots are node-local and
  stable (:func:`wholeip.core.steering.assign_slots`): a holder keeps its slot while it
  holds anything for this node's pods.

Incremental like the rest of the index: a changed Service, slice or status re-resolves
that Service; the pods it had and has are re-resolved; each pod's elements are a pure
function of its resolution and are diffed against what it had.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from wholeip.core.model import ObjectRef, Problem
from wholeip.core.objects import RawObject, created_seconds, parse_ip
from wholeip.core.steering import Holder, assign_slots
from wholeip.names import (
    EGRESS_IP_ANNOTATION,
    EGRESS_NODE_ANNOTATION,
    EGRESS_SNAT,
    EGRESS_STEER,
    METALEG_LABEL,
    steer_slot_chain,
)
from wholeip.nft.doc import Elem

ServiceKey = tuple[str, str]
NODE_REASONS = frozenset({"EgressNodeNotOnLink", "EgressNodeNoAddress", "EgressNoSlot", "EgressNotRouted"})
"""Problems a node finds about its own steering: each node reports its own (the messages
name the node), not only the node that reports the Service's other problems."""
Endpoints = Mapping[int, Iterable[tuple[str, str | None]]]
"""Family -> the Service's ready endpoints (pod IP, node) inside the pod networks."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _version(address: str) -> int:
    return 6 if ":" in address else 4


@dataclass(frozen=True, slots=True)
class EgressService:
    """What an egress Service says on its own."""

    ref: ObjectRef
    age: tuple[int, str, str]
    """(creation time in seconds, namespace, name): the older Service wins a pod."""
    ips: tuple[str, ...]
    """The first LoadBalancer IP of each family, canonical text, IPv4 first."""
    node: str | None
    """The ``egressNode`` annotation."""

    def ip(self, version: int) -> str | None:
        return next((ip for ip in self.ips if _version(ip) == version), None)


def parse_egress_service(obj: RawObject, problems: list[Problem]) -> EgressService | None:
    """An egress Service, or None (not selected, or a selection value that is no boolean:
    its Problem is added)."""
    meta = _dict(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    annotations, labels = _dict(meta.get("annotations")), _dict(meta.get("labels"))
    if EGRESS_IP_ANNOTATION not in annotations and METALEG_LABEL not in labels:
        return None  # most Services: decided before anything else is made
    ref = ObjectRef("Service", str(meta.get("namespace") or ""), name, str(meta.get("uid") or ""))
    selected = False
    for where, values, key in (
        ("annotation", annotations, EGRESS_IP_ANNOTATION),
        ("label", labels, METALEG_LABEL),
    ):
        if key not in values:
            continue
        raw = values[key]
        if raw == "true":
            selected = True
        elif raw != "false":
            problems.append(
                Problem(
                    ref,
                    "InvalidEgressIPSelection",
                    f'{where} {key}={raw!r} is neither "true" nor "false" (exactly, in lower case);'
                    " the Service's pods keep their own egress",
                )
            )
            return None
    if not selected:
        return None
    ips: dict[int, str] = {}
    ingress = _dict(_dict(obj.get("status")).get("loadBalancer")).get("ingress")
    for entry in ingress if isinstance(ingress, list) else []:
        ip = parse_ip(_dict(entry).get("ip"))
        if ip is not None:
            ips.setdefault(ip.version, str(ip))
    node = _dict(meta.get("annotations")).get(EGRESS_NODE_ANNOTATION)
    return EgressService(
        ref,
        (created_seconds(str(meta.get("creationTimestamp") or "")), ref.namespace, ref.name),
        tuple(ips[v] for v in sorted(ips)),
        node if isinstance(node, str) and node else None,
    )


def parse_l2_status(obj: RawObject) -> tuple[ServiceKey, str] | None:
    """A MetalLB ServiceL2Status: ((namespace, name) of the Service, the announcing node)."""
    status = _dict(obj.get("status"))
    ns, name, node = status.get("serviceNamespace"), status.get("serviceName"), status.get("node")
    if not all(isinstance(x, str) and x for x in (ns, name, node)):
        return None
    return (str(ns), str(name)), str(node)


def node_addresses(nodes: Iterable[RawObject]) -> dict[str, tuple[str | None, str | None]]:
    """Node name -> its first InternalIP of each family (else ExternalIP): where a steered
    packet is sent."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for node in nodes:
        name = _dict(node.get("metadata")).get("name")
        if not isinstance(name, str):
            continue
        found: dict[int, str] = {}
        addresses = _dict(node.get("status")).get("addresses")
        for kind in ("InternalIP", "ExternalIP"):
            for entry in addresses if isinstance(addresses, list) else []:
                ip = parse_ip(_dict(entry).get("address")) if _dict(entry).get("type") == kind else None
                if ip is not None:
                    found.setdefault(ip.version, str(ip))
        out[name] = (found.get(4), found.get(6))
    return out


class Member(NamedTuple):
    """One pod's egress as resolved."""

    service: ServiceKey
    egress_ip: str
    node: str | None
    """The pod's node."""


def member_elements(
    pod: str, member: Member, *, holder: str, node_name: str, slot: int
) -> tuple[tuple[str, Elem], ...]:
    """The elements of one member on node ``node_name`` (``slot``: its holder's, 0 for none)."""
    v = _version(pod)
    if holder == node_name:
        return ((EGRESS_SNAT[v], (pod, member.egress_ip)),)
    if member.node == node_name and slot:
        return ((EGRESS_STEER[v], (pod, f"goto {steer_slot_chain(slot)}")),)
    return ()


class EgressIndex:
    """The egress Services, their holders and members, updated object by object. Writes into
    the caller's live element sets and reports what it touched."""

    def __init__(
        self,
        *,
        node_name: str,
        nodes: Iterable[RawObject],
        elements: dict[str, set[Elem]],
        endpoints: Callable[[ServiceKey], Endpoints],
        whole_ip: Callable[[str], bool],
        external: Callable[[str], bool],
        slot_capacity: int,
    ) -> None:
        self.node_name = node_name
        self.addresses = node_addresses(nodes)
        self._elements = elements
        self._endpoints = endpoints
        self._whole_ip = whole_ip
        """Pod IP -> is it the backend of a whole-IP mapping (its whole IP wins)."""
        self._external = external
        """Address -> is it one of our external IPs (mapped 1:1)."""
        self._capacity = slot_capacity
        self._services: dict[ServiceKey, EgressService] = {}
        self._parse_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        self._statuses: dict[str, tuple[ServiceKey, str]] = {}
        self._statuses_of: dict[ServiceKey, set[str]] = {}
        self._holders: dict[ServiceKey, str] = {}
        self._candidates: dict[ServiceKey, tuple[tuple[str, str | None], ...]] = {}
        """Service -> its member candidates (pod IP, node) with an egress IP of their family."""
        self._claims: dict[str, set[ServiceKey]] = {}
        self._members: dict[str, Member] = {}
        self._pod_elements: dict[str, tuple[tuple[str, Elem], ...]] = {}
        self._service_problems: dict[ServiceKey, tuple[Problem, ...]] = {}
        self._pod_problems: dict[str, tuple[Problem, ...]] = {}
        self._slots: dict[str, int] = {}
        self._not_on_link: frozenset[str] = frozenset()
        self._steered: frozenset[tuple[str, int]] | None = None
        """(holder, IP version) with routing in place; None: not known (assumed)."""
        self._steer_problems: tuple[Problem, ...] = ()
        self._served: dict[ServiceKey, int] = {}
        """Service -> how many pods leave with its IP."""
        self._local_holder: dict[str, str] = {}
        """This node's members whose IP another node holds -> that holder."""
        self._wanted: dict[tuple[str, int], int] = {}
        """(holder, IP version) -> how many of this node's members of that family it holds the
        IP of (those holders get slots)."""

    # ------------------------------------------------------------------ input

    def update(
        self,
        touched: dict[str, set[Elem]],
        *,
        services: Mapping[ServiceKey, Iterable[RawObject]] = {},
        endpoints_of: Iterable[ServiceKey] = (),
        statuses: Mapping[str, RawObject | None] = {},
        pods: Iterable[str] = (),
        external_ips: Iterable[str] = (),
    ) -> None:
        """Apply changed Services (none listed: deleted), Services whose endpoints changed,
        changed ServiceL2Status objects (None: deleted), pods whose whole-IP mappings
        changed, and external IPs whose mapping changed."""
        # Only an egress Service, now or before, has anything to re-resolve: what is kept
        # per Service (candidates, holders, problems) is kept for those only.
        dirty: set[ServiceKey] = set()
        for key, objs in services.items():
            problems: list[Problem] = []
            parsed = [s for s in (parse_egress_service(o, problems) for o in objs) if s is not None]
            self._parse_problems.pop(key, None)
            if problems:
                self._parse_problems[key] = tuple(problems)
            if parsed:
                self._services[key] = min(parsed, key=lambda s: (s.age, s.ref.uid))
                dirty.add(key)
            elif self._services.pop(key, None) is not None:
                dirty.add(key)
        dirty.update(key for key in endpoints_of if key in self._services)
        for skey, obj in statuses.items():
            old = self._statuses.pop(skey, None)
            if old is not None:
                self._statuses_of[old[0]].discard(skey)
                if not self._statuses_of[old[0]]:
                    del self._statuses_of[old[0]]
                dirty.add(old[0])
            new = parse_l2_status(obj) if obj is not None else None
            if new is not None:
                self._statuses[skey] = new
                self._statuses_of.setdefault(new[0], set()).add(skey)
                dirty.add(new[0])
        # An external IP or a 1:1-mapped pod that changed may be an egress IP (refused).
        mapped = set(pods)
        changed = mapped.union(external_ips)
        if changed:
            dirty.update(k for k, s in self._services.items() if changed.intersection(s.ips))
        dirty_pods: set[str] = {p for p in mapped if p in self._claims}
        for key in dirty:
            for pod, _ in self._candidates.pop(key, ()):
                self._claims[pod].discard(key)
                if not self._claims[pod]:
                    del self._claims[pod]
                dirty_pods.add(pod)
            self._holders.pop(key, None)
            self._service_problems.pop(key, None)
            svc = self._services.get(key)
            if svc is not None:
                self._resolve_service(key, svc)
                for pod, _ in self._candidates.get(key, ()):
                    self._claims.setdefault(pod, set()).add(key)
                    dirty_pods.add(pod)
        for pod in dirty_pods:
            self._resolve_pod(pod)
        self._refresh(dirty_pods, touched)

    def set_nodes(self, nodes: Iterable[RawObject], touched: dict[str, set[Elem]]) -> None:
        """The Nodes changed: where each holder is reached (every member is re-derived when
        an address changed)."""
        addresses = node_addresses(nodes)
        if addresses != self.addresses:
            self.addresses = addresses
            self._refresh(set(), touched, everything=True)

    def set_routing(
        self,
        not_on_link: Iterable[str],
        touched: dict[str, set[Elem]],
        *,
        steered: Iterable[tuple[str, int]] | None = None,
    ) -> None:
        """What the policy routing found: the holders not on-link from this node, and (when
        known) the (holder, IP version) pairs whose rule and route are in place. A member
        whose holder's routing is not in place keeps its own egress."""
        new = frozenset(not_on_link)
        routed = frozenset(steered) if steered is not None else None
        if new != self._not_on_link or routed != self._steered:
            self._not_on_link = new
            self._steered = routed
            self._refresh(set(), touched, everything=True)

    def _resolve_service(self, key: ServiceKey, svc: EgressService) -> None:
        problems: list[Problem] = []
        l2 = sorted(self._statuses[s][1] for s in self._statuses_of.get(key, ()))
        holder = l2[0] if l2 else svc.node
        if holder is None:
            problems.append(
                Problem(
                    svc.ref,
                    "EgressNodeUnknown",
                    "no MetalLB ServiceL2Status names the node that announces this Service's IP, and the"
                    f" annotation {EGRESS_NODE_ANNOTATION} is not set; its pods keep their own egress",
                )
            )
        elif len(set(l2)) > 1:
            problems.append(
                Problem(
                    svc.ref,
                    "EgressNodeAmbiguous",
                    f"ServiceL2Status objects name several nodes ({', '.join(sorted(set(l2)))}); using {holder}",
                )
            )
        if not svc.ips:
            problems.append(
                Problem(svc.ref, "NoExternalIP", "egress Service has no status.loadBalancer.ingress IP yet", False)
            )
        candidates: list[tuple[str, str | None]] = []
        if holder is not None:
            self._holders[key] = holder
            endpoints = self._endpoints(key)
            for v in (4, 6):
                ip = svc.ip(v)
                if ip is None:
                    continue
                if self._external(ip):
                    problems.append(
                        Problem(
                            svc.ref,
                            "EgressIPIsExternalIP",
                            f"{ip} is mapped 1:1 to a pod (a whole-IP or per-port Service), whose stateless path"
                            f" takes every packet to it; the pods' IPv{v} egress is unchanged",
                        )
                    )
                    continue
                if self._whole_ip(ip):
                    problems.append(
                        Problem(
                            svc.ref,
                            "EgressIPIsPodAddress",
                            f"{ip} is the address of a pod mapped 1:1 (the backend of a whole-IP or per-port"
                            " Service), whose node takes every packet to it from outside for that pod; the pods'"
                            f" IPv{v} egress is unchanged",
                        )
                    )
                    continue
                candidates += sorted(endpoints.get(v, ()))
        if candidates:
            self._candidates[key] = tuple(candidates)
        if problems:
            self._service_problems[key] = tuple(problems)

    def _resolve_pod(self, pod: str) -> None:
        old = self._members.pop(pod, None)
        if old is not None:
            self._served[old.service] -= 1
            if not self._served[old.service]:
                del self._served[old.service]
        self._pod_problems.pop(pod, None)
        keys = sorted(self._claims.get(pod, ()), key=lambda k: (self._services[k].age, self._services[k].ref.uid))
        if not keys:
            return
        problems: list[Problem] = []
        winner = self._services[keys[0]]
        if self._whole_ip(pod):
            problems += [
                Problem(
                    self._services[k].ref,
                    "EgressPodHasWholeIP",
                    f"pod {pod} is the backend of a whole-IP or per-port Service and keeps that external IP"
                    " both ways; it does not leave with this Service's IP",
                )
                for k in keys
            ]
        else:
            node = next(n for p, n in self._candidates[keys[0]] if p == pod)
            egress_ip = winner.ip(_version(pod))
            assert egress_ip is not None  # a candidate has an egress IP of its family
            self._members[pod] = Member(keys[0], egress_ip, node)
            self._served[keys[0]] = self._served.get(keys[0], 0) + 1
            problems += [
                Problem(
                    self._services[k].ref,
                    "EgressPodClaimedByOlderService",
                    f"pod {pod} already leaves with the IP of the older egress Service"
                    f" {winner.ref.namespace}/{winner.ref.name}",
                )
                for k in keys[1:]
            ]
        if problems:
            self._pod_problems[pod] = tuple(problems)

    def _refresh(self, pods: set[str], touched: dict[str, set[Elem]], *, everything: bool = False) -> None:
        """Re-assign the slots, then re-derive the elements of ``pods`` (all of them when a
        slot or the on-link verdicts changed) and write the difference."""
        for pod in pods:
            old_holder = self._local_holder.pop(pod, None)
            if old_holder is not None:
                key = (old_holder, _version(pod))
                self._wanted[key] -= 1
                if not self._wanted[key]:
                    del self._wanted[key]
            member = self._members.get(pod)
            if member is not None and member.node == self.node_name:
                holder = self._holders[member.service]
                if holder != self.node_name:
                    self._local_holder[pod] = holder
                    key = (holder, _version(pod))
                    self._wanted[key] = self._wanted.get(key, 0) + 1
        wanted = {holder for holder, _ in self._wanted}
        slots = assign_slots(wanted, self._slots, self._capacity) if wanted else {}
        if slots != self._slots:
            self._slots = slots
            everything = True
        if everything:
            pods = pods | set(self._members) | set(self._pod_elements)
        if everything or pods:
            self._steer_problems = self._steering_problems()
        for pod in pods:
            old = self._pod_elements.pop(pod, ())
            member = self._members.get(pod)
            new: tuple[tuple[str, Elem], ...] = ()
            if member is not None:
                holder = self._holders[member.service]
                slot = self._slot(holder, pod)
                new = member_elements(pod, member, holder=holder, node_name=self.node_name, slot=slot)
            if new:
                self._pod_elements[pod] = new
            for name, elem in old:
                if (name, elem) not in new:
                    self._elements[name].discard(elem)
                    touched.setdefault(name, set()).add(elem)
            for name, elem in new:
                if (name, elem) not in old:
                    self._elements[name].add(elem)
                    touched.setdefault(name, set()).add(elem)

    def _slot(self, holder: str, pod: str) -> int:
        """The slot this node's packets from ``pod`` are marked with for ``holder`` (0: not steered)."""
        v = _version(pod)
        if holder in self._not_on_link or self._address(holder, v) is None:
            return 0
        if self._steered is not None and (holder, v) not in self._steered:
            return 0
        return self._slots.get(holder, 0)

    def _address(self, node: str, version: int) -> str | None:
        four, six = self.addresses.get(node, (None, None))
        return four if version == 4 else six

    def _troubled(self, holder: str, version: int) -> bool:
        """Whether steering a family to ``holder`` falls short in any way (a problem to report)."""
        return (
            holder in self._not_on_link
            or not self._slots.get(holder)
            or self._address(holder, version) is None
            or (self._steered is not None and (holder, version) not in self._steered)
        )

    def _steering_problems(self) -> tuple[Problem, ...]:
        troubled = {hv for hv in self._wanted if self._troubled(*hv)}
        if not troubled:
            return ()
        families: dict[ServiceKey, set[int]] = {}
        for pod, holder in self._local_holder.items():
            if (holder, _version(pod)) in troubled:
                families.setdefault(self._members[pod].service, set()).add(_version(pod))
        out: list[Problem] = []
        for key in sorted(families):
            holder = self._holders[key]
            ref = self._services[key].ref
            versions = sorted(families[key])
            if holder in self._not_on_link:
                out.append(
                    Problem(
                        ref,
                        "EgressNodeNotOnLink",
                        f"the holder {holder} is not on-link from node {self.node_name} (the nodes must share a"
                        " link); this node's pods of the Service keep their own egress",
                    )
                )
                continue
            if not self._slots.get(holder):
                out.append(
                    Problem(
                        ref,
                        "EgressNoSlot",
                        f"node {self.node_name} steers to {self._capacity} holders already (the mark bits allow no"
                        " more); this node's pods of the Service keep their own egress",
                    )
                )
                continue
            missing = [v for v in versions if self._address(holder, v) is None]
            if missing:
                out.append(
                    Problem(
                        ref,
                        "EgressNodeNoAddress",
                        f"node {self.node_name}: the holder {holder} has no IPv{missing[0]} address in its Node"
                        f" object; this node's pods keep their own IPv{missing[0]} egress",
                    )
                )
            unrouted = [v for v in versions if v not in missing]
            if unrouted:
                out.append(
                    Problem(
                        ref,
                        "EgressNotRouted",
                        f"node {self.node_name}: the policy routing to the holder {holder} (IPv{unrouted[0]}) is not"
                        " in place (see the agent's log); this node's pods keep their own egress meanwhile",
                    )
                )
        return tuple(out)

    # ------------------------------------------------------------------ output

    @property
    def problems(self) -> list[Problem]:
        out: list[Problem] = list(self._steer_problems)
        for group in (self._parse_problems.values(), self._service_problems.values(), self._pod_problems.values()):
            for problems in group:
                out += problems
        return out

    def routes(self) -> dict[int, Holder]:
        """Slot -> the holder this node steers to with it (for the policy routing)."""
        return {
            slot: Holder(node, *self.addresses.get(node, (None, None))) for node, slot in self._slots.items() if slot
        }

    def served(self) -> int:
        """Egress Services with a holder and at least one member."""
        return len(self._served)

    def counts(self) -> tuple[int, int]:
        """(steered, SNATed) member addresses on this node: the elements of each kind."""
        return (
            sum(len(self._elements[n]) for n in EGRESS_STEER.both),
            sum(len(self._elements[n]) for n in EGRESS_SNAT.both),
        )

    def snat(self) -> list[tuple[str, str]]:
        """(pod IP, egress IP) of the ``egresssnat`` elements."""
        return sorted(
            ((pod, m.egress_ip) for pod, m in self._members.items() if self._holders[m.service] == self.node_name),
            key=_order,
        )

    def steer(self) -> list[tuple[str, int]]:
        """(pod IP, slot) of the ``egresssteer`` elements."""
        out = []
        for pod, els in self._pod_elements.items():
            if any(name in EGRESS_STEER.both for name, _ in els):
                out.append((pod, self._slot(self._holders[self._members[pod].service], pod)))
        return sorted(out, key=_order)

    def holder(self, namespace: str, name: str) -> str | None:
        return self._holders.get((namespace, name))


def _order(item: tuple[str, Any]) -> tuple[int, int]:
    ip = ipaddress.ip_address(item[0])
    return (ip.version, int(ip))
