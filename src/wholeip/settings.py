"""Settings: every knob of the agent, frozen, one docstring per field.

The CLI turns flags and their ``WHOLEIP_*`` environment twins into one
:class:`Settings`; everything below the CLI takes the pieces it needs as
keyword arguments, so tests build them directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


DEFAULT_EGRESS_MARK_MASK = 0x0000007F
"""The packet mark bits of egress steering unless ``--egress-mark-mask`` says otherwise (the
model's and the policy routing's, which must agree; docs/operations.md)."""


@dataclass(frozen=True, slots=True)
class PodNatSettings:
    """Pod ports on the node's address (podnat-controller's annotation), and what the agent
    read of this node's own addresses (I/O done by the agent or the CLI, passed in)."""

    annotation: str = "bln.space/podnat"
    """The Pod annotation read (``--podnat-annotation``, podnat's ``-annotationkey``)."""

    restricted_ports: frozenset[int] = frozenset({22, 53, 6443})
    """Ports never published on the node's address (``--podnat-restricted-ports``; the
    agent adds its own port); an entry asking for one is refused with an Event."""

    include_cidrs: tuple[IPNetwork, ...] = ()
    """``ifaceAuto``: when set, only addresses inside these networks are chosen
    (``--podnat-include-cidrs``, podnat's ``-inclfilternet``)."""

    exclude_cidrs: tuple[IPNetwork, ...] = ()
    """``ifaceAuto``: addresses inside these networks are never chosen
    (``--podnat-exclude-cidrs``, podnat's ``-exclfilternet``)."""

    default_sources: tuple[IPAddr, ...] = ()
    """The source address of this node's default route, per family (read by the agent):
    ``ifaceAuto``'s choice when the Node object has no ExternalIP of the family."""

    host_addresses: frozenset[IPAddr] = frozenset()
    """This node's own addresses (read by the agent): an explicit ``srcIP`` must be one of
    them or of the Node object's addresses."""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What decides which Services are managed and which networks are the cluster's."""

    proxy_name: str = "wholeip"
    """Value of the ``service.kubernetes.io/service-proxy-name`` label that selects a
    Service (``cozy-proxy`` for a cluster migrating from cozy-proxy)."""

    service_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network("10.96.0.0/12"),)
    """The cluster's Service networks: east-west, never an external IP. Where the cluster
    publishes ServiceCIDR objects, the agent and the offline commands use those instead
    (:func:`wholeip.core.servicecidr.effective_model`); this value is the fallback, or the
    override when :attr:`service_cidrs_given`."""

    service_cidrs_given: bool = False
    """``--service-cidr`` (or ``WHOLEIP_SERVICE_CIDR``) was given explicitly: it wins over the
    cluster's ServiceCIDR objects, which are then not even read."""

    cluster_cidrs: tuple[IPNetwork, ...] = ()
    """Pod networks (``--cluster-cidr``). When set, they replace the Nodes' ``spec.podCIDRs``
    as the pod part of the cluster networks; when empty, the Nodes' podCIDRs are used."""

    allowed_external_cidrs: tuple[IPNetwork, ...] = ()
    """When set, an external IP must lie inside one of these networks (``--allowed-external-cidrs``,
    the pools the LoadBalancer controller hands out); any other is refused with an Event.
    Empty: every address that passes the other guards."""

    allowed_namespaces: frozenset[str] = frozenset()
    """When set, only Services in these namespaces are managed (``--allowed-namespaces``); a
    Service elsewhere that asks for a whole IP is refused with an Event. Empty: every namespace."""

    allow_spec_external_ips: bool = False
    """Also take ``spec.externalIPs`` as external IPs. Off by default: anyone who can edit a
    Service could claim any address (CVE-2020-8554)."""

    podnat: PodNatSettings = field(default_factory=PodNatSettings)
    """Pod ports published on this node's address (the podnat annotation)."""

    control_plane_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    """Addresses this node reaches the API server at (``--control-plane-ips``; ``wholeip run``
    adds the server of its kubeconfig, resolved at start when it is a name, or the in-cluster
    ``KUBERNETES_SERVICE_HOST``). Never an external IP: mapping one would send the node's own
    traffic to the control plane to a pod. The endpoints of the ``default/kubernetes``
    Service are refused as well, from the cluster's EndpointSlices."""

    egress_mark_mask: int = DEFAULT_EGRESS_MARK_MASK
    """The packet mark bits egress IP steering uses (``--egress-mark-mask``, one contiguous
    run of bits): the value in them names the holder's slot on this node. Must match the
    policy routing's (:class:`wholeip.core.steering.SteeringConfig`)."""

    lb_to_clusterip: bool = False
    """Send traffic from this node's pods and from the node itself to the LoadBalancer IP of
    any Service wholeip does not map 1:1 to that Service's ClusterIP (``--lb-to-clusterip``),
    for proxies that leave such traffic unserved (kube-proxy's IPVS mode with
    ``externalTrafficPolicy: Local``, kubernetes issue 75262). Off: the maps stay empty."""


@dataclass(frozen=True, slots=True)
class EgressSettings:
    """Where egress steering lives in the packet mark, the rule list and the routing tables
    (:class:`wholeip.core.steering.SteeringConfig` is built from this; docs/operations.md,
    "Egress steering", says why these defaults)."""

    mark_mask: int = DEFAULT_EGRESS_MARK_MASK
    """The mark bits that carry a holder's slot (``--egress-mark-mask``): contiguous and
    non-zero; ``2**bits - 1`` holders at most. Bits 0-6 by default: set by none of
    kube-proxy, Calico (default mask), Cilium's magic, portmap, the AWS VPC CNI, Weave,
    Tailscale or MetalEG."""

    rule_priority: int = 2000
    """The ``ip rule`` priority of the steering rules (``--egress-rule-priority``), 1-32765:
    after the local table (0, or 100 under Cilium) and the CNIs' own rules, before main's
    (32766)."""

    table_base: int = 300000
    """Slot ``s`` routes through table ``table_base + s`` (``--egress-table-base``)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``wholeip run`` needs."""

    node_name: str
    """This node's name (``--node-name`` or ``NODE_NAME``): egress maps hold only its pods."""

    model: ModelSettings = field(default_factory=ModelSettings)
    """Which Services are managed, and the cluster networks."""

    table: str = "wholeip"
    """Name of our own ``inet`` table. Nothing outside it is ever read or written."""

    kubeconfig: str | None = None
    """Path of a kubeconfig; ``None`` means ``KUBECONFIG`` or in-cluster configuration."""

    min_sync_interval: float = 1.0
    """Seconds between two syncs at least (after a burst is used up)."""

    sync_burst: int = 2
    """Syncs allowed back to back before ``min_sync_interval`` applies."""

    max_sync_interval: float = 60.0
    """Seconds after which a full sync runs even without a change; it compares with the
    kernel and repairs drift."""

    health_timeout: float = 60.0
    """``/healthz`` fails when a change has waited longer than this for a commit."""

    api_liveness_timeout: float = 300.0
    """``/healthz`` also fails when the API server has been unreachable (every informer
    failing) for longer than this, so that the kubelet restarts an agent that can no longer
    see the cluster (``--api-liveness-timeout``; 0: never)."""

    bind_address: str = "127.0.0.1"
    """Address the probe and metrics server binds to."""

    port: int = 9765
    """Port of the probe and metrics server."""

    log_format: str = "json"
    """``json`` (one object a line) or ``console`` (for humans)."""

    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""

    egress: EgressSettings = field(default_factory=EgressSettings)
    """Egress steering: mark bits, rule priority and routing tables."""
