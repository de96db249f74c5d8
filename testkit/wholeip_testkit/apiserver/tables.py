"""Server-side printing: the ``Table`` a real API server answers ``kubectl get`` with.

kubectl asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` first and prints the
server's columns (a Service's TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S) ...). A server that
answers plain JSON instead makes kubectl fall back to NAME and AGE, which is not what a
user sees on a real cluster. The columns and cells here follow kube-apiserver's printers
(``pkg/printers/internalversion``) for the kinds the double serves; a kind without a
printer gets the real default table (Name, Created At), a custom resource its CRD's
``additionalPrinterColumns`` (simple ``.a.b`` paths) and Age.

Rows carry the object's metadata (``includeObject=Metadata``, the default, what kubectl's
``--show-labels`` reads), the whole object (``Object``, for ``--sort-by``) or nothing
(``None``). A watch's first event carries the column definitions, later ones none, as
kube-apiserver sends them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .registry import Obj, ResourceType

Cell = str | int
Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    cell: Callable[[Obj, datetime.datetime], Cell]
    type: str = "string"
    format: str = ""
    priority: int = 0
    description: str = ""

    def definition(self) -> Obj:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def wanted(accept: str) -> str | None:
    """The Table version (``v1``, ``v1beta1``) an Accept header asks for first, if it asks
    for a Table before anything else the server could send."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        options = dict(p.split("=", 1) for p in params if "=" in p)
        if options.get("as") == "Table":
            if options.get("g") == "meta.k8s.io" and options.get("v") in ("v1", "v1beta1"):
                return options["v"]
            continue
        if media in ("application/json", "*/*", "application/*"):
            return None
    return None


# --------------------------------------------------------------------------- cells


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _stamp(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``: how kubectl shows an age."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // 24 // 365, hours // 24 % 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{years}y"


def _since(value: Any, now: datetime.datetime) -> str:
    stamp = _stamp(value)
    return "<unknown>" if stamp is None else human_duration((now - stamp).total_seconds())


def _name(obj: Obj, now: datetime.datetime) -> Cell:
    return str(_get(obj, "metadata", "name") or "")


def _age(obj: Obj, now: datetime.datetime) -> Cell:
    return _since(_get(obj, "metadata", "creationTimestamp"), now)


def _created_at(obj: Obj, now: datetime.datetime) -> Cell:
    return str(_get(obj, "metadata", "creationTimestamp") or "")


def _labels(value: Any) -> str:
    """``labels.FormatLabels``: sorted ``k=v`` pairs, or ``<none>``."""
    pairs = sorted(value.items()) if isinstance(value, dict) else []
    return ",".join(f"{k}={v}" for k, v in pairs) or "<none>"


def _text(*path: str, default: str = "<none>") -> Callable[[Obj, datetime.datetime], Cell]:
    """The cell of one field, as text (``default`` where it is unset)."""
    return lambda obj, now: str(_get(obj, *path) or default)


def _wide(name: str, cell: Callable[[Obj, datetime.datetime], Cell], description: str) -> Column:
    """A column ``kubectl get -o wide`` adds (priority 1)."""
    return Column(name, cell, priority=1, description=description)


NAME = Column("Name", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column(
    "Age",
    _age,
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


# --- Service


def _service_external(obj: Obj, now: datetime.datetime) -> Cell:
    kind = _get(obj, "spec", "type") or "ClusterIP"
    external = [str(ip) for ip in _list(_get(obj, "spec", "externalIPs"))]
    if kind == "ExternalName":
        return str(_get(obj, "spec", "externalName") or "")
    if kind == "LoadBalancer":
        ingress = [
            str(i.get("ip") or i.get("hostname"))
            for i in _list(_get(obj, "status", "loadBalancer", "ingress"))
            if isinstance(i, dict) and (i.get("ip") or i.get("hostname"))
        ]
        found = ingress + external
        return ",".join(found) if found else "<pending>"
    return ",".join(external) or "<none>"


def _service_ports(obj: Obj, now: datetime.datetime) -> Cell:
    out = []
    for port in _list(_get(obj, "spec", "ports")):
        if not isinstance(port, dict):
            continue
        text = f"{port.get('port')}"
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        out.append(f"{text}/{port.get('protocol') or 'TCP'}")
    return ",".join(out) or "<none>"


SERVICE = (
    NAME,
    Column("Type", _text("spec", "type", default="ClusterIP"), description="The type of the service."),
    Column(
        "Cluster-IP",
        _text("spec", "clusterIP"),
        description="The IP address of the service.",
    ),
    Column("External-IP", _service_external, description="The external IP address of the service."),
    Column("Port(s)", _service_ports, description="The port(s) of the service."),
    AGE,
    Column(
        "Selector",
        lambda o, n: _labels(_get(o, "spec", "selector")),
        priority=1,
        description="The label selector of the service.",
    ),
)


# --- Pod


def _pod_ready(obj: Obj, now: datetime.datetime) -> Cell:
    statuses = [s for s in _list(_get(obj, "status", "containerStatuses")) if isinstance(s, dict)]
    ready = sum(1 for s in statuses if s.get("ready") is True)
    return f"{ready}/{len(_list(_get(obj, 'spec', 'containers')))}"


def _pod_status(obj: Obj, now: datetime.datetime) -> Cell:
    reason = _get(obj, "status", "reason") or _get(obj, "status", "phase") or "Unknown"
    for status in _list(_get(obj, "status", "containerStatuses")):
        waiting = _get(status, "state", "waiting", "reason")
        if waiting:
            reason = waiting
    if _get(obj, "metadata", "deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def _pod_restarts(obj: Obj, now: datetime.datetime) -> Cell:
    return str(
        sum(s.get("restartCount") or 0 for s in _list(_get(obj, "status", "containerStatuses")) if isinstance(s, dict))
    )


POD = (
    NAME,
    Column("Ready", _pod_ready, description="The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", _pod_status, description="The aggregate status of the containers in this pod."),
    Column(
        "Restarts", _pod_restarts, description="The number of times the containers in this pod have been restarted."
    ),
    AGE,
    _wide("IP", _text("status", "podIP"), "The IP address assigned to the pod"),
    _wide("Node", _text("spec", "nodeName"), "The name of the node where this pod is running."),
    _wide("Nominated Node", _text("status", "nominatedNodeName"), "The node where this pod is nominated to run."),
    Column(
        "Readiness Gates",
        lambda o, n: (
            "<none>" if not _list(_get(o, "spec", "readinessGates")) else f"0/{len(_get(o, 'spec', 'readinessGates'))}"
        ),
        priority=1,
        description="Readiness gates of the pod.",
    ),
)


# --- Node


def _node_status(obj: Obj, now: datetime.datetime) -> Cell:
    ready = next(
        (
            c.get("status")
            for c in _list(_get(obj, "status", "conditions"))
            if isinstance(c, dict) and c.get("type") == "Ready"
        ),
        None,
    )
    status = "Ready" if ready == "True" else "NotReady" if ready == "False" else "Unknown"
    if _get(obj, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    return status


def _node_roles(obj: Obj, now: datetime.datetime) -> Cell:
    labels = _get(obj, "metadata", "labels")
    roles = set()
    for key, value in labels.items() if isinstance(labels, dict) else ():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(str(value))
    return ",".join(sorted(roles)) or "<none>"


def _node_address(kind: str) -> Callable[[Obj, datetime.datetime], Cell]:
    def cell(obj: Obj, now: datetime.datetime) -> Cell:
        for address in _list(_get(obj, "status", "addresses")):
            if isinstance(address, dict) and address.get("type") == kind:
                return str(address.get("address"))
        return "<none>"

    return cell


NODE = (
    NAME,
    Column("Status", _node_status, description="The status of the node"),
    Column("Roles", _node_roles, description="The roles of the node"),
    AGE,
    Column("Version", _text("status", "nodeInfo", "kubeletVersion", default=""), description="Kubelet Version."),
    _wide("Internal-IP", _node_address("InternalIP"), "List of addresses reachable to the node."),
    _wide("External-IP", _node_address("ExternalIP"), "List of addresses reachable to the node."),
    _wide("OS-Image", _text("status", "nodeInfo", "osImage", default="<unknown>"), "OS Image reported by the node."),
    _wide("Kernel-Version", _text("status", "nodeInfo", "kernelVersion", default="<unknown>"), "Kernel Version."),
    _wide(
        "Container-Runtime",
        _text("status", "nodeInfo", "containerRuntimeVersion", default="<unknown>"),
        "Container Runtime Version reported by the node.",
    ),
)


# --- EndpointSlice


def _slice_ports(obj: Obj, now: datetime.datetime) -> Cell:
    ports = [str(p.get("port")) for p in _list(obj.get("ports")) if isinstance(p, dict) and p.get("port") is not None]
    return ",".join(ports) or "<unset>"


def _slice_endpoints(obj: Obj, now: datetime.datetime) -> Cell:
    addresses = [str(a) for e in _list(obj.get("endpoints")) if isinstance(e, dict) for a in _list(e.get("addresses"))]
    if not addresses:
        return "<unset>"
    shown = ",".join(addresses[:3])
    return shown if len(addresses) <= 3 else f"{shown} + {len(addresses) - 3} more..."


ENDPOINT_SLICE = (
    NAME,
    Column("AddressType", _text("addressType", default=""), description="The IP protocol for this slice"),
    Column("Ports", _slice_ports, description="Ports in this slice"),
    Column("Endpoints", _slice_endpoints, description="Endpoints in this slice"),
    AGE,
)


# --- Event


def _event_last_seen(obj: Obj, now: datetime.datetime) -> Cell:
    for path in (
        ("lastTimestamp",),
        ("series", "lastObservedTime"),
        ("eventTime",),
        ("firstTimestamp",),
        ("metadata", "creationTimestamp"),
    ):
        if _get(obj, *path):
            return _since(_get(obj, *path), now)
    return "<unknown>"


def _event_object(obj: Obj, now: datetime.datetime) -> Cell:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{str(_get(ref, 'kind') or '').lower()}/{_get(ref, 'name') or ''}"


def _event_source(obj: Obj, now: datetime.datetime) -> Cell:
    component = (
        _get(obj, "source", "component") or obj.get("reportingComponent") or obj.get("reportingController") or ""
    )
    host = _get(obj, "source", "host") or obj.get("reportingInstance") or ""
    return f"{component}, {host}" if host else str(component)


EVENT = (
    Column("Last Seen", _event_last_seen, description="Time when last occurrence of this event was observed."),
    Column(
        "Type",
        _text("type", default=""),
        description="Type of this event (Normal, Warning), new types could be added in the future.",
    ),
    Column(
        "Reason",
        _text("reason", default=""),
        description="Why the event was generated, short and machine understandable.",
    ),
    Column("Object", _event_object, description="The object that this event is about."),
    Column(
        "Subobject",
        _text("involvedObject", "fieldPath", default=""),
        priority=1,
        description="The subobject that this event is about.",
    ),
    Column(
        "Source",
        _event_source,
        priority=1,
        description="The component reporting this event. Should be a short machine understandable string.",
    ),
    Column(
        "Message",
        lambda o, n: str(o.get("message") or o.get("note") or ""),
        description="A human-readable description of the status of this operation.",
    ),
    Column(
        "First Seen",
        lambda o, n: _since(o.get("firstTimestamp") or o.get("eventTime"), n),
        priority=1,
        description="The time at which the event was first recorded.",
    ),
    Column(
        "Count",
        lambda o, n: str(o.get("count") or _get(o, "series", "count") or 1),
        priority=1,
        description="The number of times this event has occurred.",
    ),
    Column("Name", _name, priority=1, format="name", description="Name must be unique within a namespace."),
)


# --- the rest


def _count(*path: str) -> Callable[[Obj, datetime.datetime], Cell]:
    return lambda o, n: int(_get(o, *path) or 0)


DAEMON_SET = (
    NAME,
    *(
        Column(name, _count("status", field), type="integer", description=description)
        for name, field, description in (
            ("Desired", "desiredNumberScheduled", "The number of nodes that should be running the daemon pod."),
            ("Current", "currentNumberScheduled", "The number of nodes running at least one daemon pod."),
            ("Ready", "numberReady", "Nodes that should run the daemon pod and run it ready."),
            ("Up-to-date", "updatedNumberScheduled", "The total number of nodes that are running updated daemon pod."),
            ("Available", "numberAvailable", "Nodes that should run the daemon pod and run it available."),
        )
    ),
    Column(
        "Node Selector",
        lambda o, n: _labels(_get(o, "spec", "template", "spec", "nodeSelector")),
        description="NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
)


def _replicas(obj: Obj) -> int:
    wanted = _get(obj, "spec", "replicas")
    return 1 if wanted is None else int(wanted)  # (the API's default)


def _role(obj: Obj, now: datetime.datetime) -> Cell:
    return f"{_get(obj, 'roleRef', 'kind') or ''}/{_get(obj, 'roleRef', 'name') or ''}"


COLUMNS: dict[str, Sequence[Column]] = {
    "services": SERVICE,
    "pods": POD,
    "nodes": NODE,
    "endpointslices.discovery.k8s.io": ENDPOINT_SLICE,
    "events": EVENT,
    "events.events.k8s.io": EVENT,
    "daemonsets.apps": DAEMON_SET,
    "namespaces": (
        NAME,
        Column(
            "Status",
            _text("status", "phase", default="Active"),
            description="The status of the namespace",
        ),
        AGE,
    ),
    "servicecidrs.networking.k8s.io": (
        NAME,
        Column(
            "CIDRs",
            lambda o, n: ",".join(map(str, _list(_get(o, "spec", "cidrs")))),
            description="cidrs defines the IP blocks in CIDR notation",
        ),
        AGE,
    ),
    "configmaps": (
        NAME,
        Column(
            "Data",
            lambda o, n: len(_get(o, "data") or {}) + len(_get(o, "binaryData") or {}),
            type="integer",
            description="Data contains the configuration data.",
        ),
        AGE,
    ),
    "serviceaccounts": (
        NAME,
        Column(
            "Secrets",
            lambda o, n: len(_list(o.get("secrets"))),
            type="integer",
            description="The secrets pods of this ServiceAccount may use.",
        ),
        AGE,
    ),
    "leases.coordination.k8s.io": (
        NAME,
        Column("Holder", _text("spec", "holderIdentity", default=""), description="The holder of the lease."),
        AGE,
    ),
    "secrets": (
        NAME,
        Column("Type", _text("type", default=""), description="The type of the secret"),
        Column("Data", lambda o, n: len(_get(o, "data") or {}), type="integer", description="The number of items"),
        AGE,
    ),
    "deployments.apps": (
        NAME,
        Column(
            "Ready",
            lambda o, n: f"{int(_get(o, 'status', 'readyReplicas') or 0)}/{_replicas(o)}",
            description="Number of the pod with ready state",
        ),
        Column("Up-to-date", _count("status", "updatedReplicas"), type="integer", description="Updated replicas."),
        Column("Available", _count("status", "availableReplicas"), type="integer", description="Available replicas."),
        AGE,
    ),
    "clusterrolebindings.rbac.authorization.k8s.io": (
        NAME,
        Column("Role", _role, description="Role of the binding."),
        AGE,
    ),
    "rolebindings.rbac.authorization.k8s.io": (NAME, Column("Role", _role, description="Role of the binding."), AGE),
}
"""Per resource (``ResourceType.key``): kube-apiserver's columns for it."""

DEFAULT = (
    NAME,
    Column(
        "Created At",
        _created_at,
        type="date",
        description="CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
)
"""What kube-apiserver's default table convertor prints for a kind without a printer."""


def _json_path(path: str) -> Callable[[Obj, datetime.datetime], Cell]:
    keys = [k for k in path.strip().lstrip(".").split(".") if k]

    def cell(obj: Obj, now: datetime.datetime) -> Cell:
        value = _get(obj, *keys)
        return "" if value is None else value if isinstance(value, int | str) else str(value)

    return cell


def columns_of(rtype: ResourceType) -> Sequence[Column]:
    if rtype.custom:
        extra = [
            Column(str(c.get("name")), _json_path(str(c.get("jsonPath") or "")), type=str(c.get("type") or "string"),
                   priority=int(c.get("priority") or 0), description=str(c.get("description") or ""))
            for c in rtype.printer_columns
        ]  # fmt: skip
        return (NAME, *extra, AGE) if not any(c.name == "Age" for c in extra) else (NAME, *extra)
    return COLUMNS.get(rtype.key, DEFAULT)


def _row_object(obj: Obj, rtype: ResourceType, include: str, version: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return {"apiVersion": rtype.api_version, "kind": rtype.kind, **obj}
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj.get("metadata", {}),
    }


def table(
    rtype: ResourceType,
    objs: Iterable[Obj],
    *,
    meta: Obj,
    version: str,
    include: str | None,
    headers: bool = True,
    now: datetime.datetime | None = None,
) -> Obj:
    """The Table of ``objs`` (``meta``: the list's metadata); ``include``: the request's
    ``includeObject`` (None: the default, Metadata)."""
    moment = now or datetime.datetime.now(datetime.UTC)
    columns = columns_of(rtype)
    rows = []
    for obj in objs:
        row: Obj = {"cells": [c.cell(obj, moment) for c in columns]}
        shown = _row_object(obj, rtype, include or "Metadata", version)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": meta,
        "columnDefinitions": [c.definition() for c in columns] if headers else None,
        "rows": rows,
    }
