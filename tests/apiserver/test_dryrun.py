"""``dryRun=All`` (``kubectl diff``, ``--dry-run=server``): the write's answer, nothing
written, no revision spent, no allocation kept; and the namespaces a real server never
deletes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.apiserver.conftest import Kubectl
from tests.apiserver.test_kubectl import STACK

from wholeip_testkit.apiserver import ApiServer


async def test_kubectl_diff_and_server_dry_runs_write_nothing(api: ApiServer, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    await kubectl("apply", "-f", str(manifest))
    before = api.store.rv
    live = api.store.get("services", "web", "demo")

    changed = tmp_path / "changed.yaml"
    changed.write_text(
        STACK.replace("{name: http, port: 80, targetPort: 8080}", "{name: http, port: 81, targetPort: 8080}")
    )
    diff = await kubectl("diff", "-f", str(changed), check=False)
    assert diff.code == 1, diff.err  # (1: differences; >1: an error)
    assert "-    port: 80" in diff.out, diff.out
    assert "+    port: 81" in diff.out
    same = await kubectl("diff", "-f", str(manifest), check=False)
    assert (same.code, same.out) == (0, "")

    result = await kubectl("apply", "--dry-run=server", "-f", str(changed))
    assert "service/web configured (server dry run)" in result.out
    answered = json.loads((await kubectl("apply", "--dry-run=server", "-f", str(changed), "-o", "json")).out)
    web = next(i for i in answered["items"] if i["kind"] == "Service")
    assert web["spec"]["ports"][0]["port"] == 81
    assert web["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]

    # A new Service, dry: answered with an address and a NodePort it does not keep.
    extra = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extra", "namespace": "demo"},
             "spec": {"type": "NodePort", "ports": [{"port": 80}]}}  # fmt: skip
    dry = json.loads(
        (await kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(extra))).out
    )
    assert "resourceVersion" not in dry["metadata"]
    assert (await kubectl("get", "-n", "demo", "service", "extra", check=False)).code != 0
    real = json.loads((await kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(extra))).out)
    assert real["spec"]["clusterIP"] == dry["spec"]["clusterIP"]  # (the dry run's was not taken)
    assert real["spec"]["ports"][0]["nodePort"] == dry["spec"]["ports"][0]["nodePort"]
    after_create = api.store.rv
    assert after_create == before + 1

    await kubectl("delete", "-n", "demo", "service", "web", "--dry-run=server")
    await kubectl("delete", "namespace", "demo", "--dry-run=server")
    await kubectl("delete", "-n", "demo", "endpointslices", "--all", "--dry-run=server")
    assert api.store.get("services", "web", "demo")["spec"]["ports"][0]["port"] == 80
    assert "deletionTimestamp" not in api.store.get("namespaces", "demo")["metadata"]
    assert api.store.list("endpointslices.discovery.k8s.io", namespace="demo")
    assert api.store.rv == after_create  # no revision spent, so no watcher heard of any of it

    ssa = await kubectl("apply", "--dry-run=server", "-f", str(changed), "--server-side", check=False)
    assert ssa.code == 0, ssa.err  # (server-side apply, dry: also nothing written)
    assert api.store.get("services", "web", "demo")["spec"]["ports"][0]["port"] == 80


async def test_the_namespaces_a_real_server_keeps_cannot_be_deleted(kubectl: Kubectl) -> None:
    for name in ("default", "kube-system", "kube-public"):
        refused = await kubectl("delete", "namespace", name, check=False)
        assert refused.code != 0
        assert f'namespaces "{name}" is forbidden: this namespace may not be deleted' in refused.err
