"""A Kubernetes API server double: enough of the REST protocol for kubectl and informers.

Unmodified ``kubectl`` and ``kubernetes_asyncio`` clients talk to it over plain
HTTP exactly as to a real cluster: discovery, CRUD with the real ``Status``
errors, the four PATCH content types, status subresources, ``dryRun=All``
(``kubectl diff``), list with selectors and pagination, server-side printing
(``kubectl get``'s columns), access reviews answered as without authorization
(``kubectl auth can-i``: yes), and watch with bookmarks and ``410 Gone``.  Tests
drive it from Python::

    async with ApiServer(bookmark_interval=0.2, history=100) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        api.store.create({"apiVersion": "v1", "kind": "Service", ...})
        api.drop_watches()
        assert ("list", "", "services") in {(r.verb, r.api_group, r.resource) for r in api.audit}

Modules: :mod:`.registry` (the resource table), :mod:`.store` (objects, revisions,
history), :mod:`.allocation` (ClusterIPs from the ServiceCIDRs, NodePorts),
:mod:`.crd` (CustomResourceDefinitions become served types), :mod:`.selectors`,
:mod:`.patch`, :mod:`.discovery` (discovery and OpenAPI stubs), :mod:`.tables` (the
``Table`` answers), :mod:`.server`
(HTTP, watch streaming, fault knobs, audit).

``ApiServer(service_cidrs=[...])`` sets the Service range(s) (default
``10.96.0.0/12,fd00:10:96::/112``; the ServiceCIDR ``kubernetes`` holds them);
``ApiServer(service_cidr_api=False)`` serves no ServiceCIDR API, like a server
older than 1.33.  The CLI flags are ``--service-cidrs`` and ``--no-service-cidr-api``.
"""

from .allocation import DEFAULT_SERVICE_CIDRS
from .crd import CRDS, SERVICE_L2_STATUS_CRD
from .errors import AlreadyExists, ApiError, BadRequest, Conflict, Gone, Invalid, NotFound
from .registry import DEFAULT_RESOURCES, Obj, Registry, ResourceType
from .selectors import Selector
from .server import ApiServer, AuditRecord
from .store import Backup, Change, Store

__all__ = [
    "CRDS",
    "DEFAULT_RESOURCES",
    "DEFAULT_SERVICE_CIDRS",
    "SERVICE_L2_STATUS_CRD",
    "AlreadyExists",
    "ApiError",
    "ApiServer",
    "AuditRecord",
    "Backup",
    "BadRequest",
    "Change",
    "Conflict",
    "Gone",
    "Invalid",
    "NotFound",
    "Obj",
    "Registry",
    "ResourceType",
    "Selector",
    "Store",
]
