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
comes from the package's own ``__init__``, parsed and not run: its ``from X
import Y`` and ``import X as Y`` statements, and its literal dunders
(``__version__``, ``__all__``). So the shim does not need to know the
library's contents, and nothing else changes: the library's modules are the
library's, any name it exports is still there. When the package is already
imported, or an ``__init__`` holds anything else at its top level (a star
import, code, a computed value), :func:`install` does nothing and the library
imports as usual. ``tests/agent/test_lean.py`` checks both.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

PACKAGE = "kubernetes_asyncio"
LAZY = (PACKAGE, f"{PACKAGE}.client", f"{PACKAGE}.client.api", f"{PACKAGE}.client.models")


class Unexpected(ValueError):
    """A package ``__init__`` does more than import names: the shim does not apply."""


def exports(source: str) -> tuple[dict[str, tuple[str, str | None]], dict[str, Any]]:
    """What a package ``__init__`` defines: name -> (module, attribute) for each of its
    imports (attribute None: the name is the module itself), and its literal dunder
    assignments (``__version__``, ``__all__``). Anything else at its top level (a star import, code,
    a computed value) raises :class:`Unexpected`: the shim could not reproduce it."""
    names: dict[str, tuple[str, str | None]] = {}
    constants: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "__future__":
                continue
            for alias in node.names:
                if alias.name == "*":
                    raise Unexpected(f"from {node.module} import *")
                names[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is None:
                    raise Unexpected(f"import {alias.name} (without as)")
                names[alias.asname] = (alias.name, None)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.startswith("__")
        ):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise Unexpected(f"line {node.lineno}: {node.targets[0].id} is computed") from exc
        else:
            raise Unexpected(f"line {node.lineno}: {type(node).__name__}")
    if not names:
        raise Unexpected("no imports")
    return names, constants


def _shell(name: str) -> ModuleType | None:
    """The package ``name`` as a module whose ``__init__`` has not run, resolving what the
    ``__init__`` would have imported on first access."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        names, constants = exports(f.read())
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(constants)

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
    except (ImportError, OSError, SyntaxError, ValueError):
        for name in added:  # leave the normal import path exactly as it was
            del sys.modules[name]
        return False
    return True
