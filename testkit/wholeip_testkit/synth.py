"""Synthetic clusters: N whole-IP Services with their EndpointSlices and Nodes, as raw objects.

Used by tests, benchmarks and ``hack/`` to produce cluster files of any size.
Addresses are derived from the index, so the same N always gives the same
objects: external IPs from 100.64.0.0/10 (and 2001:db8:100::/64 when dual
stack), pods in a /16 (and /64) per node.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from wholeip.names import WHOLE_IP_ANNOTATION

EXT4 = ipaddress.IPv4Network("100.64.0.0/10")
EXT6 = ipaddress.IPv6Network("2001:db8:100::/64")


def _pod_cidr4(node_index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.128.0.0")) + (node_index << 16), 16))


def _pod_cidr6(node_index: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(ipaddress.IPv6Address("fd00:10:244::")) + (node_index << 64), 64))


def node(name: str, index: int, *, dual_stack: bool = False) -> dict[str, Any]:
    """Node ``name`` with a /16 (and /64) pod CIDR and one InternalIP from 192.0.2.0/24."""
    cidrs = [str(_pod_cidr4(index))]
    if dual_stack:
        cidrs.append(str(_pod_cidr6(index)))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{11 + index}"}]},
    }


def service(
    i: int,
    *,
    namespace: str = "default",
    dual_stack: bool = False,
    pod_offset: int = 0,
    nodes: int = 2,
) -> list[dict[str, Any]]:
    """Service ``svc-i`` and its EndpointSlice(s); the pod sits on node ``n{i % nodes + 1}``.

    ``pod_offset`` moves every pod to another address (a rollout).
    """
    name = f"svc-{i}"
    node_index = i % nodes
    ext = [str(EXT4.network_address + 1 + i)]
    if dual_stack:
        ext.append(str(EXT6.network_address + 1 + i))
    slot = 10 + (i // nodes + pod_offset) % 65000
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.UUID(int=i + 1)),  # the API server's form (a UUID)
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {WHOLE_IP_ANNOTATION: "true"},
            },
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ext]}},
        },
        _slice(
            name,
            namespace,
            "IPv4",
            str(_pod_cidr4(node_index).network_address + slot),
            f"n{node_index + 1}",
        ),
    ]
    if dual_stack:
        pod6 = str(_pod_cidr6(node_index).network_address + slot)
        objects.append(_slice(name, namespace, "IPv6", pod6, f"n{node_index + 1}"))
    return objects


def _slice(service: str, namespace: str, family: str, address: str, node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{family.lower()}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "endpoints": [{"addresses": [address], "nodeName": node_name, "conditions": {"ready": True}}],
    }


def cluster(n: int, *, nodes: int = 2, dual_stack: bool = False, pod_offset: int = 0) -> list[dict[str, Any]]:
    """``nodes`` Nodes plus ``n`` whole-IP Services (IPv4, or dual stack)."""
    objects = [node(f"n{k + 1}", k, dual_stack=dual_stack) for k in range(nodes)]
    for i in range(n):
        objects += service(i, dual_stack=dual_stack, pod_offset=pod_offset, nodes=nodes)
    return objects


def as_list(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": objects}
