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


SERVICE4 = ipaddress.IPv4Network("10.96.0.0/12")
SERVICE6 = ipaddress.IPv6Network("fd00:10:96::/108")


def delegated(
    i: int,
    *,
    endpoints: int = 3,
    namespace: str = "default",
    nodes: int = 2,
    node_port: bool = False,
    generation: int = 0,
    dual_stack: bool = False,
) -> list[dict[str, Any]]:
    """Delegated Service ``dlg-i`` (labelled for wholeip: its ClusterIP is ours to serve),
    TCP port 80 -> the named targetPort ``http`` (8080), with ``endpoints`` ready pods spread
    over the nodes. ``generation`` moves its first endpoint to another address (a pod
    replaced)."""
    name = f"dlg-{i}"
    ips = [str(SERVICE4.network_address + 1 + i)]
    if dual_stack:
        ips.append(str(SERVICE6.network_address + 1 + i))
    port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    if node_port:
        port["nodePort"] = 30000 + i % 2768
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.UUID(int=(1 << 64) + i)),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
            },
            "spec": {
                "type": "NodePort" if node_port else "ClusterIP",
                "clusterIP": ips[0],
                "clusterIPs": ips,
                "ports": [port],
            },
        }
    ]
    families = (("IPv4", _pod_cidr4), ("IPv6", _pod_cidr6)) if dual_stack else (("IPv4", _pod_cidr4),)
    for family, cidr in families:
        eps = []
        for k in range(endpoints):
            node_index = (i + k) % nodes
            slot = 10 + ((i * endpoints + k + (generation if k == 0 else 0) * 7919) % 65000)
            eps.append(
                {
                    "addresses": [str(cidr(node_index).network_address + slot)],
                    "nodeName": f"n{node_index + 1}",
                    "conditions": {"ready": True},
                }
            )
        objects.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{family.lower()}",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": family,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps,
            }
        )
    return objects


def delegated_cluster(n: int, *, endpoints: int = 3, nodes: int = 2, dual_stack: bool = False) -> list[dict[str, Any]]:
    """``nodes`` Nodes plus ``n`` delegated Services (see :func:`delegated`)."""
    objects = [node(f"n{k + 1}", k, dual_stack=dual_stack) for k in range(nodes)]
    for i in range(n):
        objects += delegated(i, endpoints=endpoints, nodes=nodes, dual_stack=dual_stack)
    return objects
