"""The Pods informer: this node's pods only, trimmed to what the podnat model reads.

Pods change far more often than Services (every start, every readiness flip), and a
cluster holds many more of them, so the agent watches only its own node's
(``fieldSelector=spec.nodeName=<node>``, served from the API server's cache like the
kubelet's own watch) and keeps of each pod only its name, uid, creation time, the podnat
annotation, node, host network, phase and addresses. A change to anything else (conditions, container
statuses: most pod updates) is trimmed away before it reaches the cache, so it wakes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wholeip.kube.api import Obj
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client

RESOURCE = "pods"


def trim_pod(obj: Obj, *, annotation: str) -> Obj:
    """Keep only what the podnat model reads of a Pod."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    out_meta: dict[str, Any] = {
        k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")
        if k in meta
    }  # fmt: skip
    annotations = meta.get("annotations")
    if isinstance(annotations, dict) and annotation in annotations:
        out_meta["annotations"] = {annotation: annotations[annotation]}
    return {
        "kind": "Pod",
        "metadata": out_meta,
        "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec},
        "status": {k: status[k] for k in ("phase", "podIP", "podIPs") if k in status},
    }


def build_pod_informer(
    api: client.ApiClient,
    *,
    node_name: str,
    annotation: str,
    on_change: Callable[[], None],
    on_key: Callable[[str, str | None], None] | None = None,
    options: WatchOptions | None = None,
) -> Informer:
    """The Pods of node ``node_name`` (list and watch with a field selector)."""
    core = client.CoreV1Api(api)
    return Informer(
        resource=RESOURCE,
        list_func=core.list_pod_for_all_namespaces,
        field_selector=f"spec.nodeName={node_name}",
        transform=lambda obj: trim_pod(obj, annotation=annotation),
        on_change=on_change,
        on_key=(lambda key: on_key(RESOURCE, key)) if on_key is not None else None,
        options=options,
    )
