"""The three collections the agent watches, and how each is narrowed and trimmed.

* **Services**, all namespaces, no selector. A Service is managed when it carries
  the ``wholeIP`` *annotation* or the ``service-proxy-name`` *label*; the API
  server can filter on labels but never on annotations, and a selector on the
  label alone would miss annotated Services. So every Service is watched and
  the model decides. (Services are few and small next to EndpointSlices.)
* **EndpointSlices** (``discovery.k8s.io/v1``), all namespaces, label selector
  ``kubernetes.io/service-name`` (exists): the model finds a Service's slices by
  that label, so a slice without it can never matter; mirrored or hand-made
  slices of selector-less Services still carry it. Slices of unmanaged Services
  are cached too and skipped by the model: selecting them away would need a
  per-Service watch.
* **Nodes**, no selector: every Node's addresses and pod CIDRs are part of the
  cluster networks. Nodes are trimmed to what the model and the Event emitter
  read (addresses, pod CIDRs, the Ready condition's status), which drops the
  kubelet's heartbeats (a status write every few seconds per node on older
  clusters) and the image lists before they reach the cache or wake anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client

from wholeip.kube.api import Obj
from wholeip.kube.informer import Informer, WatchOptions, strip_managed_fields
from wholeip.settings import SERVICE_NAME_LABEL


def trim_node(obj: Obj) -> Obj:
    """Keep only what the model and the Event emitter read of a Node."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    out_spec = {k: spec[k] for k in ("podCIDR", "podCIDRs") if k in spec}
    out_status: dict[str, Any] = {}
    if "addresses" in status:
        out_status["addresses"] = status["addresses"]
    conditions = [
        {"type": c.get("type"), "status": c.get("status")}
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("type") == "Ready"
    ]
    if conditions:
        out_status["conditions"] = conditions
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Node"),
        "metadata": {
            k: meta[k] for k in ("name", "uid", "resourceVersion", "creationTimestamp", "labels") if k in meta
        },
        "spec": out_spec,
        "status": out_status,
    }


def build_informers(
    api: client.ApiClient,
    *,
    on_change: Callable[[], None],
    options: WatchOptions | None = None,
) -> tuple[Informer, Informer, Informer]:
    """The Services, EndpointSlices and Nodes informers, in that order."""
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    services = Informer(
        resource="services",
        list_func=core.list_service_for_all_namespaces,
        transform=strip_managed_fields,
        on_change=on_change,
        options=options,
    )
    slices = Informer(
        resource="endpointslices",
        list_func=discovery.list_endpoint_slice_for_all_namespaces,
        label_selector=SERVICE_NAME_LABEL,
        transform=strip_managed_fields,
        on_change=on_change,
        options=options,
    )
    nodes = Informer(
        resource="nodes",
        list_func=core.list_node,
        transform=trim_node,
        on_change=on_change,
        options=options,
    )
    return services, slices, nodes
