"""The layout's rules that import-linter cannot check on its own.

``make lint`` runs import-linter with the contracts in pyproject.toml (the
layers, purity, the product apart from the test kit and the benchmarks, no
cycles between sibling modules). Two things it does not see are checked here,
from the same configuration:

* the standard library: the purity contract's modules import none of the I/O
  modules listed in ``[tool.wholeip.purity]``;
* private names: no module uses another module's ``_name`` (``from m import _x``
  or ``m._x``): what a module shares it names publicly.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"wholeip": ROOT / "src", "wholeip_testkit": ROOT / "testkit", "wholeip_bench": ROOT / "bench"}
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _contract(contract_id: str) -> dict[str, object]:
    contracts = CONFIG["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c.get("id") == contract_id)


def _files(module: str) -> list[Path]:
    """The source files of a module or package, given by its dotted name."""
    top = module.split(".")[0]
    base = SOURCES[top].joinpath(*module.split("."))
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    return [base.with_suffix(".py")]


def _module_name(path: Path) -> str:
    for root in SOURCES.values():
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise AssertionError(path)


ALL_FILES = [f for top in SOURCES for f in _files(top)]
PURE_FILES = [f for m in _contract("pure")["source_modules"] for f in _files(str(m))]  # type: ignore[attr-defined]


def test_the_purity_contract_covers_the_core() -> None:
    pure = {_module_name(f) for f in PURE_FILES}
    core = {_module_name(f) for f in _files("wholeip.core")}
    assert core
    assert core <= pure
    assert {"wholeip.names", "wholeip.settings", "wholeip.nft.doc", "wholeip.nft.diff"} <= pure


@pytest.mark.parametrize("path", PURE_FILES, ids=_module_name)
def test_pure_module_imports_no_io(path: Path) -> None:
    forbidden = set(CONFIG["tool"]["wholeip"]["purity"]["stdlib_io"]) | {
        str(m).split(".")[0]
        for m in _contract("pure")["forbidden_modules"]
        if not str(m).startswith("wholeip")  # type: ignore[attr-defined]
    }
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden


def _ours(module: str) -> bool:
    return module.split(".")[0] in SOURCES


def _is_module(dotted: str) -> bool:
    top = dotted.split(".")[0]
    if top not in SOURCES:
        return False
    base = SOURCES[top].joinpath(*dotted.split("."))
    return base.is_dir() or base.with_suffix(".py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> Iterator[str]:
    """Every private name of another of our modules that ``path`` uses."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}  # local name -> our module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _ours(node.module):
            for alias in node.names:
                if _private(alias.name):
                    yield f"line {node.lineno}: from {node.module} import {alias.name}"
                elif _is_module(f"{node.module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain: list[str] = [node.attr]
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            yield f"line {node.lineno}: {'.'.join([value.id, *reversed(chain)])}"


@pytest.mark.parametrize("path", ALL_FILES, ids=_module_name)
def test_no_private_name_crosses_modules(path: Path) -> None:
    assert list(private_uses(path)) == []


def test_the_private_name_check_finds_both_spellings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from wholeip.cli.flags import _hidden\n"
        "from wholeip.cli import flags\n"
        "import wholeip.core.index\n"
        "flags._secret\n"
        "wholeip.core.index._pairs\n"
        "flags.__name__\n"
    )
    found = list(private_uses(sample))
    assert len(found) == 3, found
