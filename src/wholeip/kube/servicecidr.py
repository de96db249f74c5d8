"""ServiceCIDR objects (``networking.k8s.io/v1``): whether the server has them, and their informer.

The API exists from Kubernetes 1.33 on (beta before, off by default). Whether a
server has it is asked once, at start, by discovery: ``GET
/apis/networking.k8s.io/v1`` lists ``servicecidrs``; a 404 (the group/version is
not served) or a list without it means no. Discovery is what kubectl does, and it
costs one small request instead of a list that may fail for other reasons. The
agent does not look again: a control plane upgraded to 1.33 restarts nothing of
ours, but the DaemonSet's next rollout (or any restart) picks the API up.

What the model reads of an object is its ``spec.cidrs``; the informer keeps just
that (and the metadata the cache needs), so status updates wake nothing.
See :mod:`wholeip.core.servicecidr` for what the networks are used for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wholeip.kube.api import Obj, serves_resource
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client

GROUP_VERSION = "networking.k8s.io/v1"
RESOURCE = "servicecidrs"


async def has_api(api: client.ApiClient, *, request_timeout: float = 10.0) -> bool:
    """Whether the server serves ServiceCIDR objects (discovery; raises on any other error)."""
    return await serves_resource(api, GROUP_VERSION, RESOURCE, request_timeout=request_timeout)


def trim_service_cidr(obj: Obj) -> Obj:
    """Keep only what the model reads of a ServiceCIDR (its ranges) and what the cache needs."""
    meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    spec: dict[str, Any] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
    return {
        "kind": obj.get("kind", "ServiceCIDR"),
        "metadata": {k: meta[k] for k in ("name", "uid", "resourceVersion") if k in meta},
        "spec": {k: spec[k] for k in ("cidrs",) if k in spec},
    }


def service_cidr_informer(
    api: client.ApiClient,
    *,
    on_change: Callable[[], None],
    on_key: Callable[[str, str | None], None] | None = None,
    options: WatchOptions | None = None,
) -> Informer:
    """The ServiceCIDR informer. ``on_key`` hears ``("servicecidrs", key)``: a change of the
    Service ranges is a change of the cluster networks, for which the agent rebuilds its index."""
    return Informer(
        resource=RESOURCE,
        list_func=client.NetworkingV1Api(api).list_service_cidr,
        transform=trim_service_cidr,
        on_change=on_change,
        on_key=(lambda key: on_key(RESOURCE, key)) if on_key is not None else None,
        options=options,
    )
