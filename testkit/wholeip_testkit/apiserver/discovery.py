"""Discovery and OpenAPI documents, all derived from the :class:`Registry`.

kubectl finds resources through the *legacy* discovery documents (``/api``,
``/apis``, ``/api/v1``, ``/apis/<group>/<version>``).  It asks for the
aggregated format first (``Accept: ...;as=APIGroupDiscoveryList``) and falls
back when the answer's ``Content-Type`` is plain ``application/json``, so the
double only serves the legacy format.

``kubectl apply``/``create``/``replace`` validate by default.  Since 1.27 kubectl
first asks ``/openapi/v3`` whether the PATCH operation of the object's
group-version-kind accepts the ``fieldValidation`` query parameter; if it does,
kubectl leaves validation to the server (it sends ``fieldValidation=Strict``)
and never downloads the protobuf OpenAPI v2 schema.  So the OpenAPI v3 documents
here are stubs carrying exactly that: one path item per resource with a
``patch`` operation tagged with ``x-kubernetes-group-version-kind`` and a
``fieldValidation`` parameter.  ``components.schemas`` is empty, so ``kubectl
apply`` computes its three-way strategic merge patch from the Go types compiled
into kubectl, which is what it does for any schema it cannot find.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .registry import ALL_VERBS, Registry, ResourceType

KUBERNETES_VERSION = ("1", "37", "v1.37.0")


def version_info() -> dict[str, str]:
    major, minor, git = KUBERNETES_VERSION
    return {
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": git,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, vs) for g, vs in registry.groups().items() if g],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def _storage_hash(t: ResourceType) -> str:
    digest = hashlib.sha256(f"{t.group}/{t.version}/{t.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for t in types:
        entry: dict[str, Any] = {
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["create"] if t.review else list(ALL_VERBS),
        }
        if not t.review:
            entry["storageVersionHash"] = _storage_hash(t)
        if t.short_names:
            entry["shortNames"] = list(t.short_names)
        if t.categories:
            entry["categories"] = list(t.categories)
        resources.append(entry)
        for sub in t.subresources:
            resources.append(
                {
                    "name": f"{t.plural}/{sub}",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": types[0].api_version,
        "resources": resources,
    }


def _operation(t: ResourceType, action: str) -> dict[str, Any]:
    params = [
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
    ]
    if action in ("patch", "put", "post"):
        params.append({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}})
    if action == "patch":
        params.append({"name": "force", "in": "query", "schema": {"type": "boolean"}})
    return {
        "operationId": f"{action}{t.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
    }


def openapi_v3_doc(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    for t in types:
        base = f"/{t.group_version}"
        scope = f"{base}/namespaces/{{namespace}}/{t.plural}" if t.namespaced else f"{base}/{t.plural}"
        paths[scope] = {"get": _operation(t, "list"), "post": _operation(t, "post")}
        paths[f"{scope}/{{name}}"] = {
            "get": _operation(t, "get"),
            "put": _operation(t, "put"),
            "patch": _operation(t, "patch"),
            "delete": _operation(t, "delete"),
        }
        for sub in t.subresources:
            paths[f"{scope}/{{name}}/{sub}"] = {
                "get": _operation(t, "get"),
                "put": _operation(t, "put"),
                "patch": _operation(t, "patch"),
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION[2]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def openapi_v3_root(registry: Registry) -> dict[str, Any]:
    """The index kubectl reads first; the hash lets it cache each document."""
    out: dict[str, Any] = {}
    for group, versions in registry.groups().items():
        for version in versions:
            prefix = f"apis/{group}/{version}" if group else f"api/{version}"
            doc = openapi_v3_doc(registry, group, version)
            digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()
            out[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest[:128]}"}
    return {"paths": out}
