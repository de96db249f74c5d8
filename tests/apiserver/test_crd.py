"""CustomResourceDefinitions: a CRD makes a served type; MetalLB's ServiceL2Status with a real kubectl."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from tests.apiserver.conftest import KUBECTL

from wholeip_testkit.apiserver import SERVICE_L2_STATUS_CRD, ApiServer

Kubectl = Callable[..., Awaitable[Any]]
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
L2 = "/apis/metallb.io/v1beta1/namespaces/default/servicel2statuses"

STATUS = """
apiVersion: metallb.io/v1beta1
kind: ServiceL2Status
metadata:
  name: l2-web
  namespace: default
  labels: {metallb.io/node: n1}
spec: {}
"""


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    line = await asyncio.wait_for(resp.content.readline(), 5)
    return json.loads(line) if line else {}


async def test_kubectl_applies_the_metallb_crd_and_a_service_l2_status(
    api: ApiServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    # Before the CRD, kubectl knows no such type (and caches discovery saying so).
    missing = await kubectl("get", "servicel2statuses", "-A", check=False)
    assert missing.code != 0
    assert 'the server doesn\'t have a resource type "servicel2statuses"' in missing.err

    result = await kubectl("apply", "-f", str(SERVICE_L2_STATUS_CRD))
    assert "customresourcedefinition.apiextensions.k8s.io/servicel2statuses.metallb.io created" in result.out
    await kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/servicel2statuses.metallb.io")
    resources = (await kubectl("api-resources", "--api-group=metallb.io", "-o", "wide")).out
    assert any(line.split()[:4] == ["servicel2statuses", "metallb.io/v1beta1", "true", "ServiceL2Status"]
               for line in resources.splitlines())  # fmt: skip

    manifest = tmp_path / "l2.yaml"
    manifest.write_text(STATUS)
    result = await kubectl("apply", "-f", str(manifest))
    assert "servicel2status.metallb.io/l2-web created" in result.out
    result = await kubectl("apply", "-f", str(manifest))
    assert "servicel2status.metallb.io/l2-web unchanged" in result.out
    status = {"status": {"node": "n1", "serviceName": "web", "serviceNamespace": "default"}}
    await kubectl(
        "patch", "servicel2status", "l2-web", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )

    listed = json.loads((await kubectl("get", "servicel2statuses", "-A", "-o", "json")).out)
    [item] = listed["items"]
    assert (item["apiVersion"], item["kind"]) == ("metallb.io/v1beta1", "ServiceL2Status")
    assert item["status"] == status["status"]
    assert item["metadata"]["labels"] == {"metallb.io/node": "n1"}
    columns = "NS:.metadata.namespace,NAME:.metadata.name,NODE:.status.node"
    table = (await kubectl("get", "servicel2statuses", "-A", "-o", f"custom-columns={columns}")).out
    assert table.split() == ["NS", "NAME", "NODE", "default", "l2-web", "n1"]
    # The status subresource: a main-resource apply does not touch the status.
    manifest.write_text(STATUS.replace("spec: {}", "spec: {}\nstatus: {node: n9}"))
    await kubectl("apply", "-f", str(manifest))
    node = await kubectl("get", "servicel2status", "l2-web", "-o", "jsonpath={.status.node}")
    assert node.out == "n1"

    # Deleting the CRD deletes its objects and the type.
    await kubectl("delete", "-f", str(SERVICE_L2_STATUS_CRD))
    gone = await kubectl("get", "servicel2statuses", "-A", check=False)
    assert gone.code != 0
    assert api.store.registry.by_url("metallb.io", "v1beta1", "servicel2statuses") is None


async def test_cluster_scoped_multi_version_crd_over_http(api: ApiServer) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1beta1", "served": True, "storage": False},
                {"name": "v1alpha1", "served": False, "storage": False},
            ],
        },
    }
    async with aiohttp.ClientSession(api.url) as s:
        code, created = await call(s, "POST", CRDS, crd)
        assert code == 201
        assert created["spec"]["names"]["singular"] == "widget"
        assert created["status"]["storedVersions"] == ["v1"]
        assert {c["type"]: c["status"] for c in created["status"]["conditions"]} == {
            "NamesAccepted": "True",
            "Established": "True",
        }
        code, group = await call(s, "GET", "/apis/example.com")
        assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
        assert group["preferredVersion"]["version"] == "v1"
        code, resources = await call(s, "GET", "/apis/example.com/v1")
        assert [(r["name"], r["namespaced"], r.get("shortNames")) for r in resources["resources"]] == [
            ("widgets", False, ["wd"])
        ]
        code, _ = await call(s, "GET", "/apis/example.com/v1alpha1/widgets")
        assert code == 404

        async with s.get("/apis/example.com/v1beta1/widgets", params={"watch": "1"}) as watch:
            body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"x": 1}}
            code, w = await call(s, "POST", "/apis/example.com/v1/widgets", body)
            assert code == 201
            assert w["status"] == {"x": 1}  # no status subresource: the status is the object's
            event = await next_event(watch)
            assert (event["type"], event["object"]["apiVersion"]) == ("ADDED", "example.com/v1beta1")
            code, via_beta = await call(s, "GET", "/apis/example.com/v1beta1/widgets/w")
            assert (code, via_beta["apiVersion"]) == (200, "example.com/v1beta1")
            code, _ = await call(s, "GET", "/apis/example.com/v1/widgets/w/status")
            assert code == 404

            code, _ = await call(s, "DELETE", f"{CRDS}/widgets.example.com")
            assert code == 200
            event = await next_event(watch)
            assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "w")
            assert await next_event(watch) == {}  # the watch ends with its type
        code, _ = await call(s, "GET", "/apis/example.com/v1/widgets")
        assert code == 404
        code, groups = await call(s, "GET", "/apis")
        assert "example.com" not in [g["name"] for g in groups["groups"]]

        bad = {**crd, "metadata": {"name": "gadgets.example.com"}}
        code, body = await call(s, "POST", CRDS, bad)
        assert (code, body["reason"]) == (422, "Invalid")
        assert body["message"] == (
            'CustomResourceDefinition.apiextensions.k8s.io "gadgets.example.com" is invalid: metadata.name: '
            'Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group'
        )
        assert body["details"]["group"] == "apiextensions.k8s.io"


async def test_custom_objects_follow_namespaces_and_restores(api: ApiServer) -> None:
    crd_doc = SERVICE_L2_STATUS_CRD.read_text()
    async with aiohttp.ClientSession(api.url) as s:
        async with s.post(CRDS, data=crd_doc, headers={"Content-Type": "application/yaml"}) as resp:
            assert resp.status == 201
        code, _ = await call(s, "POST", "/api/v1/namespaces", {"metadata": {"name": "lb"}})
        obj = {"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status", "metadata": {"name": "x"}}
        code, created = await call(s, "POST", "/apis/metallb.io/v1beta1/namespaces/lb/servicel2statuses", obj)
        assert code == 201
        backup = api.backup()

        code, _ = await call(s, "DELETE", "/api/v1/namespaces/lb")
        deadline = asyncio.get_running_loop().time() + 5
        while api.store.list("servicel2statuses.metallb.io"):
            assert asyncio.get_running_loop().time() < deadline, "the namespace kept its custom objects"
            await api.store.wait_changed(0.1)

        await api.restore(None)  # an empty etcd: no CRD, so no such type
        code, _ = await call(s, "GET", L2)
        assert code == 404
        await api.restore(backup)
        code, listed = await call(s, "GET", "/apis/metallb.io/v1beta1/servicel2statuses")
        assert code == 200
        assert [i["metadata"]["uid"] for i in listed["items"]] == [created["metadata"]["uid"]]


async def test_kubectl_watches_service_l2_statuses_as_the_agent_does(
    api: ApiServer, kubectl: Kubectl, kubectl_env: dict[str, str]
) -> None:
    """``kubectl get -w`` on the custom resource: the status moves to another node and the
    watch says so (the agent's informer relies on the same list + watch)."""
    await kubectl("apply", "-f", str(SERVICE_L2_STATUS_CRD))
    await kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/servicel2statuses.metallb.io")
    await kubectl("apply", "-f", "-", stdin=STATUS)
    columns = "NAME:.metadata.name,NODE:.status.node"
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), "get", "servicel2statuses", "-A", "--watch", "-o", f"custom-columns={columns}", "--no-headers",
        env=kubectl_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert first.decode().split() == ["l2-web", "<none>"]
        for node in ("n1", "n2"):
            status = {"status": {"node": node, "serviceName": "web", "serviceNamespace": "default"}}
            await kubectl(
                "patch", "servicel2status", "l2-web", "--subresource=status", "--type=merge", "-p", json.dumps(status)
            )
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line.decode().split() == ["l2-web", node]
    finally:
        proc.kill()
        await proc.wait()
