"""Every name wholeip shares with the outside world, declared once.

Two kinds of names live here and nowhere else:

* the Kubernetes keys users write (annotations, labels) and the ones we read
  from other components;
* the nftables table and every set, map and chain in it. The ruleset, the
  elements, the conntrack cleaner, the metrics and the tests all spell them
  through these constants, so a rename is one line and a typo is a NameError,
  not a silently empty map.

A set that exists once per address family is a :class:`PerFamily`:
``INGRESS[4] == "ingress4"``, ``INGRESS[6] == "ingress6"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --------------------------------------------------------------------------- Kubernetes keys

WHOLE_IP_ANNOTATION: Final = "networking.cozystack.io/wholeIP"
"""``"true"`` selects a Service for whole-IP 1:1 NAT."""
ALLOW_ICMP_ANNOTATION: Final = "networking.cozystack.io/allowICMP"
"""``"true"`` lets ICMP through a per-port Service's filter."""
PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
"""The label that delegates a Service to a proxy other than kube-proxy."""
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
"""The label that ties an EndpointSlice to its Service."""
PODNAT_ANNOTATION: Final = "bln.space/podnat"
"""podnat-controller's Pod annotation (JSON ``entries``): ports of the pod published on its
node's address. The default of ``--podnat-annotation``."""
EGRESS_IP_ANNOTATION: Final = "networking.cozystack.io/egressIP"
"""``"true"`` on a Service: every ready endpoint pod leaves the cluster with the Service's
LoadBalancer IP (egress IP), from any node."""
METALEG_LABEL: Final = "metaleg.de/rewriteSrcIP"
"""MetalEG's Service label, read like :data:`EGRESS_IP_ANNOTATION` (MetalEG users switch
without editing their Services)."""
EGRESS_NODE_ANNOTATION: Final = "networking.cozystack.io/egressNode"
"""The node that holds an egress Service's IP, where no MetalLB ServiceL2Status says it."""
L2_STATUS_GROUP: Final = "metallb.io"
L2_STATUS_VERSION: Final = "v1beta1"
L2_STATUS_RESOURCE: Final = "servicel2statuses"
L2_STATUS_KIND: Final = "ServiceL2Status"
"""MetalLB's record of the node that announces a Service's IP in layer-2 mode."""
API_SERVER_SERVICE: Final = ("default", "kubernetes")
"""(namespace, name) of the Service whose endpoints are the API server's addresses."""

# --------------------------------------------------------------------------- nftables

FAMILY: Final = "inet"
"""The table's family: one table for IPv4 and IPv6."""
TABLE: Final = "wholeip"
"""The one table wholeip owns (``--table`` may rename it; nothing else is touched)."""


@dataclass(frozen=True, slots=True)
class PerFamily:
    """A set, map or chain declared once for both families."""

    stem: str

    def __getitem__(self, version: int) -> str:
        if version not in (4, 6):
            raise KeyError(version)
        return f"{self.stem}{version}"

    @property
    def both(self) -> tuple[str, str]:
        """The IPv4 and the IPv6 name, in that order."""
        return (self[4], self[6])


# Maps and sets, per family.
CLUSTER: Final = PerFamily("cluster")
"""Interval set: the cluster's networks (pods, Services, nodes): east-west traffic."""
INGRESS: Final = PerFamily("ingress")
"""Map external IP -> pod IP (the inbound rewrite)."""
EGRESS: Final = PerFamily("egress")
"""Map pod IP -> external IP (the pod's own outbound flows)."""
SELF_HAIRPIN: Final = PerFamily("selfhairpin")
"""Set of (pod, pod): a pod reaching itself through its own external IP."""
DISPATCH: Final = PerFamily("dispatch")
"""Verdict map external IP -> the mode's chain, where the packet arrives."""
AWAY: Final = PerFamily("away")
"""Set of external IPs whose pod lives on another node."""
ARRIVE: Final = PerFamily("arrive")
"""Verdict map pod IP -> the mode's chain, at the pod's node (UDP/SCTP filtered there)."""
FILTERED: Final = PerFamily("filtered")
"""Set of keys (external or pod IP) whose traffic passes a filter."""
PORTS: Final = PerFamily("ports")
"""Set of (key, protocol, port): the ports a per-port key lets in."""
ICMP: Final = PerFamily("icmp")
"""Set of keys that let ICMP in (``allowICMP``)."""
RANGED: Final = PerFamily("ranged")
"""Set of keys with ``loadBalancerSourceRanges``."""
SOURCES: Final = PerFamily("sources")
"""Interval set of (key, source network) those ranges allow."""
FLOWS: Final = PerFamily("flows")
"""Dynamic set: the pod's own untracked flows, so that their replies pass the filter."""
ICMPFIX4: Final = "icmpfix4"
"""Map (external IP, pod IP as integer) -> checksum compensation for ICMPv4 errors."""
ICMPGUARD6: Final = "icmpguard6"
"""Set of (external IP, pod IP as integer): ICMPv6 errors whose quoted header is rewritten."""
LB_CLUSTER_IP: Final = PerFamily("lbclusterip")
"""Map (LoadBalancer IP, protocol, port) -> ClusterIP of Services we do not map 1:1
(``--lb-to-clusterip``)."""
LOCAL_PODS: Final = PerFamily("localpods")
"""Interval set: this node's pod CIDRs (whose traffic ``lbclusterip`` redirects)."""

PODNAT_ADDR: Final = PerFamily("podnat")
"""Map (node address, protocol, port) -> pod IP: a pod's published port (podnat annotation)."""
PODNAT_PORT: Final = PerFamily("podnatport")
"""Map (node address, protocol, port) -> the pod's port, beside ``podnat4/6`` (nftables 1.0.6
cannot declare a map with concatenated data in JSON, so address and port are two lookups)."""
PODNAT_SELF: Final = PerFamily("podnatself")
"""Set of (pod, pod): pods with published ports, masqueraded when they reach themselves
through the node's address."""

EGRESS_SNAT: Final = PerFamily("egresssnat")
"""Map pod IP -> the egress IP (an egress Service's LoadBalancer IP) its new flows to the
outside are SNATed to, on the node that holds that IP (every member, wherever it runs)."""
EGRESS_STEER: Final = PerFamily("egresssteer")
"""Verdict map pod IP -> ``goto steer_slot_<n>``: this node's egress members whose IP is held
by another node; the chain marks the packet for that holder's routing table."""

# Chains.
EGRESS_STEER_CHAIN: Final = "egress_steer"
"""Base chain (filter prerouting, after dstnat): marks the members' packets to the outside."""
STEER_SLOT_PREFIX: Final = "steer_slot_"
"""``steer_slot_<n>``: sets the mark of holder slot ``n`` (see :mod:`wholeip.core.steering`)."""


def steer_slot_chain(slot: int) -> str:
    """The chain that marks a packet for holder slot ``slot`` (1 and up)."""
    return f"{STEER_SLOT_PREFIX}{slot}"


RAW_PREROUTING: Final = "raw_prerouting"
ICMP_ERRORS: Final = "icmp_errors"
CT_DECIDED: Final = "ct_decided"
UNTRACKED: Final = PerFamily("untracked")
PER_PORT: Final = PerFamily("per_port")
WHOLE_IP: Final = PerFamily("whole_ip")
HAIRPIN_PREROUTING: Final = "hairpin_prerouting"
HAIRPIN_OUTPUT: Final = "hairpin_output"
HAIRPIN_POSTROUTING: Final = "hairpin_postrouting"
STATELESS_POSTROUTING: Final = "stateless_postrouting"

# Delegated Services (labelled for us): their ClusterIPs and NodePorts, load-balanced.
SVC: Final = PerFamily("svc")
"""Verdict map (ClusterIP, protocol, port) -> ``goto`` the class chain of its slot count."""
SVC_ADDR: Final = PerFamily("svcaddr")
"""Map (ClusterIP, protocol, port, slot) -> endpoint address."""
SVC_PORT: Final = PerFamily("svcport")
"""Map (ClusterIP, protocol, port, slot) -> endpoint port (beside ``svcaddr``: nftables 1.0.6
cannot declare concatenated data in JSON)."""
SVC_UPORT6: Final = "svcuport6"
"""Map (IPv6 ClusterIP, protocol, port) -> the one endpoint port of a front-end with
sessionAffinity ClientIP whose endpoints all listen on the same port: its class chain picks
the address by a hash of the client and the port here (a second hashed lookup would need
more registers than nftables 1.0.6 has for an IPv6 key)."""
NODEPORT: Final = PerFamily("nodeport")
"""Verdict map (protocol, nodePort) -> ``goto`` the class chain, on this node's addresses."""
NP_ADDR: Final = PerFamily("npaddr")
"""Map (protocol, nodePort, slot) -> endpoint address (this node's choice: Local or Cluster)."""
NP_PORT: Final = PerFamily("npport")
"""Map (protocol, nodePort, slot) -> endpoint port."""
NP_MASQ: Final = PerFamily("npmasq")
"""Set of (protocol, nodePort) with externalTrafficPolicy Cluster: masqueraded."""
SVC_REFUSE: Final = PerFamily("svcrefuse")
"""Verdict map (ClusterIP, protocol, port) -> ``goto refuse`` (no endpoint) or ``drop``
(internalTrafficPolicy Local and no endpoint on this node)."""
NP_REFUSE: Final = PerFamily("nprefuse")
"""Verdict map (protocol, nodePort) -> ``goto refuse`` or ``drop`` (Local, none here)."""
SVC_SELF: Final = PerFamily("svcself")
"""Set of (endpoint, endpoint) of this node: a pod reaching itself through its Service is
masqueraded (hairpin)."""
LB_CHAIN: Final = "lb_"
"""Prefix of the class chains ``lb_<slots>``: an endpoint by a hash of the flow."""
AFF_CHAIN: Final = "aff_"
"""Prefix of the class chains ``aff_<slots>``: an endpoint by a hash of the client address
(sessionAffinity ClientIP)."""
AFF_OLD_CHAIN: Final = "affo_"
"""Prefix of the class chains ``affo_<slots>``: a client that used a front-end's previous
slots within its affinity timeout keeps them (``svcold*``/``npold*``)."""
REC_CHAIN: Final = "rec_"
"""Prefix of the chains ``rec_<seconds>_<a|b>``: a client's use of a front-end recorded in
``recent<a|b>4/6`` for that many seconds (one chain per timeout class and generation)."""
RECENT: Final = {p: PerFamily(f"recent{p}") for p in "ab"}
"""Dynamic sets (client, front-end) the packet path fills, one per generation ``a``/``b``:
who used the front-end within its affinity timeout, and which of its two slot tables."""
SVC_GEN_B: Final = PerFamily("svcgenb")
"""Set of the ClusterIP front-ends (with affinity) whose current generation is ``b``."""
NP_GEN_B: Final = PerFamily("npgenb")
"""Set of the NodePorts (protocol, port) with affinity whose current generation is ``b``."""
SVC_AFF_TIME: Final = {"cur": PerFamily("svcafftime"), "old": PerFamily("svcafftimeold")}
"""Verdict maps ClusterIP front-end -> ``jump rec_<timeout class>_<generation>``: the current
generation's chain (``cur``) and the previous one's (``old``)."""
NP_AFF_TIME: Final = {"cur": PerFamily("npafftime"), "old": PerFamily("npafftimeold")}
"""The same for NodePorts (protocol, port)."""
SVC_OLD_ADDR: Final = PerFamily("svcoldaddr")
"""Map (ClusterIP, protocol, port, slot) -> endpoint address of the previous slot table."""
SVC_OLD_PORT: Final = PerFamily("svcoldport")
NP_OLD_ADDR: Final = PerFamily("npoldaddr")
NP_OLD_PORT: Final = PerFamily("npoldport")
REFUSE: Final = "refuse"
"""Regular chain: TCP reset, else ICMP port unreachable."""
SVC_FILTER_PREROUTING: Final = "svc_filter_prerouting"
SVC_FILTER_OUTPUT: Final = "svc_filter_output"
MASQ_MARK: Final = 0x4000
"""The packet mark bit that asks for masquerade (kube-proxy's own bit)."""
HOST_ORDER_KEYS: Final = frozenset(
    (
        *SVC_ADDR.both,
        *SVC_PORT.both,
        *NP_ADDR.both,
        *NP_PORT.both,
        *SVC_OLD_ADDR.both,
        *SVC_OLD_PORT.both,
        *NP_OLD_ADDR.both,
        *NP_OLD_PORT.both,
    )
)
"""Maps whose keys end in a hash (an integer in host byte order, not a payload's network
order): the kernel's listing does not say so, the netlink reader must know."""
