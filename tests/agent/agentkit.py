"""Helpers shared by the agent's tests: informer timing, polling with a deadline, object builders.

Everything runs in-process: the API server double listens on 127.0.0.1, the
agent talks to it over real HTTP, and the nftables side is a FakeBackend.
Waiting is always "poll a condition until a deadline" (:func:`eventually`),
never a bare sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from wholeip.kube.informer import WatchOptions
from wholeip.names import WHOLE_IP_ANNOTATION
from wholeip_testkit.apiserver import ApiServer

FAST = WatchOptions(
    watch_timeout=30.0,
    idle_timeout=1.0,
    connect_timeout=2.0,
    list_timeout=5.0,
    backoff_base=0.05,
    backoff_max=0.3,
)
"""Informer timing for tests: quick backoff, a short idle timeout (bookmarks come every 0.2 s)."""


async def eventually(check: Callable[[], Any], *, within: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- object builders


def node(name: str, address: str, pod_cidr: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(name: str, *, namespace: str = "default", whole_ip: bool = True) -> dict[str, Any]:
    annotations = {WHOLE_IP_ANNOTATION: "true"} if whole_ip else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }


def endpoint_slice(
    service_name: str, pod_ip: str, node_name: str, *, namespace: str = "default", suffix: str = "a"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pod_ip], "nodeName": node_name, "conditions": {"ready": True}}],
        "ports": [{"port": 80, "protocol": "TCP"}],
    }


def set_lb_ip(api: ApiServer, name: str, ip: str, *, namespace: str = "default") -> None:
    """Give a Service its LoadBalancer IP through the status subresource, like a LB controller."""
    svc = api.store.get("services", name, namespace)
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    api.store.update(svc, subresource="status")


def cluster(api: ApiServer) -> None:
    """Two nodes, like the datapath test topology."""
    api.store.create(node("n1", "192.0.2.11", "10.244.1.0/24"))
    api.store.create(node("n2", "192.0.2.12", "10.244.2.0/24"))
