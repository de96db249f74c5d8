"""Raw Kubernetes objects (JSON dicts as the API server sends them) -> typed values.

Input is whatever ``kubectl get -o yaml`` or the informers' caches hold: plain dicts,
untrusted. Tolerant by design: a field of the wrong type reads as absent, never
raises; what makes an object unusable, or part of it, is reported as a
:class:`~wholeip.core.model.Problem` on the list the caller passes in, and the rest of
the object is still read.

Each parser reads one object on its own and decides only what that object says by
itself: whether a Service is managed and in which mode (:data:`~wholeip.names.WHOLE_IP_ANNOTATION`,
the proxy-name label), which of its addresses and ranges are well-formed, which
endpoints of a slice are ready. What depends on several objects (who wins an
external IP, which pod is the backend, which ports resolve) is the model's and the
index's. The values are the model's types (this module imports
:mod:`wholeip.core.model`, never the reverse) and small records of their own
(:class:`ServiceInfo`, :class:`SliceInfo`).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

from wholeip.core.compact import address_of, ipv4_number
from wholeip.core.model import (
    IPAddress,
    Mode,
    ObjectRef,
    Problem,
    RawPort,
    collapse,
    embedded_ipv4,
    normalised,
    ordinary_v4,
    special,
)
from wholeip.names import ALLOW_ICMP_ANNOTATION, PROXY_NAME_LABEL, SERVICE_NAME_LABEL, WHOLE_IP_ANNOTATION
from wholeip.settings import IPNetwork, ModelSettings

RawObject: TypeAlias = Mapping[str, Any]
"""A Kubernetes object as decoded JSON: untyped by nature, read only through the parsers
below (and :func:`namespaced_name`)."""


def namespaced_name(obj: RawObject) -> tuple[str, str]:
    """``(namespace, name)`` of an object; ``""`` for what is missing (cluster-scoped: no namespace)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else "", name if isinstance(name, str) else "")


def split_key(key: str) -> tuple[str, str]:
    """An informer's cache key (``namespace/name``, or ``name``) -> ``(namespace, name)``."""
    namespace, _, name = key.rpartition("/")
    return (namespace, name)


# --------------------------------------------------------------------------- raw helpers


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _ref(obj: RawObject, kind: str) -> ObjectRef:
    meta = _dict(obj.get("metadata"))
    return ObjectRef(kind, _str(meta.get("namespace")), _str(meta.get("name")), _str(meta.get("uid")))


def parse_ip(value: Any) -> IPAddress | None:
    """An IP address from a string, or None. Zone ids and surrounding spaces are refused."""
    # ipaddress takes "fe80::1%eth0" (zone id) since Python 3.9; nft does not.
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return address_of(value)
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


def _flag_annotation(
    annotations: Mapping[str, Any], key: str, ref: ObjectRef, problems: list[Problem], *, otherwise: str
) -> bool | None:
    """A boolean annotation, read the Kubernetes way: exactly ``"true"`` or ``"false"``.

    None when absent. Any other value ("TRUE", " true", "yes", a number) is reported as
    ``InvalidAnnotation`` and read as absent: a value that only looks true to a lenient
    reader must not switch on a whole IP, and the owner learns why it did not.
    ``otherwise`` says what the Service gets instead.
    """
    if key not in annotations:
        return None
    raw = annotations[key]
    if raw == "true":
        return True
    if raw == "false":
        return False
    problems.append(
        Problem(
            ref,
            "InvalidAnnotation",
            f'annotation {key}={raw!r} is neither "true" nor "false" (exactly, in lower case); read as absent: '
            + otherwise,
        )
    )
    return None


# --------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What one managed Service says on its own (unmanaged Services parse to None)."""

    ref: ObjectRef
    created: str
    mode: Mode
    allow_icmp: bool
    external_ips: tuple[IPAddress, ...]
    ports: tuple[RawPort, ...]
    source_ranges: tuple[IPNetwork, ...]
    closed: bool = False
    """``loadBalancerSourceRanges`` are listed but none is valid: admit no outside source."""

    @property
    def age_key(self) -> tuple[int, str, str]:
        return (created_seconds(self.created), self.ref.namespace, self.ref.name)


NEWEST = 1 << 62
"""What :func:`created_seconds` makes of a missing or malformed creationTimestamp."""


def created_seconds(stamp: str) -> int:
    """A creationTimestamp as seconds since the epoch, for "oldest first" decisions. The
    API server writes RFC 3339 in UTC to the second; a missing or malformed timestamp
    counts as the newest. (The agent's index keeps this int, half the memory of the text.)"""
    if len(stamp) == 20 and stamp[10] == "T" and stamp[19] == "Z":
        try:
            return int(datetime.datetime.fromisoformat(stamp[:19] + "+00:00").timestamp())
        except ValueError:
            pass
    return NEWEST


def _service_mode(
    meta: Mapping[str, Any], settings: ModelSettings, ref: ObjectRef, problems: list[Problem]
) -> Mode | None:
    labels = _dict(meta.get("labels"))
    labelled = labels.get(PROXY_NAME_LABEL) == settings.proxy_name and bool(settings.proxy_name)
    whole = _flag_annotation(
        _dict(meta.get("annotations")),
        WHOLE_IP_ANNOTATION,
        ref,
        problems,
        otherwise="forwarding only the listed ports" if labelled else "Service not managed",
    )
    if whole:
        return Mode.WHOLE_IP
    return Mode.PER_PORT if labelled else None


def _unusable_port(ref: ObjectRef, raw: Any) -> Problem:
    """A Service port neither reader serves. Both say it in these words, so that the index
    reports it once for a Service both read (a labelled LoadBalancer Service)."""
    return Problem(ref, "InvalidPort", f"ignoring port {raw!r}: not TCP/UDP/SCTP 1-65535")


def _service_ports(spec: Mapping[str, Any], ref: ObjectRef, problems: list[Problem]) -> tuple[RawPort, ...]:
    ports: list[RawPort] = []
    for raw in _list(spec.get("ports")):
        entry = _dict(raw)
        protocol = _str(entry.get("protocol") or "TCP").upper()
        port = entry.get("port")
        # bool is an int to Python: without the check, "port: true" became port True (1), which nft refuses.
        if protocol not in ("TCP", "UDP", "SCTP") or type(port) is not int or not 0 < port < 65536:
            problems.append(_unusable_port(ref, raw))
            continue
        target = entry.get("targetPort", port)
        if not isinstance(target, int | str) or isinstance(target, bool):
            target = port
        ports.append(RawPort(_str(entry.get("name")), protocol.lower(), port, target))
    return tuple(ports)


def parse_service(obj: RawObject, settings: ModelSettings, problems: list[Problem]) -> ServiceInfo | None:
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
    if not ips and mode is Mode.PER_PORT and spec.get("type") != "LoadBalancer":
        # Labelled, but no LoadBalancer: a ClusterIP or NodePort Service delegated to us
        # (:mod:`wholeip.core.delegated` serves those), with no external IP to wait for.
        return None
    ranges: list[IPNetwork] = []
    raw_ranges = _list(spec.get("loadBalancerSourceRanges"))
    invalid: list[Any] = []
    for raw_range in raw_ranges:
        net = parse_network(raw_range)
        if net is None:
            invalid.append(raw_range)
        elif net not in ranges:
            ranges.append(net)
    # Fail closed: ranges that were meant to restrict the sources must never end up
    # admitting everybody because none of them could be read.
    closed = bool(raw_ranges) and not ranges
    for raw_range in invalid:
        problems.append(
            Problem(
                ref,
                "InvalidSourceRange",
                f"loadBalancerSourceRanges: {raw_range!r} is not a CIDR; "
                + (
                    "no entry is valid, so no source outside the cluster is admitted"
                    if closed
                    else "ignored, the valid entries still apply"
                ),
            )
        )
    return ServiceInfo(
        ref=ref,
        created=_str(meta.get("creationTimestamp")),
        mode=mode,
        allow_icmp=bool(
            _flag_annotation(
                _dict(meta.get("annotations")),
                ALLOW_ICMP_ANNOTATION,
                ref,
                problems,
                otherwise="ICMP echo requests are dropped"
                if mode is Mode.PER_PORT
                else "it has no effect in whole-IP mode",
            )
        ),
        external_ips=tuple(ips),
        ports=_service_ports(spec, ref, problems) if mode is Mode.PER_PORT else (),
        source_ranges=collapse(ranges),
        closed=closed,
    )


class ServiceRead(NamedTuple):
    """What :func:`read_service` reads of a managed Service: :class:`ServiceInfo` without
    source ranges (it reads none), its external IPs as canonical text."""

    namespace: str
    name: str
    uid: str
    created: str
    mode: Mode
    allow_icmp: bool
    external_ips: tuple[str, ...]
    ports: tuple[RawPort, ...]


def read_service(obj: RawObject, settings: ModelSettings) -> ServiceRead | Literal[False] | None:
    """:func:`parse_service` for the Services nearly every cluster is made of, at a fraction
    of its cost (no reference, no address objects, nothing to report): what it would return
    (as a :class:`ServiceRead`), or None where it returns None, *when it would report no
    problem*. False otherwise, and for a Service that lists source ranges: ask
    :func:`parse_service`. It reads the same fields the same way, and gives up wherever
    :func:`parse_service` would say something (tests/unit/test_fastparse.py holds the two
    to the same answers on hostile objects)."""
    meta = _dict(obj.get("metadata"))
    name = _str(meta.get("name"))
    if not name:
        return False  # InvalidObject
    namespace = _str(meta.get("namespace"))
    annotations = _dict(meta.get("annotations"))
    labels = _dict(meta.get("labels"))
    labelled = labels.get(PROXY_NAME_LABEL) == settings.proxy_name and bool(settings.proxy_name)
    if WHOLE_IP_ANNOTATION in annotations:
        whole = annotations[WHOLE_IP_ANNOTATION]
        if whole == "true":
            mode = Mode.WHOLE_IP
        elif whole == "false" and labelled:
            mode = Mode.PER_PORT
        elif whole == "false":
            return None
        else:
            return False  # InvalidAnnotation
    elif labelled:
        mode = Mode.PER_PORT
    else:
        return None
    if settings.allowed_namespaces and namespace not in settings.allowed_namespaces:
        return False  # NamespaceNotAllowed
    spec = _dict(obj.get("spec"))
    ips: list[str] = []
    candidates = [
        ip
        for i in _list(_dict(_dict(obj.get("status")).get("loadBalancer")).get("ingress"))
        if (ip := _dict(i).get("ip")) is not None
    ]
    if settings.allow_spec_external_ips:
        candidates += _list(spec.get("externalIPs"))
    for raw_ip in candidates:
        if type(raw_ip) is not str:
            return False  # InvalidExternalIP
        if ipv4_number(raw_ip) is not None:
            text = raw_ip  # the octets ipv4_number takes are canonical
        else:
            ip = parse_ip(raw_ip)
            if ip is None:
                return False  # InvalidExternalIP
            text = str(ip)
        if text not in ips:
            ips.append(text)
    if not ips and mode is Mode.PER_PORT and spec.get("type") != "LoadBalancer":
        return None
    if _list(spec.get("loadBalancerSourceRanges")):
        return False
    allow_icmp = False
    if ALLOW_ICMP_ANNOTATION in annotations:
        icmp = annotations[ALLOW_ICMP_ANNOTATION]
        if icmp == "true":
            allow_icmp = True
        elif icmp != "false":
            return False  # InvalidAnnotation
    ports: list[RawPort] = []
    if mode is Mode.PER_PORT:
        for raw in _list(spec.get("ports")):
            entry = _dict(raw)
            protocol = _str(entry.get("protocol") or "TCP").upper()
            port = entry.get("port")
            if protocol not in ("TCP", "UDP", "SCTP") or type(port) is not int or not 0 < port < 65536:
                return False  # InvalidPort
            target = entry.get("targetPort", port)
            if not isinstance(target, int | str) or isinstance(target, bool):
                target = port
            ports.append(RawPort(_str(entry.get("name")), protocol.lower(), port, target))
    return ServiceRead(
        namespace=namespace,
        name=name,
        uid=_str(meta.get("uid")),
        created=_str(meta.get("creationTimestamp")),
        mode=mode,
        allow_icmp=allow_icmp,
        external_ips=tuple(ips),
        ports=tuple(ports),
    )


# --------------------------------------------------------------------------- endpoints


class SliceInfo(NamedTuple):
    """What one EndpointSlice says about its Service: the ready addresses and the ports."""

    service: tuple[str, str]
    """(namespace, Service name), from the ``kubernetes.io/service-name`` label."""
    family: int
    ready: dict[str, str | None]
    """Ready address (canonical text) -> node name."""
    ports: dict[tuple[str, str], int]
    """(port name, protocol) -> pod port."""
    problems: tuple[Problem, ...]


def _endpoint_text(value: Any, family: int) -> str | None:
    """An endpoint's address as canonical text when it is an ordinary IPv4 address of an
    IPv4 slice (nearly all of them): no address object, and certainly no refusal (see
    :func:`endpoint_refusal`). None: read it the long way."""
    if family == 4 and type(value) is str:
        number = ipv4_number(value)
        if number is not None and ordinary_v4(number):
            return value
    return None


def parse_slice(eps: RawObject) -> SliceInfo | None:
    """One EndpointSlice, or None when it names no Service or carries no pod addresses."""
    both = read_slice(eps)
    return both[0] if both is not None else None


def read_slice(eps: RawObject) -> SliceRead | None:
    """One EndpointSlice read once for both its readers: what the 1:1 mappings take of it
    (:func:`parse_slice`: the ready endpoints, with a problem for each that cannot be a
    backend) and what delegated Services take (:func:`parse_endpoints`: every usable
    endpoint with its conditions). None when it names no Service or carries no pod
    addresses."""
    meta = _dict(eps.get("metadata"))
    service = _str(_dict(meta.get("labels")).get(SERVICE_NAME_LABEL))
    if not service:
        return None
    address_type = eps.get("addressType")
    if address_type not in ("IPv4", "IPv6"):
        return None  # FQDN slices carry no pod address
    family = 4 if address_type == "IPv4" else 6
    ports: dict[tuple[str, str], int] = {}
    valid_ports: dict[tuple[str, str], int] = {}
    for raw_port in _list(eps.get("ports")):
        entry = _dict(raw_port)
        number = entry.get("port")
        if isinstance(number, int) and not isinstance(number, bool):
            key = (_str(entry.get("name")), _str(entry.get("protocol") or "TCP").lower())
            ports[key] = number
            if _port_number(number) is not None:
                valid_ports[key] = number
    ready: dict[str, str | None] = {}
    every: dict[str, SliceEndpoint] = {}
    problems: list[Problem] = []
    for raw in _list(eps.get("endpoints")):
        endpoint = _dict(raw)
        conditions = _dict(endpoint.get("conditions"))
        # The API says a nil "ready" means ready; "serving and not terminating"
        # would admit terminating pods, which a 1:1 NAT must not pick. (Only a ready
        # endpoint that cannot be used is a problem.)
        is_ready = conditions.get("ready") is not False
        addresses = _list(endpoint.get("addresses"))
        if not addresses:
            if is_ready:
                problems.append(
                    Problem(_ref(eps, "EndpointSlice"), "EndpointWithoutAddress", "endpoint without addresses ignored")
                )
            continue
        text = _endpoint_text(addresses[0], family)
        if text is None:
            ip = parse_ip(addresses[0])
            if ip is None or ip.version != family:
                if is_ready:
                    problems.append(
                        Problem(
                            _ref(eps, "EndpointSlice"),
                            "InvalidEndpointAddress",
                            f"endpoint address {addresses[0]!r} is not an {address_type} address",
                        )
                    )
                continue
            why = endpoint_refusal(ip)
            if why is not None:
                if is_ready:
                    problems.append(
                        Problem(
                            _ref(eps, "EndpointSlice"), "InvalidEndpointAddress", f"endpoint address {why}; ignored"
                        )
                    )
                continue
            text = str(ip)
        node = endpoint.get("nodeName")
        node = node if isinstance(node, str) and node else None
        if is_ready:
            ready[text] = node
        every[text] = SliceEndpoint(
            text,
            node,
            is_ready,
            # The API: a nil "ready" or "serving" means true, a nil "terminating" false.
            conditions.get("serving", conditions.get("ready")) is not False,
            conditions.get("terminating") is True,
        )
    key = (_str(meta.get("namespace")), service)
    return (
        SliceInfo(key, family, ready, ports, tuple(problems)),
        EndpointsInfo(key, family, tuple(every.values()), tuple(sorted(valid_ports.items()))),
    )


_CLASS_E = ipaddress.IPv4Network("240.0.0.0/4")


def endpoint_refusal(ip: IPAddress) -> str | None:
    """Why a ready endpoint's address cannot be a backend, or None. The same special
    addresses as for external IPs (:func:`~wholeip.core.model.special`: loopback, IPv6
    spellings of IPv4 addresses ...), except 240.0.0.0/4, which some clusters use for pods."""
    kind = special(ip)
    if kind is None or ip in _CLASS_E:
        return None
    v4 = embedded_ipv4(ip)
    return f"{ip} is {kind}" + (f" (of {v4})" if v4 is not None else "")


# --------------------------------------------------------------------------- nodes


def node_networks(nodes: Iterable[RawObject], problems: list[Problem]) -> tuple[list[IPNetwork], list[IPAddress]]:
    """The pod CIDRs and the addresses (internal and external) the Nodes declare."""
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
                    if normalised(ip) != ip:
                        # The guards compare addresses as IPv4 where an IPv6 one spells one.
                        node_ips.append(normalised(ip))
    return pod_cidrs, node_ips


# --------------------------------------------------------------------------- LoadBalancer IP -> ClusterIP


@dataclass(frozen=True, slots=True)
class LbServiceInfo:
    """What ``--lb-to-clusterip`` reads of any LoadBalancer Service: its LoadBalancer IPs,
    ClusterIPs and ports. Such a Service is not ours, so what cannot be used is skipped
    quietly (no Problem, no Event on somebody else's Service)."""

    ref: ObjectRef
    created: str
    lb_ips: tuple[IPAddress, ...]
    """``status.loadBalancer.ingress[].ip`` (never ``spec.externalIPs``: anyone who may
    create a Service may write those, CVE-2020-8554)."""
    cluster_ips: tuple[IPAddress, ...]
    """``spec.clusterIPs`` (or ``spec.clusterIP``), at most one per family."""
    ports: tuple[tuple[str, int], ...]
    """(protocol, port) of ``spec.ports``, protocol in lower case."""

    @property
    def age_key(self) -> tuple[int, str, str]:
        return (created_seconds(self.created), self.ref.namespace, self.ref.name)


def parse_lb_service(obj: RawObject) -> LbServiceInfo | None:
    """A ``type: LoadBalancer`` Service with at least one usable LoadBalancer IP, ClusterIP
    and port; None for anything else."""
    ref = _ref(obj, "Service")
    spec = _dict(obj.get("spec"))
    if not ref.name or spec.get("type") != "LoadBalancer":
        return None
    lb_ips: list[IPAddress] = []
    for entry in _list(_dict(_dict(obj.get("status")).get("loadBalancer")).get("ingress")):
        ip = parse_ip(_dict(entry).get("ip"))
        if ip is not None and ip not in lb_ips:
            lb_ips.append(ip)
    raw_cluster_ips = _list(spec.get("clusterIPs")) or [spec.get("clusterIP")]
    cluster_ips: list[IPAddress] = []
    for raw in raw_cluster_ips:
        ip = parse_ip(raw)  # "None" (headless) is no address
        if ip is not None and all(c.version != ip.version for c in cluster_ips):
            cluster_ips.append(ip)
    ports: list[tuple[str, int]] = []
    for raw in _list(spec.get("ports")):
        entry = _dict(raw)
        protocol = _str(entry.get("protocol") or "TCP")
        port = entry.get("port")
        # bool is an int to Python: "port: true" is no port.
        if protocol not in ("TCP", "UDP", "SCTP") or not isinstance(port, int) or isinstance(port, bool):
            continue
        if 0 < port < 65536 and (protocol.lower(), port) not in ports:
            ports.append((protocol.lower(), port))
    if not (lb_ips and cluster_ips and ports):
        return None
    return LbServiceInfo(
        ref=ref,
        created=_str(_dict(obj.get("metadata")).get("creationTimestamp")),
        lb_ips=tuple(lb_ips),
        cluster_ips=tuple(cluster_ips),
        ports=tuple(ports),
    )


def own_pod_cidrs(nodes: Iterable[RawObject], node_name: str) -> list[IPNetwork]:
    """The pod CIDRs (``spec.podCIDRs``, else ``spec.podCIDR``) of the Node named ``node_name``;
    malformed entries are skipped (:func:`node_networks` reports them)."""
    out: list[IPNetwork] = []
    for node in nodes:
        if _ref(node, "Node").name != node_name:
            continue
        spec = _dict(node.get("spec"))
        for raw in _list(spec.get("podCIDRs")) or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            net = parse_network(raw)
            if net is not None and net not in out:
                out.append(net)
    return out


# --------------------------------------------------------------------------- delegated Services


@dataclass(frozen=True, slots=True)
class DelegatedPort:
    """One ``spec.ports`` entry of a delegated Service."""

    name: str
    protocol: str
    port: int
    target: int | str
    node_port: int | None


AFFINITY_DEFAULT = 10800
"""``sessionAffinityConfig.clientIP.timeoutSeconds`` when unset (Kubernetes' default)."""


@dataclass(frozen=True, slots=True)
class DelegatedInfo:
    """What a Service labelled for us says about its ClusterIPs and NodePorts."""

    ref: ObjectRef
    created: str
    cluster_ips: tuple[IPAddress, ...]
    """``spec.clusterIPs`` (or ``spec.clusterIP``), at most one per family; none when headless."""
    ports: tuple[DelegatedPort, ...]
    external_local: bool
    """externalTrafficPolicy Local (NodePorts: this node's endpoints only, client kept)."""
    internal_local: bool
    """internalTrafficPolicy Local (the ClusterIP: this node's endpoints only)."""
    affinity: bool
    affinity_timeout: int
    health_check_port: int | None

    @property
    def age_key(self) -> tuple[int, str, str]:
        return (created_seconds(self.created), self.ref.namespace, self.ref.name)


def _port_number(value: Any) -> int | None:
    if type(value) is not int or not 0 < value < 65536:
        return None
    return value


def parse_delegated_service(obj: RawObject, settings: ModelSettings, problems: list[Problem]) -> DelegatedInfo | None:
    """A Service whose ``service.kubernetes.io/service-proxy-name`` label names us, or None.

    Its problems: a port it cannot serve (``InvalidPort``, as :func:`parse_service` words
    it for a LoadBalancer Service, which reports it too: the index reports a problem once),
    a numeric ``targetPort`` or ``nodePort`` out of range, an affinity timeout out of range.
    A ``targetPort`` per-port mode refuses is fine here: the ClusterIP translates it."""
    meta = _dict(obj.get("metadata"))
    labels = _dict(meta.get("labels"))
    if not settings.proxy_name or labels.get(PROXY_NAME_LABEL) != settings.proxy_name:
        return None  # most Services: decided before anything else is read
    ref = _ref(obj, "Service")
    if not ref.name:
        return None
    if settings.allowed_namespaces and ref.namespace not in settings.allowed_namespaces:
        return None
    spec = _dict(obj.get("spec"))
    if spec.get("type") == "ExternalName":
        return None
    cluster_ips: list[IPAddress] = []
    for raw in _list(spec.get("clusterIPs")) or [spec.get("clusterIP")]:
        ip = parse_ip(raw)  # "None" (headless) is no address
        if ip is not None and all(c.version != ip.version for c in cluster_ips):
            cluster_ips.append(ip)
    ports: list[DelegatedPort] = []
    for raw in _list(spec.get("ports")):
        entry = _dict(raw)
        protocol = _str(entry.get("protocol") or "TCP").upper()
        port = _port_number(entry.get("port"))
        if protocol not in ("TCP", "UDP", "SCTP") or port is None:
            problems.append(_unusable_port(ref, raw))
            continue
        target = entry.get("targetPort", port)
        if isinstance(target, bool) or not isinstance(target, int | str) or target in ("", 0):
            target = port
        if isinstance(target, int) and _port_number(target) is None:
            # (The API server refuses it; a cluster file may hold it, and nft would refuse the
            # whole transaction that carries it.)
            problems.append(Problem(ref, "InvalidPort", f"ignoring port {raw!r}: targetPort {target} is not 1-65535"))
            continue
        if any(p.protocol == protocol.lower() and p.port == port for p in ports):
            # (The API server refuses a Service that lists one twice; a cluster file may.)
            problems.append(Problem(ref, "InvalidPort", f"ignoring port {raw!r}: {protocol}/{port} is listed before"))
            continue
        node_port = entry.get("nodePort")
        if node_port is not None and _port_number(node_port) is None:
            problems.append(
                Problem(ref, "InvalidPort", f"port {raw!r}: nodePort {node_port!r} is not 1-65535; no NodePort")
            )
        elif node_port is not None and any(p.protocol == protocol.lower() and p.node_port == node_port for p in ports):
            problems.append(
                Problem(
                    ref, "InvalidPort", f"port {raw!r}: {protocol} nodePort {node_port} is listed before; no NodePort"
                )
            )
            node_port = None
        ports.append(DelegatedPort(_str(entry.get("name")), protocol.lower(), port, target, _port_number(node_port)))
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = _dict(_dict(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
    if type(timeout) is not int or not 0 < timeout <= 86400:
        if affinity and timeout is not None:
            problems.append(
                Problem(
                    ref,
                    "InvalidAffinityTimeout",
                    f"sessionAffinityConfig.clientIP.timeoutSeconds {timeout!r} is not 1-86400;"
                    f" using {AFFINITY_DEFAULT}",
                )
            )
        timeout = AFFINITY_DEFAULT
    external_local = spec.get("externalTrafficPolicy") == "Local"
    return DelegatedInfo(
        ref=ref,
        created=_str(meta.get("creationTimestamp")),
        cluster_ips=tuple(cluster_ips),
        ports=tuple(ports),
        external_local=external_local,
        internal_local=spec.get("internalTrafficPolicy") == "Local",
        affinity=affinity,
        affinity_timeout=timeout,
        health_check_port=_port_number(spec.get("healthCheckNodePort")) if external_local else None,
    )


class SliceEndpoint(NamedTuple):
    """One endpoint of an EndpointSlice, with its conditions."""

    address: str
    """Canonical text."""
    node: str | None
    ready: bool
    serving: bool
    terminating: bool


class EndpointsInfo(NamedTuple):
    """Every endpoint of one EndpointSlice (ready or not), for delegated Services."""

    service: tuple[str, str]
    family: int
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[tuple[tuple[str, str], int], ...]
    """((port name, protocol), pod port) pairs."""


SliceRead: TypeAlias = "tuple[SliceInfo, EndpointsInfo]"
"""An EndpointSlice as :func:`read_slice` reads it for both its readers."""


def parse_endpoints(eps: RawObject) -> EndpointsInfo | None:
    """An EndpointSlice's endpoints with their conditions (problems are :func:`parse_slice`'s
    to report); None when it names no Service or carries no pod addresses."""
    both = read_slice(eps)
    return both[1] if both is not None else None
