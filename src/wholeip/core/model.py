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


def refusal(
    ip: IPAddress,
    *,
    cluster: tuple[IPNetwork, ...],
    node_ips: frozenset[IPAddress],
    allowed: tuple[IPNetwork, ...] = (),
) -> str | None:
    """Why an address may not be an external IP, or None when it may."""
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return f"{ip} is a loopback, link-local, multicast or unspecified address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address"
    if ip in node_ips:
        return f"{ip} is a Node address"
    for net in cluster:
        if ip in net:
            return f"{ip} lies inside the cluster network {net}"
    if allowed and not any(ip in net for net in allowed):
        return f"{ip} is outside the allowed external CIDRs ({', '.join(map(str, allowed))})"
    return None
