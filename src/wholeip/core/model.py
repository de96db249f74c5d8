"""Cluster model (pure): raw Kubernetes objects in, one typed, immutable ClusterState out.

Input is whatever ``kubectl get -o yaml`` or the informers' caches hold: plain
dicts, untrusted. Nothing here raises on bad input; every object that cannot
be used becomes a :class:`Problem` (logged, and turned into a Kubernetes Event
by the agent) and the rest of the cluster is still modelled. That is what
keeps one broken Service from costing the rules of every other one.

Decisions the model takes, in one place so the compiler stays mechanical:

* which Services are managed, and in which mode (whole IP or per port);
* which external IPs a Service may claim (guards against CVE-2020-8554-style
  claims, conflicts between Services resolved oldest-first);
* which ready endpoint is the backend, per address family;
* which addresses form the cluster networks (east-west traffic).
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from wholeip.names import ALLOW_ICMP_ANNOTATION, PROXY_NAME_LABEL, SERVICE_NAME_LABEL, WHOLE_IP_ANNOTATION
from wholeip.settings import IPNetwork, ModelSettings

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


# --------------------------------------------------------------------------- raw helpers


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _ref(obj: Mapping[str, Any], kind: str) -> ObjectRef:
    meta = _dict(obj.get("metadata"))
    return ObjectRef(kind, _str(meta.get("namespace")), _str(meta.get("name")), _str(meta.get("uid")))


def parse_ip(value: Any) -> IPAddress | None:
    """An IP address from a string, or None. Zone ids and surrounding spaces are refused."""
    # ipaddress takes "fe80::1%eth0" (zone id) since Python 3.9; nft does not.
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def parse_network(value: Any) -> IPNetwork | None:
    """A CIDR (host bits allowed, as Kubernetes allows them in source ranges), or None."""
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None


def _is_true(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "true"


# --------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    ref: ObjectRef
    created: str
    mode: Mode
    allow_icmp: bool
    external_ips: tuple[IPAddress, ...]
    ports: tuple[RawPort, ...]
    source_ranges: tuple[IPNetwork, ...]

    @property
    def age_key(self) -> tuple[int, str, str]:
        return (created_seconds(self.created), self.ref.namespace, self.ref.name)


_NEWEST = 1 << 62


def created_seconds(stamp: str) -> int:
    """A creationTimestamp as seconds since the epoch, for "oldest first" decisions. The
    API server writes RFC 3339 in UTC to the second; a missing or malformed timestamp
    counts as the newest. (The agent's index keeps this int, half the memory of the text.)"""
    if len(stamp) == 20 and stamp[10] == "T" and stamp[19] == "Z":
        try:
            return int(datetime.datetime.fromisoformat(stamp[:19] + "+00:00").timestamp())
        except ValueError:
            pass
    return _NEWEST


def _service_mode(
    meta: Mapping[str, Any], settings: ModelSettings, ref: ObjectRef, problems: list[Problem]
) -> Mode | None:
    annotations = _dict(meta.get("annotations"))
    labels = _dict(meta.get("labels"))
    raw = annotations.get(WHOLE_IP_ANNOTATION)
    labelled = labels.get(PROXY_NAME_LABEL) == settings.proxy_name and bool(settings.proxy_name)
    if raw is None:
        return Mode.PER_PORT if labelled else None
    value = _str(raw).strip().lower()
    if value == "true":
        return Mode.WHOLE_IP
    if value == "false":
        return Mode.PER_PORT if labelled else None
    problems.append(
        Problem(
            ref,
            "InvalidAnnotation",
            f'annotation {WHOLE_IP_ANNOTATION}={raw!r} is neither "true" nor "false"; '
            + ("forwarding only the listed ports" if labelled else "Service not managed"),
        )
    )
    return Mode.PER_PORT if labelled else None


@dataclass(frozen=True, slots=True)
class RawPort:
    name: str
    protocol: str
    port: int
    target: int | str


def _service_ports(spec: Mapping[str, Any], ref: ObjectRef, problems: list[Problem]) -> tuple[RawPort, ...]:
    ports: list[RawPort] = []
    for raw in _list(spec.get("ports")):
        entry = _dict(raw)
        protocol = _str(entry.get("protocol") or "TCP").upper()
        port = entry.get("port")
        # bool is an int to Python: without the check, "port: true" became port True (1), which nft refuses.
        if protocol not in ("TCP", "UDP", "SCTP") or type(port) is not int or not 0 < port < 65536:
            problems.append(Problem(ref, "InvalidPort", f"ignoring port {raw!r}: not TCP/UDP/SCTP 1-65535"))
            continue
        target = entry.get("targetPort", port)
        if not isinstance(target, int | str) or isinstance(target, bool):
            target = port
        ports.append(RawPort(_str(entry.get("name")), protocol.lower(), port, target))
    return tuple(ports)


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


def parse_service(obj: Mapping[str, Any], settings: ModelSettings, problems: list[Problem]) -> ServiceInfo | None:
    ref = _ref(obj, "Service")
    if not ref.name:
        problems.append(Problem(ref, "InvalidObject", "Service without metadata.name ignored"))
        return None
    meta = _dict(obj.get("metadata"))
    mode = _service_mode(meta, settings, ref, problems)
    if mode is None:
        return None
    if settings.allowed_namespaces and ref.namespace not in settings.allowed_namespaces:
        problems.append(
            Problem(
                ref,
                "NamespaceNotAllowed",
                f"namespace {ref.namespace!r} is not among the agent's allowed namespaces; Service not managed",
            )
        )
        return None
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    ips: list[IPAddress] = []
    candidates: list[tuple[str, Any]] = [
        ("status.loadBalancer.ingress[].ip", _dict(i).get("ip"))
        for i in _list(_dict(status.get("loadBalancer")).get("ingress"))
        if _dict(i).get("ip") is not None
    ]
    if settings.allow_spec_external_ips:
        candidates += [("spec.externalIPs", ip) for ip in _list(spec.get("externalIPs"))]
    for source, raw_ip in candidates:
        ip = parse_ip(raw_ip)
        if ip is None:
            problems.append(Problem(ref, "InvalidExternalIP", f"{source}: {raw_ip!r} is not an IP address"))
        elif ip not in ips:
            ips.append(ip)
    ranges: list[IPNetwork] = []
    for raw_range in _list(spec.get("loadBalancerSourceRanges")):
        net = parse_network(raw_range)
        if net is None:
            problems.append(
                Problem(
                    ref,
                    "InvalidSourceRange",
                    f"loadBalancerSourceRanges: {raw_range!r} is not a CIDR",
                )
            )
        elif net not in ranges:
            ranges.append(net)
    return ServiceInfo(
        ref=ref,
        created=_str(meta.get("creationTimestamp")),
        mode=mode,
        allow_icmp=_is_true(_dict(meta.get("annotations")).get(ALLOW_ICMP_ANNOTATION)),
        external_ips=tuple(ips),
        ports=_service_ports(spec, ref, problems) if mode is Mode.PER_PORT else (),
        source_ranges=collapse(ranges),
    )


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """What one EndpointSlice says about its Service: the ready addresses and the ports."""

    ref: ObjectRef
    service: tuple[str, str]
    """(namespace, Service name), from the ``kubernetes.io/service-name`` label."""
    family: int
    ready: Mapping[IPAddress, str | None]
    """Ready address -> node name."""
    ports: Mapping[tuple[str, str], int]
    """(port name, protocol) -> pod port."""
    problems: tuple[Problem, ...]


def parse_slice(eps: Mapping[str, Any]) -> SliceInfo | None:
    """One EndpointSlice, or None when it names no Service or carries no pod addresses."""
    ref = _ref(eps, "EndpointSlice")
    service = _str(_dict(_dict(eps.get("metadata")).get("labels")).get(SERVICE_NAME_LABEL))
    if not service:
        return None
    address_type = eps.get("addressType")
    if address_type not in ("IPv4", "IPv6"):
        return None  # FQDN slices carry no pod address
    family = 4 if address_type == "IPv4" else 6
    ports: dict[tuple[str, str], int] = {}
    for raw_port in _list(eps.get("ports")):
        entry = _dict(raw_port)
        number = entry.get("port")
        if isinstance(number, int) and not isinstance(number, bool):
            protocol = _str(entry.get("protocol") or "TCP").lower()
            ports[(_str(entry.get("name")), protocol)] = number
    ready: dict[IPAddress, str | None] = {}
    problems: list[Problem] = []
    for raw in _list(eps.get("endpoints")):
        endpoint = _dict(raw)
        conditions = _dict(endpoint.get("conditions"))
        # The API says a nil "ready" means ready; "serving and not terminating"
        # would admit terminating pods, which a 1:1 NAT must not pick.
        if conditions.get("ready") is False:
            continue
        addresses = _list(endpoint.get("addresses"))
        if not addresses:
            problems.append(Problem(ref, "EndpointWithoutAddress", "endpoint without addresses ignored"))
            continue
        ip = parse_ip(addresses[0])
        if ip is None or ip.version != family:
            problems.append(
                Problem(
                    ref,
                    "InvalidEndpointAddress",
                    f"endpoint address {addresses[0]!r} is not an {address_type} address",
                )
            )
            continue
        node = endpoint.get("nodeName")
        ready[ip] = node if isinstance(node, str) and node else None
    return SliceInfo(ref, (ref.namespace, service), family, ready, ports, tuple(problems))


# --------------------------------------------------------------------------- nodes


def node_networks(
    nodes: Iterable[Mapping[str, Any]], problems: list[Problem]
) -> tuple[list[IPNetwork], list[IPAddress]]:
    pod_cidrs: list[IPNetwork] = []
    node_ips: list[IPAddress] = []
    for node in nodes:
        ref = _ref(node, "Node")
        spec = _dict(node.get("spec"))
        raw_cidrs = _list(spec.get("podCIDRs")) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        for raw in raw_cidrs:
            net = parse_network(raw)
            if net is None:
                problems.append(Problem(ref, "InvalidPodCIDR", f"spec.podCIDRs: {raw!r} is not a CIDR", warning=True))
            else:
                pod_cidrs.append(net)
        for addr in _list(_dict(node.get("status")).get("addresses")):
            entry = _dict(addr)
            if entry.get("type") in ("InternalIP", "ExternalIP"):
                ip = parse_ip(entry.get("address"))
                if ip is not None:
                    node_ips.append(ip)
    return pod_cidrs, node_ips


def collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


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
