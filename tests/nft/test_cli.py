"""The ``wholeip`` command as a user runs it: real processes, real nf_tables in a namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wholeip_testkit import synth
from wholeip_testkit.netns import Netns

WHOLEIP = [sys.executable, "-m", "wholeip"]


def run(
    *args: str,
    ns: Netns | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    close_stdin: bool = False,
) -> subprocess.CompletedProcess[str]:
    argv = [*WHOLEIP, *args]
    if close_stdin:  # as the shell's '<&-' does: file descriptor 0 is not open at all
        argv = ["sh", "-c", 'exec "$@" <&-', "sh", *argv]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, env=full_env, timeout=120, check=False)


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(synth.as_list(synth.cluster(20, dual_stack=True))))
    return path


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return path


def test_render_needs_no_kernel_and_is_byte_stable(cluster_file: Path) -> None:
    first = run("render", "-f", str(cluster_file), "--node-name", "n1")
    second = run("render", "-f", str(cluster_file), "--node-name", "n1")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    doc = json.loads(first.stdout)
    assert doc["nftables"][0] == {"add": {"table": {"family": "inet", "name": "wholeip"}}}


def test_node_name_from_environment(cluster_file: Path) -> None:
    assert run("render", "-f", str(cluster_file), env={"NODE_NAME": "n2"}).returncode == 0
    missing = run("render", "-f", str(cluster_file), env={"NODE_NAME": "", "WHOLEIP_NODE_NAME": ""})
    assert missing.returncode == 2
    assert "--node-name" in missing.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Service\nmetadata: {name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a Kubernetes object"),
        ("kind: ConfigMap\nmetadata: {name: x}\n", "skipping kind ConfigMap"),
        (
            "apiVersion: v1\nkind: Service\n"
            "metadata: {name: s, annotations: {networking.cozystack.io/wholeIP: 'true'}}\n",
            "NoExternalIP",
        ),
    ],
)
def test_bad_input_gives_a_clear_message_never_a_traceback(tmp_path: Path, text: str, message: str) -> None:
    result = run("render", "-f", str(write_yaml(tmp_path, text)), "--node-name", "n1")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    result = run("render", "-f", str(tmp_path / "nope.yaml"), "--node-name", "n1")
    assert result.returncode == 2
    assert "No such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_stdin_input(cluster_file: Path) -> None:
    result = run("render", "-f", "-", "--node-name", "n1", stdin=cluster_file.read_text())
    assert result.returncode == 0
    assert "100.64.0.1" in result.stdout


def test_help_reads_well() -> None:
    result = run("apply", "--help")
    assert result.returncode == 0
    assert "WHOLEIP_NODE_NAME" in result.stdout
    assert "one transaction" in result.stdout


@pytest.mark.kernel
def test_diff_apply_apply_cleanup(netns: Netns, cluster_file: Path) -> None:
    f = ["-f", str(cluster_file), "--node-name", "n1"]
    before = run("diff", *f, ns=netns)
    assert before.returncode == 1, before.stderr
    assert json.loads(before.stdout)["nftables"]
    first = run("apply", *f, ns=netns)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: created table")
    second = run("apply", *f, ns=netns)
    assert second.stdout.startswith("applied: no changes"), second.stdout
    after = run("diff", *f, ns=netns)
    assert after.returncode == 0
    assert after.stdout == ""
    listing = netns.run(["nft", "-j", "list", "map", "inet", "wholeip", "ingress4"])
    elems = json.loads(listing.stdout)["nftables"][1]["map"]["elem"]
    assert ["100.64.0.1", "10.128.0.10"] in elems
    assert run("cleanup", ns=netns).stdout.startswith("removed table inet wholeip")
    assert "nothing to do" in run("cleanup", ns=netns).stdout
    assert netns.run(["nft", "list", "tables"]).stdout.strip() == ""


@pytest.mark.kernel
def test_cleanup_leaves_other_tables(netns: Netns, cluster_file: Path) -> None:
    assert (
        netns.run(
            ["nft", "add table ip keepme; add chain ip keepme c { type filter hook input priority 0; }"]
        ).returncode
        == 0
    )
    assert run("apply", "-f", str(cluster_file), "--node-name", "n1", ns=netns).returncode == 0
    assert run("cleanup", ns=netns).returncode == 0
    assert netns.run(["nft", "list", "tables"]).stdout.split() == ["table", "ip", "keepme"]


@pytest.mark.kernel
def test_apply_ten_thousand_services(netns: Netns, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    objects: list[Any] = synth.cluster(10_000, dual_stack=True)
    path.write_text(json.dumps(synth.as_list(objects)))
    started = time.perf_counter()
    result = run("apply", "-f", str(path), "--node-name", "n1", ns=netns)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    print(f"\napply of 10,000 dual-stack whole-IP Services: {elapsed:.2f}s wall; {result.stdout.strip()}")
    count = netns.run(["nft", "-j", "list", "map", "inet", "wholeip", "ingress6"])
    assert len(json.loads(count.stdout)["nftables"][1]["map"]["elem"]) == 10_000
    again = run("apply", "-f", str(path), "--node-name", "n1", ns=netns)
    assert again.stdout.startswith("applied: no changes")


# -- issue 15: empty input and a closed standard input ------------------------


def ingress4(ns: Netns) -> list[Any]:
    listing = ns.run(["nft", "-j", "list", "map", "inet", "wholeip", "ingress4"])
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["nftables"][1]["map"].get("elem", []))


def test_render_refuses_empty_input(tmp_path: Path) -> None:
    empty = write_yaml(tmp_path, "")
    for args, stdin in ((["-f", str(empty)], None), (["-f", "-"], "")):
        result = run("render", *args, "--node-name", "n1", stdin=stdin)
        assert result.returncode == 2, result
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert "no Kubernetes objects" in line
        assert "--allow-empty" in line


@pytest.mark.kernel
def test_empty_input_deletes_nothing_unless_allowed(netns: Netns, cluster_file: Path, tmp_path: Path) -> None:
    """A failed 'kubectl get ... | wholeip apply -f -' must not wipe the node's mappings."""
    assert run("apply", "-f", str(cluster_file), "--node-name", "n1", ns=netns).returncode == 0
    before = ingress4(netns)
    assert ["100.64.0.1", "10.128.0.10"] in before
    empty = write_yaml(tmp_path, "")
    kubectl_found_nothing = tmp_path / "nothing.yaml"
    kubectl_found_nothing.write_text("apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: ''\n")
    for command in ("apply", "diff"):
        for args, stdin in (
            (["-f", str(empty)], None),
            (["-f", "-"], ""),
            (["-f", str(kubectl_found_nothing)], None),
            (["-f", str(empty), "-f", "-"], ""),
        ):
            result = run(command, *args, "--node-name", "n1", ns=netns, stdin=stdin)
            assert result.returncode == 2, (command, args, result)
            assert result.stdout == ""
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, result.stderr
            assert "no Kubernetes objects" in errors[0], result.stderr
            assert ingress4(netns) == before, (command, args)
    # Objects of other kinds only: not empty, so taken at its word (with a note).
    other = write_yaml(tmp_path, "kind: ConfigMap\nmetadata: {name: a}\n")
    noted = run("diff", "-f", str(other), "--node-name", "n1", ns=netns)
    assert noted.returncode == 1
    assert "but no Service, EndpointSlice or Node" in noted.stderr
    assert ingress4(netns) == before
    # --allow-empty: the operator means it, every mapping goes.
    allowed = run("apply", "-f", "-", "--allow-empty", "--node-name", "n1", ns=netns, stdin="")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("applied:")
    assert ingress4(netns) == []


def test_closed_stdin_render_is_one_line() -> None:
    result = run("render", "-f", "-", "--node-name", "n1", close_stdin=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: -: standard input is closed, there is nothing to read"]


@pytest.mark.kernel
def test_closed_stdin_diff_and_apply_are_one_line_and_touch_nothing(netns: Netns, cluster_file: Path) -> None:
    assert run("apply", "-f", str(cluster_file), "--node-name", "n1", ns=netns).returncode == 0
    before = ingress4(netns)
    for command in ("diff", "apply"):
        result = run(command, "-f", "-", "--node-name", "n1", ns=netns, close_stdin=True)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines() == ["error: -: standard input is closed, there is nothing to read"]
    assert ingress4(netns) == before


def test_undecodable_stdin_under_a_c_locale_is_one_line() -> None:
    argv = [*WHOLEIP, "render", "-f", "-", "--node-name", "n1"]
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}
    result = subprocess.run(argv, input=b"\xff\xfe", capture_output=True, env=env, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == ["error: -: not UTF-8 text"]


@pytest.mark.kernel
def test_diff_after_apply_is_empty_where_an_egress_holder_is_not_on_link(netns: Netns, tmp_path: Path) -> None:
    """``apply`` leaves out of the steering a holder this node does not reach on-link (the
    namespace has no route to n2); ``diff`` must see the same table, not the steering a
    reachable holder would get."""
    from tests.nft.test_netlink import egress_objects

    path = tmp_path / "egress.json"
    path.write_text(json.dumps(synth.as_list(egress_objects(synth.cluster(2, dual_stack=True)))))
    f = ["-f", str(path), "--node-name", "n1"]
    applied = run("apply", *f, ns=netns)
    assert applied.returncode == 0, applied.stderr
    assert "EgressNodeNotOnLink" in applied.stderr
    after = run("diff", *f, ns=netns)
    assert after.returncode == 0, after.stdout
    assert after.stdout == ""
    # render, which may run anywhere, still assumes every holder on-link.
    rendered = json.loads(run("render", *f).stdout)
    steer = [
        o["add"]["element"]
        for o in rendered["nftables"]
        if o.get("add", {}).get("element", {}).get("name") == "egresssteer4"
    ]
    assert steer, "render left the steering out"


def _affinity_cluster(tmp_path: Path, endpoints: int) -> list[str]:
    """Two Nodes and one delegated Service with ClientIP affinity over ``endpoints`` pods
    (the first three the same whatever the count), as a cluster file's arguments."""
    objects = [synth.node("n1", 0), synth.node("n2", 1), *synth.delegated(0, endpoints=endpoints)]
    objects[2]["spec"] |= {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
    }
    path = tmp_path / f"affinity-{endpoints}.json"
    path.write_text(json.dumps(synth.as_list(objects)))
    return ["-f", str(path), "--node-name", "n1"]


def _elements(ns: Netns, name: str, kind: str = "set") -> list[Any]:
    listing = json.loads(ns.run(["nft", "-j", "list", kind, "inet", "wholeip", name]).stdout)
    return [e for item in listing["nftables"] if kind in item for e in item[kind].get("elem", [])]


@pytest.mark.kernel
def test_apply_and_diff_take_the_affinity_generations_over_from_the_kernel(netns: Netns, tmp_path: Path) -> None:
    """A hand-run ``apply`` carries a front-end's affinity generation across an endpoint
    change as the agent does (the clients recorded keep the previous slot table), and
    ``diff`` against the table it left says nothing: both read the generations the
    kernel holds (docs/datapath.md row 16) instead of starting every front-end afresh."""
    three, four = _affinity_cluster(tmp_path, 3), _affinity_cluster(tmp_path, 4)
    assert run("apply", *three, ns=netns).returncode == 0
    assert _elements(netns, "svcgenb4") == []  # the first generation: a
    joined = run("apply", *four, ns=netns)
    assert joined.returncode == 0, joined.stderr
    assert "taken over from the table in the kernel" in joined.stderr
    # The fourth endpoint started generation b; the third's slots, as they were, kept as
    # the previous table for the clients already recorded.
    assert _elements(netns, "svcgenb4") == [{"concat": ["10.96.0.1", "tcp", 80]}]
    assert _elements(netns, "svcoldaddr4", "map")
    same = run("diff", *four, ns=netns)
    assert (same.returncode, same.stdout) == (0, ""), same.stdout + same.stderr
    again = run("apply", *four, ns=netns)
    assert again.stdout.startswith("applied: no changes"), again.stdout + again.stderr
    assert _elements(netns, "svcgenb4") == [{"concat": ["10.96.0.1", "tcp", 80]}]
