"""The configuration tables of README.md and docs/operations.md against ``wholeip run``'s parser:
every flag, its environment twins and, where a table gives a literal, its default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from wholeip.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \| ([^|]*) \|")
"""A table row: the flag, its environment column, its default column."""


def run_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[-1]: a for a in sub.choices["run"]._actions if a.option_strings[-1] != "--help"}


def env_names(action: argparse.Action) -> list[str]:
    """The variables the help text names (``[env A or B]``, as ``EnvDefaults`` writes it)."""
    found = re.search(r"\[env ([A-Z0-9_ or]+)\]$", action.help or "")
    return found.group(1).split(" or ") if found else []


def table(path: Path) -> dict[str, tuple[list[str], str]]:
    rows: dict[str, tuple[list[str], str]] = {}
    for line in path.read_text().splitlines():
        row = ROW.match(line)
        if row and "WHOLEIP_" in row.group(2):
            flag, env, default = row.groups()
            assert flag not in rows, f"{path.name}: {flag} twice"
            rows[flag] = (re.findall(r"`([A-Z0-9_]+)`", env), default.strip())
    return rows


def literal_matches(default: object, text: str) -> bool | None:
    """Whether the table's default (a literal in backquotes, optionally with a unit) is the
    parser's; None when the table says it in words."""
    found = re.fullmatch(r"`([^`]*)`( s)?", text)
    if found is None:
        return None
    literal = found.group(1)
    if isinstance(default, bool):
        return literal == str(default).lower()
    if isinstance(default, int):
        return int(literal, 0) == default
    if isinstance(default, float):
        return float(literal) == default
    if isinstance(default, frozenset):
        return {int(part) for part in literal.split(",")} == default
    return literal == default


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md"])
def test_the_configuration_table_lists_every_flag_of_run_as_the_parser_has_it(doc: str) -> None:
    options = run_options()
    rows = table(ROOT / doc)
    assert sorted(rows) == sorted(options), "flags of the table / flags of wholeip run"
    for flag, (env, default) in rows.items():
        action = options[flag]
        assert env == env_names(action), f"{doc}: {flag}'s environment twins"
        assert literal_matches(action.default, default) is not False, f"{doc}: {flag}'s default {default}"


def test_the_checks_would_see_a_wrong_default_or_a_missing_twin() -> None:
    options = run_options()
    assert literal_matches(options["--port"].default, "`9766`") is False
    assert literal_matches(options["--egress-mark-mask"].default, "`0x7f`") is True
    assert literal_matches(options["--podnat-restricted-ports"].default, "`22,53`") is False
    assert literal_matches(options["--max-sync-interval"].default, "`60` s") is True
    assert literal_matches(options["--node-name"].default, "(required)") is None
    assert env_names(options["--node-name"]) == ["WHOLEIP_NODE_NAME", "NODE_NAME"]
