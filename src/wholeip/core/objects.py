"""Raw Kubernetes objects (JSON dicts as the API server sends them) -> typed values.

Tolerant by design: a field of the wrong type reads as absent, never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def namespaced_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    """``(namespace, name)`` of an object; ``""`` for what is missing (cluster-scoped: no namespace)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else "", name if isinstance(name, str) else "")
