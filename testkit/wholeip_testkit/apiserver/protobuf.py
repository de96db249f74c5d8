"""Request bodies in the Kubernetes protobuf encoding, for the few kinds typed clients send that way.

kubectl's typed commands (``kubectl create namespace``, ``kubectl create
configmap`` ...) send ``Content-Type: application/vnd.kubernetes.protobuf`` with
``Accept: application/vnd.kubernetes.protobuf,application/json`` and never
retry in JSON: a server that answers 415 makes the command fail. A real server
decodes the body and answers in a type the client accepts, so the double does
the same, answering JSON. Only the kinds in :data:`SCHEMAS` are understood;
any other protobuf body is still a 415 (the double has no general schema).

The envelope is the 4-byte magic ``k8s\\0`` followed by a ``runtime.Unknown``
message (typeMeta = 1, raw = 2, contentEncoding = 3, contentType = 4); ``raw``
is the object itself. Field numbers are those of the ``generated.proto`` files
of k8s.io/api and k8s.io/apimachinery. Fields that are empty, zero or unknown
are left out of the decoded object, as JSON's ``omitempty`` would.
"""

from __future__ import annotations

import base64
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

Schema = dict[int, tuple[str, Any]]
"""field number -> (JSON name, kind): a kind is a str (below), a nested Schema, or
``[Schema]`` for a repeated message."""


class ProtobufError(ValueError):
    """The body is not a protobuf object the double understands."""


_TYPE_META: Schema = {1: ("apiVersion", "string"), 2: ("kind", "string")}
_UNKNOWN: Schema = {
    1: ("typeMeta", _TYPE_META),
    2: ("raw", "bytes"),
    3: ("contentEncoding", "string"),
    4: ("contentType", "string"),
}
_OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    11: ("labels", "map_string"),
    12: ("annotations", "map_string"),
    14: ("finalizers", "repeated_string"),
}
_INT_OR_STRING: Schema = {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "string")}
_SERVICE_PORT: Schema = {
    1: ("name", "string"),
    2: ("protocol", "string"),
    3: ("port", "int"),
    4: ("targetPort", "intorstring"),
    5: ("nodePort", "int"),
    6: ("appProtocol", "string"),
}
_SERVICE_SPEC: Schema = {
    1: ("ports", [_SERVICE_PORT]),
    2: ("selector", "map_string"),
    3: ("clusterIP", "string"),
    4: ("type", "string"),
    5: ("externalIPs", "repeated_string"),
    7: ("sessionAffinity", "string"),
    8: ("loadBalancerIP", "string"),
    9: ("loadBalancerSourceRanges", "repeated_string"),
    10: ("externalName", "string"),
    11: ("externalTrafficPolicy", "string"),
    12: ("healthCheckNodePort", "int"),
    13: ("publishNotReadyAddresses", "bool"),
    17: ("ipFamilyPolicy", "string"),
    18: ("clusterIPs", "repeated_string"),
    19: ("ipFamilies", "repeated_string"),
    20: ("allocateLoadBalancerNodePorts", "optional_bool"),
    21: ("loadBalancerClass", "string"),
    22: ("internalTrafficPolicy", "string"),
    23: ("trafficDistribution", "string"),
}
_RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "string"),
    2: ("verb", "string"),
    3: ("group", "string"),
    4: ("version", "string"),
    5: ("resource", "string"),
    6: ("subresource", "string"),
    7: ("name", "string"),
}
_POLICY_RULE: Schema = {
    1: ("verbs", "repeated_string"),
    2: ("apiGroups", "repeated_string"),
    3: ("resources", "repeated_string"),
    4: ("resourceNames", "repeated_string"),
    5: ("nonResourceURLs", "repeated_string"),
}
_BINDING: Schema = {
    1: ("metadata", _OBJECT_META),
    2: (
        "subjects",
        [{1: ("kind", "string"), 2: ("apiGroup", "string"), 3: ("name", "string"), 4: ("namespace", "string")}],
    ),
    3: ("roleRef", {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")}),
}
_ROLE: Schema = {1: ("metadata", _OBJECT_META), 2: ("rules", [_POLICY_RULE])}
"""A Role or a ClusterRole (whose aggregationRule, 3, kubectl create does not send)."""
_RBAC = "rbac.authorization.k8s.io/v1"
SCHEMAS: dict[tuple[str, str], Schema] = {
    # (kubectl create role, clusterrole, rolebinding, clusterrolebinding, serviceaccount)
    (_RBAC, "Role"): _ROLE,
    (_RBAC, "ClusterRole"): _ROLE,
    (_RBAC, "RoleBinding"): _BINDING,
    (_RBAC, "ClusterRoleBinding"): _BINDING,
    ("v1", "ServiceAccount"): {
        1: ("metadata", _OBJECT_META),
        3: ("imagePullSecrets", [{1: ("name", "string")}]),
        4: ("automountServiceAccountToken", "optional_bool"),
    },
    # (kubectl auth can-i)
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", _OBJECT_META),
        2: (
            "spec",
            {
                1: ("resourceAttributes", _RESOURCE_ATTRIBUTES),
                2: ("nonResourceAttributes", {1: ("path", "string"), 2: ("verb", "string")}),
            },
        ),
    },
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): {
        1: ("metadata", _OBJECT_META),
        2: ("spec", {1: ("namespace", "string")}),
    },
    ("v1", "Service"): {1: ("metadata", _OBJECT_META), 2: ("spec", _SERVICE_SPEC)},
    ("v1", "Namespace"): {
        1: ("metadata", _OBJECT_META),
        2: ("spec", {1: ("finalizers", "repeated_string")}),
        3: ("status", {1: ("phase", "string")}),
    },
    ("v1", "Secret"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", "map_bytes"),
        3: ("type", "string"),
        4: ("stringData", "map_string"),
        5: ("immutable", "bool"),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", "map_string"),
        3: ("binaryData", "map_bytes"),
        4: ("immutable", "bool"),
    },
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtobufError("truncated field")
            out.append((number, buf[pos : pos + size]))
            pos += size
        elif wire in (1, 5):  # fixed64, fixed32: no field the double reads uses them
            pos += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, value in _fields(buf):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, list):
            if isinstance(value, bytes):
                out.setdefault(name, []).append(_message(value, kind[0]))
        elif kind == "intorstring":
            if isinstance(value, bytes):
                ios = _message(value, _INT_OR_STRING)
                out[name] = ios.get("strVal", "") if ios.get("type") == 1 else ios.get("intVal", 0)
        elif kind == "optional_bool":  # a pointer: false is sent, and kept
            if isinstance(value, int):
                out[name] = bool(value)
        elif isinstance(kind, dict):
            if isinstance(value, bytes):
                nested = _message(value, kind)
                if nested:
                    out[name] = nested
        elif kind in ("string", "bytes"):
            if isinstance(value, bytes) and value:
                out[name] = value.decode() if kind == "string" else value
        elif kind in ("int", "bool"):
            if isinstance(value, int) and value:
                out[name] = bool(value) if kind == "bool" else value
        elif kind == "repeated_string":
            if isinstance(value, bytes):
                out.setdefault(name, []).append(value.decode())
        elif kind in ("map_string", "map_bytes") and isinstance(value, bytes):
            entry = _message(value, {1: ("k", "bytes"), 2: ("v", "bytes")})
            raw = entry.get("v", b"")
            key = entry.get("k", b"").decode()
            if kind == "map_string":
                out.setdefault(name, {})[key] = raw.decode()
            else:
                out.setdefault(name, {})[key] = base64.b64encode(raw).decode()
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for; :class:`ProtobufError` if it cannot be."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf magic number")
    unknown = _message(body[len(MAGIC) :], _UNKNOWN)
    type_meta = unknown.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if unknown.get("contentEncoding"):
        raise ProtobufError(f"unsupported content encoding {unknown['contentEncoding']!r}")
    schema = SCHEMAS.get((api_version, kind))
    if schema is None:
        raise ProtobufError(f"the double cannot decode {kind or 'an object'} ({api_version or '?'}) from protobuf")
    obj = _message(unknown.get("raw", b""), schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
