"""Cluster files as hostile or unlucky input (issue 15, items 4 and 5).

Empty input (a failed ``kubectl get ... | wholeip apply -f -``) is refused
unless ``--allow-empty``; a closed or undecodable standard input is one clear
error line, never a traceback. The commands run in-process through ``main``;
``tests/nft/test_cli.py`` runs the real command against nf_tables.
"""

from __future__ import annotations

import gc
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from wholeip.cli import clusterfile, offline
from wholeip.cli.main import build_parser, entry, main
from wholeip.core.gcpause import unfreeze_kept
from wholeip_testkit import synth

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
}


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Input these tests give must be refused before nf_tables is reached (and this process's
    network namespace must stay untouched even where the code under test is wrong)."""

    def engine(args: Any) -> Any:
        raise AssertionError(f"{args.command} reached the kernel")

    monkeypatch.setattr(offline, "engine", engine)


# -- what counts as empty ----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "---\n---\n",
        "# only a comment\n",
        "apiVersion: v1\nkind: List\nitems: []\nmetadata: {resourceVersion: ''}\n",  # kubectl, nothing found
        '{"apiVersion": "v1", "kind": "ServiceList", "items": []}',
        "- just\n- a list\n",
        "metadata: {name: no-kind}\n",
    ],
)
def test_input_without_any_kubernetes_object_counts_as_empty(text: str) -> None:
    parsed = clusterfile.parse_text(text, name="f")
    assert parsed.total == 0
    assert parsed.objects == []


def test_objects_of_unused_kinds_count_but_are_not_used() -> None:
    text = "kind: ConfigMap\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: s}\n"
    parsed = clusterfile.parse_text(text, name="f")
    assert parsed.total == 2
    assert [o["kind"] for o in parsed.objects] == ["Service"]
    assert parsed.notes == [
        "f document 1: skipping kind ConfigMap"
        " (only Service, EndpointSlice, Node, ServiceCIDR, Pod and ServiceL2Status are used)"
    ]


def test_a_note_says_which_item_of_which_list_it_is_about() -> None:
    """Lists are opened (nested ones too, a typed list giving its items their kind); a
    note names the document and the item path of what it skips."""
    text = json.dumps(
        {
            "kind": "List",
            "items": [
                {"kind": "Service", "metadata": {"name": "s"}},
                {"kind": "ConfigMap", "metadata": {"name": "c"}},
                {"kind": "ServiceList", "items": [{"metadata": {"name": "t"}}, "text", {"metadata": {}}]},
                {"metadata": {"name": "no-kind"}},
            ],
        }
    )
    parsed = clusterfile.parse_text(text, name="f")
    assert [(o["kind"], o["metadata"]) for o in parsed.objects] == [
        ("Service", {"name": "s"}),
        ("Service", {"name": "t"}),
        ("Service", {}),  # (what the model makes of it is the model's business)
    ]
    assert parsed.total == 4  # (the three Services and the ConfigMap)
    assert parsed.notes == [
        "f document 1 item 1: skipping kind ConfigMap"
        " (only Service, EndpointSlice, Node, ServiceCIDR, Pod and ServiceL2Status are used)",
        "f document 1 item 2 item 1: skipping a str, expected a Kubernetes object",
        "f document 1 item 3: skipping an object without kind",
    ]


def test_a_set_of_files_is_empty_only_when_every_file_is(tmp_path: Path) -> None:
    empty = write(tmp_path, "", "empty.yaml")
    full = write(tmp_path, json.dumps(SERVICE), "full.json")
    loaded = clusterfile.load([empty, full])
    assert loaded.total == 1
    assert f"{empty}: no Kubernetes objects" in loaded.notes
    assert clusterfile.load([empty, empty]).total == 0


# -- the commands refuse empty input ------------------------------------------


@pytest.mark.parametrize("command", ["render", "diff", "apply"])
def test_empty_file_is_refused_with_exit_2_and_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = write(tmp_path, "")
    # Refused before any kernel is touched: diff and apply never get to nf_tables.
    assert main([command, "-f", empty, "--node-name", "n1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"error: {empty}: no Kubernetes objects")
    assert "--allow-empty" in line


@pytest.mark.parametrize("command", ["render", "diff", "apply"])
def test_empty_stdin_is_refused(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8"))
    assert main([command, "-f", "-", "--node-name", "n1"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: standard input: no Kubernetes objects")


def test_several_empty_files_are_refused_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = write(tmp_path, "", "a.yaml"), write(tmp_path, "---\n", "b.yaml")
    assert main(["render", "-f", a, "-f", b, "--node-name", "n1"]) == 2
    err = capsys.readouterr().err
    assert f"note: {a}: no Kubernetes objects" in err
    assert f"note: {b}: no Kubernetes objects" in err
    [line] = error_lines(err)
    assert line.startswith("error: the cluster files: no Kubernetes objects")


def test_allow_empty_renders_a_table_without_mappings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path, "")
    assert main(["render", "-f", empty, "--node-name", "n1", "--allow-empty"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["nftables"][0] == {"add": {"table": {"family": "inet", "name": "wholeip"}}}
    assert not [
        c for c in doc["nftables"] if "element" in c.get("add", {}) and "ingress" in c["add"]["element"]["name"]
    ]
    assert "accepted (--allow-empty)" in err


def test_allow_empty_has_no_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHOLEIP_ALLOW_EMPTY", "true")
    assert build_parser().parse_args(["apply", "-f", "x", "--node-name", "n1"]).allow_empty is False
    assert build_parser().parse_args(["apply", "-f", "x", "--node-name", "n1", "--allow-empty"]).allow_empty


def test_file_of_other_kinds_only_is_not_empty_but_gets_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "kind: ConfigMap\nmetadata: {name: a}\n---\nkind: Secret\nmetadata: {name: b}\n")
    assert main(["render", "-f", path, "--node-name", "n1"]) == 0
    err = capsys.readouterr().err
    assert "note: 2 object(s) but no Service, EndpointSlice or Node: the table holds no mappings" in err
    assert "error" not in err


@pytest.mark.parametrize("command", ["render", "diff", "apply"])
def test_help_says_which_commands_refuse_empty_input(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-empty" in text
    assert "render, diff and apply refuse such input with exit 2" in text


# -- unreadable input: one line, exit 2 ---------------------------------------


@pytest.mark.parametrize("command", ["render", "diff", "apply"])
def test_closed_stdin_is_one_line_and_exit_2(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when fd 0 is closed at start
    assert main([command, "-f", "-", "--node-name", "n1"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: -: standard input is closed, there is nothing to read"


def test_stdin_that_is_not_utf8_under_a_c_locale(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under LC_ALL=C, Python's stdin passes undecodable bytes on as surrogates.
    stdin = io.TextIOWrapper(io.BytesIO(b"kind: Service\nmetadata: {name: \xff}\n"), errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["render", "-f", "-", "--node-name", "n1"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: -: not UTF-8 text"


def test_stdin_that_cannot_be_read(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class WriteOnly(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(WriteOnly()))
    assert main(["render", "-f", "-", "--node-name", "n1"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: -: cannot read standard input: Bad file descriptor"


def test_the_command_leaves_what_it_made_to_the_os(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wholeip`` as a process (``entry``) freezes what is left when the command returns,
    so that the interpreter's last collection does not walk (and free) a 100,000-Service
    index before exit; ``main``, which tests call, does not."""
    cluster = tmp_path / "c.json"
    cluster.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": synth.cluster(2)}))
    argv = ["wholeip", "render", "-f", str(cluster), "--node-name", "n1"]
    monkeypatch.setattr(sys, "argv", argv)
    unfreeze_kept()  # (an agent test before, in this process, froze what it kept)
    assert main(argv[1:]) == 0
    assert gc.get_freeze_count() == 0
    try:
        assert entry() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.count('"nftables"') == 2  # main, then entry
