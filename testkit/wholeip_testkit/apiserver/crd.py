"""CustomResourceDefinitions: what the apiextensions-apiserver does with one.

A CRD (``apiextensions.k8s.io/v1``) is checked like the real strategy checks the
parts that matter to a client (its name is ``<plural>.<group>``, names and scope
are given, exactly one version is the storage version), defaulted (singular,
``listKind``), and given the status the naming and establishing controllers would
write (``NamesAccepted`` and ``Established`` true, ``acceptedNames``,
``storedVersions``).  Each *served* version then becomes a :class:`ResourceType`
(namespaced or cluster-scoped, with a ``status`` subresource if the version
declares one), which the store registers so that discovery, OpenAPI stubs,
routing, list, watch and writes serve it like any built-in type.  Schemas are not
enforced: custom objects are stored as sent (``x-kubernetes-preserve-unknown-fields``
behaviour), which is enough for clients that write well-formed objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import field_value, invalid
from .registry import Obj, ResourceType

CRDS = Path(__file__).resolve().parents[1] / "crds"
"""CRD manifests the test kit ships (``kubectl apply -f`` them, to the double or a cluster)."""
SERVICE_L2_STATUS_CRD = CRDS / "metallb.io_servicel2statuses.yaml"
"""MetalLB's ``servicel2statuses.metallb.io`` (``metallb.io/v1beta1`` ServiceL2Status)."""

GROUP = "apiextensions.k8s.io"
KEY = "customresourcedefinitions.apiextensions.k8s.io"
_KIND = "CustomResourceDefinition"


def _fail(name: str, causes: list[tuple[str, str, str]]) -> Exception:
    return invalid(_KIND, name, causes, group=GROUP)


def prepare(crd: Obj, now: str) -> None:
    """Validate and default ``crd`` in place and set its status; 422 ``Invalid`` if it is not acceptable."""
    name = (crd.get("metadata") or {}).get("name", "")
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        raise _fail(name, [("FieldValueRequired", "spec", "Required value")])
    names: Obj = spec["names"] if isinstance(spec.get("names"), dict) else {}
    causes: list[tuple[str, str, str]] = []
    group = spec.get("group") or ""
    if not group:
        causes.append(("FieldValueRequired", "spec.group", "Required value"))
    elif "." not in group:
        causes.append(
            ("FieldValueInvalid", "spec.group", f'Invalid value: "{group}": should be a domain with at least one dot')
        )
    for field in ("plural", "kind"):
        if not names.get(field):
            causes.append(("FieldValueRequired", f"spec.names.{field}", "Required value"))
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        causes.append(("FieldValueNotSupported", "spec.scope",
                       f'Unsupported value: "{scope or ""}": supported values: "Cluster", "Namespaced"'))  # fmt: skip
    versions: list[Obj] = spec["versions"] if isinstance(spec.get("versions"), list) else []
    if not versions:
        causes.append(
            (
                "FieldValueInvalid",
                "spec.versions",
                "Invalid value: null: must have exactly one version marked as storage version",
            )
        )
    elif sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1:
        causes.append(
            (
                "FieldValueInvalid",
                "spec.versions",
                f"Invalid value: {field_value(versions)}: must have exactly one version marked as storage version",
            )
        )
    elif not any(v.get("served") for v in versions):
        causes.append(
            (
                "FieldValueInvalid",
                "spec.versions",
                f"Invalid value: {field_value(versions)}: must have at least one version marked as served",
            )
        )
    if names.get("plural") and group and name != f"{names['plural']}.{group}":
        causes.append(("FieldValueInvalid", "metadata.name",
                       f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))  # fmt: skip
    if causes:
        raise _fail(name, causes)
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    storage = next(v["name"] for v in versions if v.get("storage"))
    status: Obj = crd["status"] if isinstance(crd.get("status"), dict) else {}
    stored = list(status.get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    previous = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    conditions = [
        previous.get("NamesAccepted") or _condition("NamesAccepted", "NoConflicts", "no conflicts found", now),
        previous.get("Established")
        or _condition("Established", "InitialNamesAccepted", "the initial names have been accepted", now),
    ]
    crd["status"] = {"conditions": conditions, "acceptedNames": dict(names), "storedVersions": stored}


def _condition(type_: str, reason: str, message: str, now: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message}


def resource_types(crd: Obj) -> list[ResourceType]:
    """The types a (prepared) CRD serves, one per served version, storage version first."""
    spec: Obj = crd["spec"]
    names: Obj = spec["names"]
    versions: list[Obj] = sorted(spec["versions"], key=lambda v: not v.get("storage"))
    return [
        ResourceType(
            group=spec["group"],
            version=v["name"],
            plural=names["plural"],
            kind=names["kind"],
            namespaced=spec["scope"] == "Namespaced",
            singular=names.get("singular", names["kind"].lower()),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=("status",) if "status" in (v.get("subresources") or {}) else (),
            custom=True,
            printer_columns=tuple(c for c in v.get("additionalPrinterColumns") or () if isinstance(c, dict)),
        )
        for v in versions
        if v.get("served")
    ]
