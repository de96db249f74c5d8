"""The cluster model (pure): what this node must do, as typed, immutable values.

Three stations turn a cluster into a table, each in a module of its own:

* :mod:`wholeip.core.objects` reads raw Kubernetes objects (untrusted dicts) into
  the values below, one object at a time: whether a Service is managed and in which
  mode, its external IPs, ports and source ranges; a slice's ready endpoints. It
  imports this module, never the other way round.
* this module declares those values and the rules that weigh objects against each
  other: which address may be an external IP (:func:`refusal`, the guard against
  CVE-2020-8554-style claims), which ports a per-port Service forwards
  (:func:`resolve_ports`), the cluster networks (:func:`collapse`);
* :mod:`wholeip.core.index` applies them to the whole cluster (conflicts between
  Services resolved oldest first, one backend per family, one egress IP per pod) and
  keeps the result current object by object; :func:`wholeip.core.index.build_state`
  is the same index filled at once.

Nothing raises on bad input: every object that cannot be used becomes a
:class:`Problem` (logged, and turned into a Kubernetes Event by the agent) and the
rest of the cluster is still modelled. That is what keeps one broken Service from
costing the rules of every other one. A :class:`ClusterState` is everything the
elements (:mod:`wholeip.core.elements`) need and nothing they would re-derive.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wholeip.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Mode(enum.Enum):
    """How a managed Service's external IP forwards traffic."""

    WHOLE_IP = "whole-ip"
    """Every port and protocol."""
    PER_PORT = "per-port"
    """Only the (protocol, port) pairs of ``spec.ports``."""


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Which Kubernetes object a problem or a mapping belongs to."""

    kind: str
    namespace: str
    name: str
    uid: str = field(default="", compare=False)

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something an object's owner must know. ``reason`` is a CamelCase Event reason."""

    ref: ObjectRef
    reason: str
    message: str
    warning: bool = True


@dataclass(frozen=True, slots=True, order=True)
class PortSpec:
    """One (protocol, port) a per-port Service forwards; the pod receives it on the same port."""

    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Backend:
    """The pod that receives a Service's traffic, for one address family."""

    address: IPAddress
    node_name: str | None


@dataclass(frozen=True, slots=True)
class Mapping1to1:
    """One external IP <-> one pod IP, the unit the datapath is made of."""

    service: ObjectRef
    external_ip: IPAddress
    pod_ip: IPAddress
    node_name: str | None
    mode: Mode
    allow_icmp: bool
    ports: tuple[PortSpec, ...]
    source_ranges: tuple[IPNetwork, ...]
    egress: bool
    """True when this mapping also gives the pod its egress source address (one external IP
    per pod and family: the oldest Service's first address)."""
    closed: bool = False
    """The Service lists ``loadBalancerSourceRanges`` but none of them is valid: no source
    outside the cluster is admitted (fail closed), as if its ranges held nobody."""


@dataclass(frozen=True, slots=True)
class LbRedirect:
    """One port of a LoadBalancer IP of a Service wholeip does not map 1:1, sent to that
    Service's ClusterIP of the same family, port unchanged (``--lb-to-clusterip``). Addresses
    as canonical text: the elements hold them so."""

    lb_ip: str
    protocol: str
    port: int
    cluster_ip: str
    service: ObjectRef


@dataclass(frozen=True, slots=True)
class PodPort:
    """One port a pod publishes on this node's address (the podnat annotation): conntrack
    DNAT from (address, protocol, port) to (pod IP, pod port). Addresses as canonical text."""

    address: str
    protocol: str
    port: int
    pod_ip: str
    pod_port: int
    pod: ObjectRef

    @property
    def order(self) -> tuple[int, int, str, int]:
        ip = ipaddress.ip_address(self.address)
        return (ip.version, int(ip), self.protocol, self.port)


@dataclass(frozen=True, slots=True)
class Frontend:
    """One front-end of a delegated Service on this node (a ClusterIP port, or a NodePort),
    with the endpoints this node sends it to. Addresses as canonical text."""

    service: ObjectRef
    family: int
    address: str | None
    """The ClusterIP; None for a NodePort (every address of this node)."""
    protocol: str
    port: int
    endpoints: tuple[tuple[str, int], ...]
    """(address, port) in address order; empty: refused (``closed``) or dropped."""
    affinity: bool = False
    """sessionAffinity ClientIP: the endpoint follows the client's address."""
    affinity_timeout: int = 10800
    """The timeout class applied (seconds, see :func:`wholeip.core.ruleset.timeout_class`)."""
    masquerade: bool = False
    """A NodePort with externalTrafficPolicy Cluster: the source becomes this node's."""
    local: bool = False
    """Only this node's endpoints (internal/externalTrafficPolicy Local): none here drops."""
    local_endpoints: tuple[str, ...] = ()
    """The endpoints on this node (a pod reaching itself through the Service is masqueraded)."""


@dataclass(frozen=True, slots=True, order=True)
class HealthCheck:
    """``spec.healthCheckNodePort`` of a Service with externalTrafficPolicy Local: answered on
    this node with the number of its local endpoints (200), or 503 with none."""

    port: int
    service: ObjectRef
    local_endpoints: int


class ProblemSource(Protocol):
    """What reports problems: a ClusterState, or the agent's live index."""

    @property
    def problems(self) -> Sequence[Problem]: ...

    def backend_nodes(self, namespace: str, name: str) -> Sequence[str | None]:
        """The nodes of the pods a Service's mappings point at."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything the compiler needs, and nothing it would have to re-derive."""

    mappings: tuple[Mapping1to1, ...]
    cluster_networks: tuple[IPNetwork, ...]
    problems: tuple[Problem, ...]
    managed_services: tuple[ObjectRef, ...]
    lb_redirects: tuple[LbRedirect, ...] = ()
    """``--lb-to-clusterip``: every LoadBalancer IP port sent to a ClusterIP, in address order."""
    local_pod_networks: tuple[IPNetwork, ...] = ()
    """``--lb-to-clusterip``: this node's pod CIDRs, the pods whose traffic is redirected."""
    pod_ports: tuple[PodPort, ...] = ()
    """Ports this node's pods publish on its address (the podnat annotation), in address order."""
    podnat_pods: tuple[str, ...] = ()
    """Pod IPs with published ports (masqueraded when they reach themselves that way)."""
    egress_snat: tuple[tuple[str, str], ...] = ()
    """Egress IP, on the node that holds it: (pod IP, egress IP) of every member."""
    egress_steer: tuple[tuple[str, int], ...] = ()
    """Egress IP, on another node: (pod IP, holder slot) of this node's members."""
    egress_services: int = 0
    """Egress Services served (a holder and at least one member)."""
    frontends: tuple[Frontend, ...] = ()
    """Delegated Services' ClusterIP ports and NodePorts, in a deterministic order."""
    health_checks: tuple[HealthCheck, ...] = ()
    """healthCheckNodePorts this node answers, by port."""

    def backend_nodes(self, namespace: str, name: str) -> Sequence[str | None]:
        """A scan of every mapping: for tools and tests. The agent asks its index."""
        return [m.node_name for m in self.mappings if (m.service.namespace, m.service.name) == (namespace, name)]


# --------------------------------------------------------------------------- networks


def collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The networks merged where they touch or overlap, IPv4 first, each family sorted."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class RawPort:
    """A Service port as written (``spec.ports[]``), before :func:`resolve_ports` weighs it
    against the EndpointSlices. Declared here, beside the rule that reads it, so that
    :mod:`wholeip.core.objects` (which makes it) imports this module and not the reverse."""

    name: str
    protocol: str
    port: int
    target: int | str


def resolve_ports(
    ref: ObjectRef, ports: Sequence[RawPort], slice_ports: Mapping[tuple[str, str], int], problems: list[Problem]
) -> tuple[PortSpec, ...]:
    """The (protocol, port) pairs a per-port Service forwards.

    The pod port comes from the EndpointSlice (its ports carry the Service port's
    name and the resolved target port, named or numeric), else from a numeric
    targetPort. The stateless datapath does not translate ports: rewriting the
    pod's source port on egress would also hit its own outbound flows that use
    that local port. A port whose target differs is therefore refused.
    """
    out: set[PortSpec] = set()
    for p in ports:
        target = slice_ports.get((p.name, p.protocol))
        if target is None:
            target = p.target if isinstance(p.target, int) else p.port
        if target != p.port:
            problems.append(
                Problem(
                    ref,
                    "PortTranslationUnsupported",
                    f"port {p.protocol.upper()}/{p.port} targets pod port {target}: an external IP forwards ports"
                    " unchanged, so this port is not forwarded; set targetPort equal to port",
                )
            )
            continue
        out.add(PortSpec(p.protocol, p.port))
    return tuple(sorted(out))


# --------------------------------------------------------------------------- guards


_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

_SPECIAL: tuple[tuple[IPNetwork, str], ...] = (
    # Order matters where ranges nest: the first match names the reason.
    (_V4("0.0.0.0/32"), "the unspecified address"),
    (_V4("0.0.0.0/8"), 'an address of "this network" (0.0.0.0/8)'),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V4("240.0.0.0/4"), "a reserved address (240.0.0.0/4)"),
    (_V6("::/128"), "the unspecified address"),
    (_V6("::1/128"), "a loopback address"),
    (_V6("::ffff:0:0/96"), "an IPv4-mapped IPv6 address"),
    (_V6("::/96"), "an IPv4-compatible IPv6 address (deprecated)"),
    (_V6("64:ff9b::/96"), "an address of the NAT64 well-known prefix 64:ff9b::/96"),
    (_V6("64:ff9b:1::/48"), "an address of the local-use NAT64 prefix 64:ff9b:1::/48"),
    (_V6("fec0::/10"), "a deprecated site-local address (fec0::/10)"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)
"""Addresses that are never anybody's public address, and what each range is. Python's
``is_*`` properties are not used: what they say about IPv4-mapped addresses changed
between Python versions (3.13 answers for the embedded IPv4 address)."""

_V4_SPECIAL_FIRST_OCTETS = frozenset({0, 127, 169, *range(224, 256)})
"""The first octets of every IPv4 range of ``_SPECIAL``; IPv6's start with 0, 0x64 or
0xfe80 and above (checked in :func:`special`)."""

_CARRIES_IPV4: tuple[IPNetwork, ...] = (_V6("::ffff:0:0/96"), _V6("::/96"), _V6("64:ff9b::/96"))
"""IPv6 spellings whose last 32 bits are an IPv4 address: mapped, compatible, NAT64."""


def ordinary_v4(number: int) -> bool:
    """Whether the IPv4 address with this number is certainly no special address (its first
    octet starts no range of ``_SPECIAL``): :func:`special` would say None. False says
    nothing: ask :func:`special`."""
    return number >> 24 not in _V4_SPECIAL_FIRST_OCTETS


def special(ip: IPAddress) -> str | None:
    """What kind of special address ``ip`` is (a noun phrase: "a loopback address"), or None
    for an ordinary unicast address. Every guard on addresses starts here, so an IPv4
    address cannot slip past one in an IPv6 spelling (``::ffff:127.0.0.1``)."""
    # Most addresses are ordinary: ruled out by their first bits, without the loop.
    if ip.version == 4:
        if int(ip) >> 24 not in _V4_SPECIAL_FIRST_OCTETS:
            return None
    elif 0 < int(ip) >> 112 < 0xFE80 and int(ip) >> 112 != 0x64:
        return None
    for net, kind in _SPECIAL:
        if ip.version == net.version and ip in net:
            return kind
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, IPv4-compatible or NAT64 (64:ff9b::/96) IPv6 address
    spells, else None (``::`` and ``::1`` are IPv6's own)."""
    if ip.version != 6 or ip in _V6("::/127"):
        return None
    if any(ip in net for net in _CARRIES_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def normalised(ip: IPAddress) -> IPAddress:
    """The address to compare ``ip`` with others as: the IPv4 address it spells (see
    :func:`embedded_ipv4`), else itself. A Node that lists ``::ffff:192.0.2.11`` has the
    address 192.0.2.11 as far as the guards are concerned."""
    return embedded_ipv4(ip) or ip


def _role(
    ip: IPAddress,
    *,
    cluster: tuple[IPNetwork, ...],
    node_ips: frozenset[IPAddress],
    control_plane: Mapping[IPAddress, str],
) -> str | None:
    """What the cluster uses ``ip`` for, if anything a guard protects (a noun phrase)."""
    kind = special(ip)
    if kind is not None:
        return kind
    if ip in control_plane:
        return f"the API server's address ({control_plane[ip]})"
    if ip in node_ips:
        return "a Node address"
    for net in cluster:
        if ip in net:
            return f"inside the cluster network {net}"
    return None


def refusal(
    ip: IPAddress,
    *,
    cluster: tuple[IPNetwork, ...],
    node_ips: frozenset[IPAddress],
    allowed: tuple[IPNetwork, ...] = (),
    control_plane: Mapping[IPAddress, str] = {},
) -> str | None:
    """Why an address may not be an external IP, or None when it may.

    ``control_plane``: the addresses this node reaches the API server at, each with where it
    was learnt. Mapping one of them would send the node's own traffic to the control plane
    (the agent's watches, the kubelet's) to a pod instead, and cut the node off.
    """
    kind = special(ip)
    if kind is not None:
        v4 = embedded_ipv4(ip)
        if v4 is None:
            return f"{ip} is {kind}"
        role = _role(v4, cluster=cluster, node_ips=node_ips, control_plane=control_plane)
        return f"{ip} is {kind} (of {v4}" + (f", {role})" if role else ")")
    role = _role(ip, cluster=cluster, node_ips=node_ips, control_plane=control_plane)
    if role is not None and role.startswith("inside"):
        return f"{ip} lies {role}"
    if role is not None:
        return f"{ip} is {role}"
    if allowed and not any(ip in net for net in allowed):
        return f"{ip} is outside the allowed external CIDRs ({', '.join(map(str, allowed))})"
    return None
