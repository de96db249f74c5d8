"""The three collections the agent watches, and how each is narrowed and trimmed.

* **Services**, all namespaces, no selector. A Service is managed when it carries
  the ``wholeIP`` *annotation* or the ``service-proxy-name`` *label*; the API
  server can filter on labels but never on annotations, and a selector on the
  label alone would miss annotated Services. So every Service is watched and
  the model decides. (Services are few and small next to EndpointSlices.)
* Services and slices are trimmed to what the model reads (:func:`trim_service`,
  :func:`trim_slice`): managedFields, kubectl's last-applied annotation, endpoint
  hints and target references never reach the cache.
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

from wholeip.kube.api import Obj
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client
from wholeip.names import SERVICE_NAME_LABEL


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


_META = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _meta(meta: Any, *, labels: tuple[str, ...] | None = None, annotations: bool = False) -> dict[str, Any]:
    meta = meta if isinstance(meta, dict) else {}
    out = {k: meta[k] for k in _META if k in meta}
    raw_labels = meta.get("labels")
    if isinstance(raw_labels, dict):
        out["labels"] = raw_labels if labels is None else {k: raw_labels[k] for k in labels if k in raw_labels}
    raw_annotations = meta.get("annotations")
    if annotations and isinstance(raw_annotations, dict):
        out["annotations"] = {k: v for k, v in raw_annotations.items() if k != _LAST_APPLIED}
    return out


_SERVICE_SPEC = (
    "ports",
    "externalIPs",
    "loadBalancerSourceRanges",
    # --lb-to-clusterip, and the ClusterIPs and NodePorts of delegated Services:
    "type",
    "clusterIP",
    "clusterIPs",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
    "healthCheckNodePort",
)


def trim_service(obj: Obj) -> Obj:
    """Keep only what the model reads of a Service: at 100,000 Services the cache is most
    of the agent's memory, and a change to anything else wakes nothing."""
    spec: dict[str, Any] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
    status: dict[str, Any] = obj["status"] if isinstance(obj.get("status"), dict) else {}
    out: dict[str, Any] = {
        "kind": obj.get("kind", "Service"),
        "metadata": _meta(obj.get("metadata"), annotations=True),
        "spec": {k: spec[k] for k in _SERVICE_SPEC if k in spec},
    }
    if "loadBalancer" in status:
        out["status"] = {"loadBalancer": status["loadBalancer"]}
    return out


def trim_slice(obj: Obj) -> Obj:
    """Keep only what the model reads of an EndpointSlice: addresses, readiness, node, ports."""
    endpoints = []
    for raw in obj.get("endpoints") or []:
        if not isinstance(raw, dict):
            endpoints.append(raw)  # the model reports what it cannot read
            continue
        ep: dict[str, Any] = {k: raw[k] for k in ("addresses", "nodeName") if k in raw}
        conditions = raw.get("conditions")
        if isinstance(conditions, dict):
            # serving and terminating: a delegated Service falls back to terminating endpoints.
            kept = {k: conditions[k] for k in ("ready", "serving", "terminating") if k in conditions}
            if kept:
                ep["conditions"] = kept
        endpoints.append(ep)
    out: dict[str, Any] = {
        "kind": obj.get("kind", "EndpointSlice"),
        "metadata": _meta(obj.get("metadata"), labels=(SERVICE_NAME_LABEL,)),
        "addressType": obj.get("addressType"),
        "endpoints": endpoints,
    }
    if "ports" in obj:
        out["ports"] = obj["ports"]
    return out


def build_informers(
    api: client.ApiClient,
    *,
    on_change: Callable[[], None],
    on_key: Callable[[str, str | None], None] | None = None,
    options: WatchOptions | None = None,
) -> tuple[Informer, Informer, Informer]:
    """The Services, EndpointSlices and Nodes informers, in that order.

    ``on_key(resource, key)`` hears which object changed (see :class:`Informer`).
    """

    def keyed(resource: str) -> Callable[[str | None], None] | None:
        if on_key is None:
            return None
        return lambda key: on_key(resource, key)

    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    services = Informer(
        resource="services",
        list_func=core.list_service_for_all_namespaces,
        transform=trim_service,
        on_change=on_change,
        on_key=keyed("services"),
        packed=True,
        options=options,
    )
    slices = Informer(
        resource="endpointslices",
        list_func=discovery.list_endpoint_slice_for_all_namespaces,
        label_selector=SERVICE_NAME_LABEL,
        transform=trim_slice,
        on_change=on_change,
        on_key=keyed("endpointslices"),
        packed=True,
        options=options,
    )
    nodes = Informer(
        resource="nodes",
        list_func=core.list_node,
        transform=trim_node,
        on_change=on_change,
        on_key=keyed("nodes"),
        options=options,
    )
    return services, slices, nodes
