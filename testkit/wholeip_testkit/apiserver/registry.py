"""The resource types the double serves: one declarative table, easy to extend.

Everything the server knows about a type (its URL, scope, kind, discovery
short names, subresources, which field selectors the real server accepts and
how to default a new object) is one :class:`ResourceType` row in
:data:`DEFAULT_RESOURCES`.  Discovery documents, the OpenAPI v3 stubs, routing and
the store are all derived from this table, so adding a type is one entry here
and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as decoded JSON."""

Defaulter = Callable[[Obj], None]
"""Fills server-side defaults into a new object in place (the real API's defaulting)."""

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
COMMON_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One REST resource (``group/version/plural``) and how the real server treats it."""

    group: str
    """API group, ``""`` for the core (legacy ``/api/v1``) group."""
    version: str
    plural: str
    """The URL segment and RBAC ``resources`` entry, e.g. ``daemonsets``."""
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    """Only ``status`` has behaviour; others would be advertised but answer 404."""
    field_labels: tuple[str, ...] = ()
    """Field selector paths accepted beyond ``metadata.name``/``metadata.namespace``."""
    defaulter: Defaulter | None = field(default=None, compare=False)
    status_on_create: bool = False
    """Whether a create may set ``status`` (Nodes: the kubelet registers with one);
    the real strategies of the other types with a status subresource reset it."""
    custom: bool = False
    """Served from a CustomResourceDefinition: list items keep ``apiVersion``/``kind``
    (unstructured lists do), and the type goes away with its definition."""
    review: bool = False
    """An access review (``kubectl auth can-i``): created only, answered, never stored."""
    printer_columns: tuple[Obj, ...] = field(default=(), compare=False)
    """A custom resource's ``additionalPrinterColumns`` (its version's), for ``kubectl get``."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        """The URL prefix, ``api/v1`` or ``apis/<group>/<version>``."""
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def key(self) -> str:
        """``plural.group`` (or ``plural`` for core), the name kubectl and RBAC use."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def supports_field(self, path: str) -> bool:
        return path in COMMON_FIELDS or path in self.field_labels


def _default_service(obj: Obj) -> None:
    # Only the defaults that clients (and the agent's model) commonly read; IP and
    # port allocation (and the IP family fields) are the store's (allocation.py),
    # because they need to know what is taken.
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    spec.setdefault("internalTrafficPolicy", "Cluster")
    obj.setdefault("status", {"loadBalancer": {}})


def _default_service_cidr(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("cidrs", [])


def _default_ports_protocol(obj: Obj) -> None:
    for port in obj.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _default_namespace(obj: Obj) -> None:
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    obj.setdefault("status", {"phase": "Active"})
    name = obj.get("metadata", {}).get("name")
    if name:
        labels = obj["metadata"].setdefault("labels", {})
        labels.setdefault("kubernetes.io/metadata.name", name)


def _default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    obj.setdefault("status", {"phase": "Pending"})


def _default_secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")


def _r(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool,
    short: Iterable[str] = (),
    sub: Iterable[str] = (),
    fields: Iterable[str] = (),
    categories: Iterable[str] = (),
    defaulter: Defaulter | None = None,
    status_on_create: bool = False,
    review: bool = False,
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        singular=kind.lower(),
        short_names=tuple(short),
        subresources=tuple(sub),
        field_labels=tuple(fields),
        categories=tuple(categories),
        defaulter=defaulter,
        status_on_create=status_on_create,
        review=review,
    )


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    _r("", "v1", "namespaces", "Namespace", namespaced=False, short=["ns"],
       sub=["status"], fields=["status.phase"], defaulter=_default_namespace),
    _r("", "v1", "services", "Service", namespaced=True, short=["svc"], sub=["status"],
       fields=["spec.clusterIP", "spec.type"], categories=["all"], defaulter=_default_service),
    _r("", "v1", "endpoints", "Endpoints", namespaced=True, short=["ep"]),
    _r("", "v1", "nodes", "Node", namespaced=False, short=["no"], sub=["status"],
       fields=["spec.unschedulable"], status_on_create=True),
    _r("", "v1", "pods", "Pod", namespaced=True, short=["po"], sub=["status"],
       categories=["all"], defaulter=_default_pod,
       fields=["spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
               "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
               "status.podIP", "status.nominatedNodeName"]),
    _r("", "v1", "events", "Event", namespaced=True, short=["ev"], fields=_EVENT_FIELDS),
    _r("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True, short=["sa"]),
    _r("", "v1", "configmaps", "ConfigMap", namespaced=True, short=["cm"]),
    _r("", "v1", "secrets", "Secret", namespaced=True, fields=["type"],
       defaulter=_default_secret),
    _r("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True,
       fields=["addressType"], defaulter=_default_ports_protocol),
    _r("events.k8s.io", "v1", "events", "Event", namespaced=True, short=["ev"],
       fields=_EVENT_FIELDS),
    _r("apps", "v1", "daemonsets", "DaemonSet", namespaced=True, short=["ds"],
       sub=["status"], categories=["all"]),
    _r("apps", "v1", "deployments", "Deployment", namespaced=True, short=["deploy"],
       sub=["status"], categories=["all"]),
    _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
       namespaced=False),
    _r("rbac.authorization.k8s.io", "v1", "roles", "Role", namespaced=True),
    _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", namespaced=True),
    _r("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    _r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview",
       namespaced=False, review=True),
    _r("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview",
       namespaced=False, review=True),
    _r("batch", "v1", "jobs", "Job", namespaced=True, sub=["status"], categories=["all"],
       fields=["status.successful"]),
    _r("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", namespaced=False,
       sub=["status"], defaulter=_default_service_cidr),
    _r("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
       namespaced=False, short=["crd", "crds"], sub=["status"], categories=["api-extensions"]),
)  # fmt: skip


class Registry:
    """Lookup of :class:`ResourceType` by URL, by ``apiVersion``/``kind`` or by name."""

    def __init__(self, types: Iterable[ResourceType] = DEFAULT_RESOURCES, *, service_cidrs: bool = True) -> None:
        """``service_cidrs=False``: a server older than 1.33 (no ``networking.k8s.io/v1``
        ServiceCIDR), for testing clients' fallbacks."""
        self.types: tuple[ResourceType, ...] = tuple(
            t for t in types if service_cidrs or t.key != "servicecidrs.networking.k8s.io"
        )
        self.reindex()

    def reindex(self) -> None:
        """Index :attr:`types` again (after it was set)."""
        self._by_url = {(t.group, t.version, t.plural): t for t in self.types}
        self._by_kind = {(t.api_version, t.kind): t for t in self.types}

    def add(self, rtype: ResourceType) -> None:
        """Serve a new type (a CRD version), replacing one at the same URL."""
        url = (rtype.group, rtype.version, rtype.plural)
        self.types = (*(t for t in self.types if (t.group, t.version, t.plural) != url), rtype)
        self.reindex()

    def remove(self, key: str) -> list[ResourceType]:
        """Stop serving every version of ``plural.group``; returns what was removed."""
        gone = [t for t in self.types if t.key == key]
        self.types = tuple(t for t in self.types if t.key != key)
        self.reindex()
        return gone

    def has(self, key: str) -> bool:
        return any(t.key == key for t in self.types)

    def by_url(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_url.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def resolve(self, name: str | ResourceType) -> ResourceType:
        """A type from ``plural[.group]``, a kind, or a short name (first match wins).

        ``events`` is the core group's; ``events.events.k8s.io`` the other one.
        """
        if isinstance(name, ResourceType):
            return name
        for t in self.types:
            if name in (t.key, t.kind, *t.short_names) or (name == t.plural and not t.group):
                return t
        for t in self.types:
            if name == t.plural:
                return t
        raise KeyError(f"unknown resource {name!r}")

    def groups(self) -> Mapping[str, list[str]]:
        """Group -> versions, in table order (the first version is the preferred one)."""
        out: dict[str, list[str]] = {}
        for t in self.types:
            versions = out.setdefault(t.group, [])
            if t.version not in versions:
                versions.append(t.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self.types if t.group == group and t.version == version]
