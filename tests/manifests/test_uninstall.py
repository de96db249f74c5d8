"""docs/operations.md, Uninstall: the documented commands, as written, in order.

The shell block of the Uninstall section is read from the document and each command
is run with the real kubectl (the virtualenv's) against the API server double, after
an install with ``kubectl apply -k manifests/``. Every one must exit 0. The double
has no controllers, so the test plays the DaemonSet controller for the cleanup
helper (its status says every node's pod is up to date and available) while
``rollout status`` waits.

A control shows that the check can fail: without ``--ignore-not-found``, deleting
``manifests/`` after step 1 exits 1 on the DaemonSet step 1 already deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from pathlib import Path

from wholeip_testkit.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
BIN = next(
    (d for d in (Path(sys.executable).parent, ROOT / ".venv" / "bin") if (d / "kubectl").exists()),
    Path(sys.executable).parent,
)
KUBECTL = BIN / "kubectl"
NAMESPACE = "wholeip-system"


def documented_commands() -> list[list[str]]:
    text = OPERATIONS.read_text()
    section = text.split("\n## Uninstall\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the Uninstall section"
    commands = [shlex.split(line) for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert commands
    assert all(c[0] == "kubectl" for c in commands), commands
    return commands


class Kubectl:
    def __init__(self, api: ApiServer, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(api.write_kubeconfig(tmp / "kubeconfig")),
            "KUBECACHEDIR": str(tmp / "cache"),
            "HOME": str(tmp),
        }

    async def __call__(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL),
            *args,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()


async def _play_daemonset_controller(kubectl: Kubectl, name: str, nodes: int) -> None:
    """What the DaemonSet controller and the kubelets would report once every node's
    pod (here: its init container, the cleanup) has run."""
    code, out = await kubectl("-n", NAMESPACE, "get", "daemonset", name, "-o", "json")
    assert code == 0, out
    generation = json.loads(out)["metadata"].get("generation", 1)
    status = {
        "observedGeneration": generation,
        "currentNumberScheduled": nodes,
        "desiredNumberScheduled": nodes,
        "numberMisscheduled": 0,
        "numberReady": nodes,
        "numberAvailable": nodes,
        "updatedNumberScheduled": nodes,
    }
    patch = json.dumps({"status": status})
    code, out = await kubectl(
        "-n", NAMESPACE, "patch", "daemonset", name, "--subresource=status", "--type=merge", "-p", patch
    )
    assert code == 0, out


async def _install(kubectl: Kubectl) -> None:
    code, out = await kubectl("apply", "-k", "manifests/")
    assert code == 0, out
    code, out = await kubectl("-n", NAMESPACE, "get", "daemonset", "wholeip")
    assert code == 0, out


async def test_the_documented_uninstall_succeeds_step_by_step(tmp_path: Path) -> None:
    commands = documented_commands()
    # The documented order: the agents go first, the cleanup runs and is waited for,
    # then everything is deleted.
    lines = [" ".join(c) for c in commands]
    assert "delete daemonset wholeip" in lines[0], lines
    assert any("rollout status ds/wholeip-cleanup" in line for line in lines), lines
    assert "delete -k manifests/" in lines[-1], lines
    async with ApiServer() as api:
        kubectl = Kubectl(api, tmp_path)
        await _install(kubectl)
        for argv in commands:
            args = argv[1:]
            if "rollout" in args:
                name = next(a for a in args if a.startswith("ds/")).removeprefix("ds/")
                await _play_daemonset_controller(kubectl, name, nodes=2)
            code, out = await kubectl(*args)
            assert code == 0, f"{' '.join(argv)} exited {code}:\n{out}"
        # Nothing of wholeip is left.
        for kind, name in (
            ("clusterrole", "wholeip"),
            ("clusterrolebinding", "wholeip"),
            ("namespace", NAMESPACE),
        ):
            code, out = await kubectl("get", kind, name)
            assert code != 0, out
            assert "NotFound" in out, out


async def test_without_ignore_not_found_the_last_step_fails(tmp_path: Path) -> None:
    # The control: the old step 3 after step 1, as the issue reported it.
    async with ApiServer() as api:
        kubectl = Kubectl(api, tmp_path)
        await _install(kubectl)
        code, out = await kubectl("-n", NAMESPACE, "delete", "daemonset", "wholeip")
        assert code == 0, out
        code, out = await kubectl("delete", "-k", "manifests/")
        assert code == 1, out
        assert "NotFound" in out, out


def test_every_delete_in_the_uninstall_ignores_what_is_gone() -> None:
    deletes = [c for c in documented_commands() if "delete" in c]
    assert len(deletes) == 3
    assert all("--ignore-not-found" in c for c in deletes), deletes
