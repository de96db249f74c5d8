"""kubernetes_asyncio without importing all of it up front.

``import kubernetes_asyncio.client`` runs the package's ``__init__``, which
imports every generated API class (about 60 modules, ``CoreV1Api`` alone is
1 MiB of source) and every model class (767 modules), and the models
package's ``__init__`` does the same again. That is ~40 MiB of RSS in every
agent, on every node, for a program that uses four names (``ApiClient``,
``Configuration``, ``CoreV1Api``, ``DiscoveryV1Api``) and never builds a model
object (responses are read raw, ``_preload_content=False``).

:func:`install` registers the package and its three big sub-packages as
modules whose ``__init__`` has not run, each with a module ``__getattr__``
that imports a name's defining module on first use. What a name resolves to
comes from the package's own ``__init__`` (its ``from X import Y`` and
``import X as Y`` lines), so the shim does not need to know the library's
contents. Nothing else changes: the library's modules are the library's, any
name it exports is still there. When the package is already imported, or its
``__init__`` files do not look as expected, :func:`install` does nothing and
the library imports as usual. ``tests/agent/test_lean.py`` checks both.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

PACKAGE = "kubernetes_asyncio"
LAZY = (PACKAGE, f"{PACKAGE}.client", f"{PACKAGE}.client.api", f"{PACKAGE}.client.models")

_FROM_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)\s*(?:#.*)?$", re.MULTILINE)
_IMPORT_AS = re.compile(r"^import ([\w.]+) as (\w+)\s*(?:#.*)?$", re.MULTILINE)
_VERSION = re.compile(r"^__version__ = [\"']([^\"']+)[\"']", re.MULTILINE)


def exports(source: str) -> dict[str, tuple[str, str | None]]:
    """Name -> (module, attribute) for every top-level import of a package ``__init__``
    (attribute None: the name is the module itself)."""
    out: dict[str, tuple[str, str | None]] = {}
    for module, name in _FROM_IMPORT.findall(source):
        if module != "__future__":
            out[name] = (module, name)
    for module, name in _IMPORT_AS.findall(source):
        out[name] = (module, None)
    return out


def _shell(name: str) -> ModuleType | None:
    """The package ``name`` as a module whose ``__init__`` has not run, resolving what the
    ``__init__`` would have imported on first access."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    names = exports(source)
    if not names:
        return None
    module = importlib.util.module_from_spec(spec)
    version = _VERSION.search(source)
    if version:
        module.__version__ = version.group(1)  # type: ignore[attr-defined]

    def __getattr__(attr: str) -> Any:
        target = names.get(attr)
        if target is None:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        source_module, source_attr = target
        value = importlib.import_module(source_module)
        if source_attr is not None:
            value = getattr(value, source_attr)
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dict__["__lean__"] = True
    return module


def install() -> bool:
    """Register the lazy packages (once, and only if nothing imported them yet). True when
    they are in place."""
    if sys.modules.get(PACKAGE) is not None:
        return bool(getattr(sys.modules[PACKAGE], "__lean__", False))
    added: list[str] = []
    try:
        for name in LAZY:
            module = _shell(name)
            if module is None:
                raise ImportError(f"{name} does not look as expected")
            sys.modules[name] = module
            added.append(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
    except (ImportError, OSError, ValueError):
        for name in added:  # leave the normal import path exactly as it was
            del sys.modules[name]
        return False
    return True
