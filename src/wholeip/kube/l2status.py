"""MetalLB's ServiceL2Status objects (``metallb.io/v1beta1``): whether the server has them,
and their informer.

In layer-2 mode MetalLB records, per Service, the node that announces its IP in a
``ServiceL2Status`` (``status.node``, ``status.serviceName``, ``status.serviceNamespace``).
That node holds the Service's egress IP (:mod:`wholeip.core.egressip`). The type is a
custom resource, present only where MetalLB (0.14 on) is installed: whether the server
serves it is asked once, at start, by discovery (``GET /apis/metallb.io/v1beta1``; a 404
or a list without ``servicel2statuses`` means no), as for ServiceCIDRs
(:mod:`wholeip.kube.servicecidr`). Where the type is missing, the Services' annotation
``networking.cozystack.io/egressNode`` names the holder.

The informer keeps of an object its name, namespace, uid, resourceVersion and the three
status fields: MetalLB rewrites the interfaces list, which wakes nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wholeip.kube.api import Obj, serves_resource
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client
from wholeip.names import L2_STATUS_GROUP, L2_STATUS_KIND, L2_STATUS_RESOURCE, L2_STATUS_VERSION

GROUP_VERSION = f"{L2_STATUS_GROUP}/{L2_STATUS_VERSION}"
RESOURCE = L2_STATUS_RESOURCE


async def has_api(api: client.ApiClient, *, request_timeout: float = 10.0) -> bool:
    """Whether the server serves ServiceL2Status objects (discovery; raises on any other error)."""
    return await serves_resource(api, GROUP_VERSION, RESOURCE, request_timeout=request_timeout)


def trim_l2_status(obj: Obj) -> Obj:
    """Keep only what the model reads of a ServiceL2Status and what the cache needs."""
    meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    status: dict[str, Any] = obj["status"] if isinstance(obj.get("status"), dict) else {}
    return {
        "kind": L2_STATUS_KIND,
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
        "status": {k: status[k] for k in ("node", "serviceName", "serviceNamespace") if k in status},
    }


def l2_status_informer(
    api: client.ApiClient,
    *,
    on_change: Callable[[], None],
    on_key: Callable[[str, str | None], None] | None = None,
    options: WatchOptions | None = None,
) -> Informer:
    """The ServiceL2Status informer (every namespace). ``on_key`` hears
    ``("servicel2statuses", key)``: the index re-resolves the Service it names."""
    custom = client.CustomObjectsApi(api)

    def list_func(**kwargs: Any) -> Any:
        return custom.list_cluster_custom_object(L2_STATUS_GROUP, L2_STATUS_VERSION, RESOURCE, **kwargs)

    return Informer(
        resource=RESOURCE,
        list_func=list_func,
        transform=trim_l2_status,
        on_change=on_change,
        on_key=(lambda key: on_key(RESOURCE, key)) if on_key is not None else None,
        options=options,
    )
