"""The pure core imports no I/O module, not even from the standard library.

import-linter (``make lint``) guards third-party packages and our own I/O
modules; it does not see the standard library, so this test reads the imports
of the pure modules directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "wholeip"
PURE = ["model.py", "compile.py", "nft/doc.py", "nft/diff.py", "settings.py"]
FORBIDDEN = {
    "asyncio",
    "socket",
    "subprocess",
    "os",
    "threading",
    "aiohttp",
    "kubernetes_asyncio",
    "nftables",
    "pyroute2",
}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
