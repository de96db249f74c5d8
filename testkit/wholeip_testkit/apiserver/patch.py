"""The four PATCH flavours: JSON merge, strategic merge, JSON patch, and apply.

* JSON merge patch (RFC 7386): maps merge, ``null`` deletes, everything else replaces.
* Strategic merge patch (SMP): like merge patch, but some lists are merged
  element-wise by a *patch merge key* (``containers`` by ``name``, Service
  ``ports`` by ``port`` ...) and the patch may carry directives: ``$patch``
  (``replace``/``delete``/``merge``), ``$retainKeys``,
  ``$setElementOrder/<field>`` and ``$deleteFromPrimitiveList/<field>``.
  The real server reads merge keys from the Go struct tags; this double keeps
  the same information as a table of *path suffixes* (``spec.containers``,
  ``containers.ports`` ...) because a field name alone is ambiguous (``ports``
  is merged by ``port`` in a Service, by ``containerPort`` in a container, and
  atomic in an EndpointSlice).
* JSON patch (RFC 6902): the operation list, applied to a copy so a failing
  ``test`` leaves the object untouched.

Every function returns a new document and never mutates its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from .errors import Invalid, UnsupportedMediaType

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

# (kinds or None for any, path suffix, merge key or None for a merged primitive list)
# Taken from the patchMergeKey/patchStrategy tags of k8s.io/api for the fields
# the resources served here have; anything not listed is atomic (replaced).
_MERGE_RULES: tuple[tuple[frozenset[str] | None, tuple[str, ...], str | None], ...] = (
    (None, ("metadata", "finalizers"), None),
    (None, ("metadata", "ownerReferences"), "uid"),
    (None, ("spec", "containers"), "name"),
    (None, ("spec", "initContainers"), "name"),
    (None, ("spec", "ephemeralContainers"), "name"),
    (None, ("spec", "volumes"), "name"),
    (None, ("spec", "imagePullSecrets"), "name"),
    (None, ("spec", "hostAliases"), "ip"),
    (None, ("spec", "topologySpreadConstraints"), "topologyKey"),
    (None, ("spec", "resourceClaims"), "name"),
    (None, ("spec", "schedulingGates"), "name"),
    (None, ("containers", "ports"), "containerPort"),
    (None, ("initContainers", "ports"), "containerPort"),
    (None, ("ephemeralContainers", "ports"), "containerPort"),
    (None, ("containers", "env"), "name"),
    (None, ("initContainers", "env"), "name"),
    (None, ("ephemeralContainers", "env"), "name"),
    (None, ("containers", "volumeMounts"), "mountPath"),
    (None, ("initContainers", "volumeMounts"), "mountPath"),
    (None, ("ephemeralContainers", "volumeMounts"), "mountPath"),
    (None, ("containers", "volumeDevices"), "devicePath"),
    (None, ("initContainers", "volumeDevices"), "devicePath"),
    (None, ("status", "conditions"), "type"),
    (frozenset({"Pod"}), ("status", "podIPs"), "ip"),
    (frozenset({"Pod"}), ("status", "hostIPs"), "ip"),
    (frozenset({"Service"}), ("spec", "ports"), "port"),
    (frozenset({"Node"}), ("status", "addresses"), "type"),
    (frozenset({"Node"}), ("spec", "podCIDRs"), None),
    (frozenset({"ServiceAccount"}), ("secrets",), "name"),
    (frozenset({"ServiceAccount"}), ("imagePullSecrets",), "name"),
)

_NO_RULE = object()


def merge_rule(kind: str, path: Sequence[str]) -> str | object | None:
    """The merge key for the list at ``path``, ``None`` for a merged primitive list,
    or ``_NO_RULE`` for an atomic list."""
    for kinds, suffix, key in _MERGE_RULES:
        if kinds is not None and kind not in kinds:
            continue
        if tuple(path[-len(suffix) :]) == suffix:
            # A one-element suffix is only valid at the top level (ServiceAccount).
            if len(suffix) == 1 and len(path) != 1:
                continue
            return key
    return _NO_RULE


# --- JSON merge patch -------------------------------------------------------


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# --- strategic merge patch --------------------------------------------------

_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


def strategic_merge_patch(target: Any, patch: Any, *, kind: str) -> Any:
    """Apply a strategic merge patch to ``target`` for an object of ``kind``."""
    if not isinstance(patch, dict):
        raise Invalid("strategic merge patch must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch, kind, ())


def _smp_map(target: dict[str, Any], patch: dict[str, Any], kind: str, path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip(dict(patch))
    if directive not in (None, "merge"):
        raise Invalid(f"unknown patch type: {directive!r} in map")
    result = copy.deepcopy(target)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_SET_ORDER):
            orders[key[len(_SET_ORDER) :]] = value or []
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE) :]
            doomed = value or []
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in doomed]
            continue
        if value is None:
            result.pop(key, None)
            continue
        child_path = (*path, key)
        current = result.get(key)
        if isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value, kind, child_path)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(current if isinstance(current, list) else [], value, kind, child_path)
        else:
            result[key] = value
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, merge_rule(kind, (*path, field)))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(target: list[Any], patch: list[Any], kind: str, path: tuple[str, ...]) -> list[Any]:
    rule = merge_rule(kind, path)
    replace = any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch)
    items = [e for e in patch if not (isinstance(e, dict) and e.get("$patch") == "replace")]
    if rule is _NO_RULE or replace:
        return [_strip(e) for e in items]
    if rule is None:
        # A merged list of primitives (finalizers): union, patch order for new values.
        result = list(target)
        result.extend(v for v in items if v not in result)
        return result
    key = str(rule)
    result = copy.deepcopy(target)
    for element in items:
        if not isinstance(element, dict):
            raise Invalid(f"list at {'.'.join(path)} must hold objects (merge key {key!r})")
        index = next(
            (i for i, e in enumerate(result) if isinstance(e, dict) and e.get(key) == element.get(key)),
            None,
        )
        if element.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip(element))
        else:
            result[index] = _smp_map(result[index], element, kind, path)
    return result


def _reorder(items: list[Any], order: list[Any], rule: str | object | None) -> list[Any]:
    """Apply ``$setElementOrder``: listed elements in that order, the rest after them."""
    if isinstance(rule, str):
        keys = [o.get(rule) if isinstance(o, dict) else o for o in order]
        ident = [e.get(rule) if isinstance(e, dict) else e for e in items]
    else:
        keys, ident = list(order), list(items)
    ranked = sorted(
        range(len(items)),
        key=lambda i: (keys.index(ident[i]) if ident[i] in keys else len(keys), i),
    )
    return [items[i] for i in ranked]


def _strip(value: Any) -> Any:
    """A patch fragment that becomes new content: drop directives and nulls."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None and not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


# --- JSON patch -------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise Invalid(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], op: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise Invalid(f"{op} operation does not apply: doc is missing path: /{'/'.join(tokens)}")
    return node, tokens[-1]


def _get(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        return doc
    node, last = _parent(doc, tokens, op)
    if isinstance(node, dict) and last in node:
        return node[last]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node[int(last)]
    raise Invalid(f"{op} operation does not apply: doc is missing path: /{'/'.join(tokens)}")


def _remove(doc: Any, tokens: list[str], op: str) -> Any:
    value = _get(doc, tokens, op)
    node, last = _parent(doc, tokens, op)
    if isinstance(node, dict):
        del node[last]
    else:
        del node[int(last)]
    return value


def _add(doc: Any, tokens: list[str], value: Any, op: str) -> Any:
    if not tokens:
        return value
    node, last = _parent(doc, tokens, op)
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        if last == "-":
            node.append(value)
        elif last.isdigit() and int(last) <= len(node):
            node.insert(int(last), value)
        else:
            raise Invalid(f"{op} operation does not apply: index out of range: {last}")
    else:
        raise Invalid(f"{op} operation does not apply: parent is not a container")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902, atomically: either every operation applies or an error is raised."""
    if not isinstance(operations, list):
        raise Invalid("json patch must be a JSON array of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise Invalid(f"invalid json patch operation: {operation!r}")
        op = operation["op"]
        tokens = _pointer(str(operation.get("path", "")))
        if op == "add":
            doc = _add(doc, tokens, copy.deepcopy(operation.get("value")), op)
        elif op == "remove":
            _remove(doc, tokens, op)
        elif op == "replace":
            _get(doc, tokens, op)
            if tokens:
                node, last = _parent(doc, tokens, op)
                node[last if isinstance(node, dict) else int(last)] = copy.deepcopy(operation.get("value"))
            else:
                doc = copy.deepcopy(operation.get("value"))
        elif op in ("move", "copy"):
            source = _pointer(str(operation.get("from", "")))
            value = _remove(doc, source, op) if op == "move" else copy.deepcopy(_get(doc, source, op))
            doc = _add(doc, tokens, value, op)
        elif op == "test":
            if _get(doc, tokens, op) != operation.get("value"):
                raise Invalid(f"testing value /{'/'.join(tokens)} failed")
        else:
            raise Invalid(f"Unexpected kind: {op}")
    return doc


def apply_patch(content_type: str, target: Any, patch: Any, *, kind: str) -> Any:
    """Dispatch on the request's ``Content-Type`` (parameters such as charset ignored)."""
    media = content_type.split(";", 1)[0].strip()
    if media == JSON_PATCH:
        return json_patch(target, patch)
    if media == MERGE_PATCH:
        return json_merge_patch(target, patch)
    if media in (STRATEGIC_MERGE_PATCH, APPLY_PATCH):
        # Server-side apply without field ownership: the applied configuration is
        # merged like a strategic merge patch, which is what a single manager sees.
        return strategic_merge_patch(target, patch, kind=kind)
    raise UnsupportedMediaType(
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}"
    )
