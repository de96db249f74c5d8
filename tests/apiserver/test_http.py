"""The REST surface as raw HTTP: Status errors, conflicts, subresources, audit, control, CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from wholeip_testkit.apiserver import ApiServer, AuditRecord


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers={"Content-Type": ctype}) as resp:
        return resp.status, await resp.json(content_type=None)


CM = "/api/v1/namespaces/default/configmaps"


async def test_errors_are_status_objects(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        code, body = await call(s, "GET", f"{CM}/nope")
        assert (code, body["kind"], body["reason"]) == (404, "Status", "NotFound")
        assert body["message"] == 'configmaps "nope" not found'
        assert body["details"] == {"name": "nope", "kind": "configmaps"}

        code, created = await call(s, "POST", CM, {"metadata": {"name": "c"}, "data": {"k": "1"}})
        assert code == 201
        assert created["metadata"]["resourceVersion"] == str(api.store.rv)
        assert created["metadata"]["uid"]
        assert created["metadata"]["creationTimestamp"]
        code, body = await call(s, "POST", CM, {"metadata": {"name": "c"}})
        assert (code, body["reason"]) == (409, "AlreadyExists")

        stale = dict(created, data={"k": "2"})
        code, updated = await call(s, "PUT", f"{CM}/c", stale)
        assert code == 200
        assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
        code, body = await call(s, "PUT", f"{CM}/c", dict(created, data={"k": "3"}))
        assert (code, body["reason"]) == (409, "Conflict")
        assert "the object has been modified" in body["message"]

        code, body = await call(s, "POST", "/api/v1/namespaces/missing/configmaps", {"metadata": {"name": "c"}})
        assert (code, body["reason"]) == (404, "NotFound")
        code, body = await call(s, "POST", CM, {"metadata": {}})
        assert (code, body["reason"]) == (422, "Invalid")
        code, body = await call(s, "POST", CM, {"metadata": {"generateName": "gen-"}})
        assert code == 201
        assert body["metadata"]["name"].startswith("gen-")
        code, body = await call(s, "GET", "/api/v1/namespaces/default/widgets")
        assert code == 404
        code, body = await call(s, "PATCH", f"{CM}/c", {"data": {}}, ctype="text/plain")
        assert code == 415
        code, body = await call(s, "DELETE", f"{CM}/c")
        assert (code, body["status"]) == (200, "Success")


async def test_status_subresource_isolation(api: ApiServer) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}
    async with aiohttp.ClientSession(api.url) as s:
        svc = {"metadata": {"name": "s"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}}
        code, created = await call(s, "POST", "/api/v1/namespaces/default/services", svc)
        assert code == 201
        assert created["status"] == {"loadBalancer": {}}  # reset on create, as on a real server
        code, created = await call(s, "POST", "/api/v1/nodes", node)
        assert code == 201
        status = {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}
        code, body = await call(
            s, "PUT", "/api/v1/nodes/n1/status", dict(node, spec={"unschedulable": True}, status=status)
        )
        assert code == 200
        assert body["status"] == status
        assert body["spec"] == {"podCIDR": "10.244.1.0/24"}  # spec is not written through status
        code, body = await call(
            s,
            "PATCH",
            "/api/v1/nodes/n1/status",
            {"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}},
            ctype="application/strategic-merge-patch+json",
        )
        assert [a["type"] for a in body["status"]["addresses"]] == ["InternalIP", "Hostname"]
        assert "generation" not in body["metadata"]  # (a Node has none on a real server)


async def test_namespaced_and_cluster_scoped_urls(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        code, _ = await call(s, "GET", "/api/v1/namespaces/default/nodes")
        assert code == 404
        code, body = await call(s, "GET", "/api/v1/namespaces/default")
        assert (code, body["status"]["phase"]) == (200, "Active")
        code, body = await call(s, "GET", "/apis/coordination.k8s.io/v1/leases")
        assert (code, body["kind"]) == (200, "LeaseList")
        code, body = await call(s, "GET", "/apis")
        groups = {g["name"] for g in body["groups"]}
        assert {"apps", "discovery.k8s.io", "rbac.authorization.k8s.io", "batch"} <= groups
        code, body = await call(s, "GET", "/api/v1")
        by_name = {r["name"]: r for r in body["resources"]}
        assert by_name["services"]["namespaced"]
        assert not by_name["nodes"]["namespaced"]
        assert "services/status" in by_name


async def test_audit_log_records_rbac_terms(api: ApiServer) -> None:
    api.clear_audit()
    async with aiohttp.ClientSession(api.url, headers={"User-Agent": "probe/1"}) as s:
        await call(s, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", {"metadata": {"name": "l"}})
        await call(s, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/l")
        await call(s, "GET", "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=a")
        await call(s, "PATCH", "/api/v1/namespaces/default/services/x/status", {}, "application/merge-patch+json")
        await call(s, "GET", "/version")
        async with s.get("/api/v1/services?watch=1&timeoutSeconds=0.01") as resp:
            await resp.read()
    assert api.audit_resource_requests() == [
        AuditRecord("create", "coordination.k8s.io", "leases", "", "default", "",
                    "/apis/coordination.k8s.io/v1/namespaces/default/leases", "probe/1", "v1"),
        AuditRecord("get", "coordination.k8s.io", "leases", "", "default", "l",
                    "/apis/coordination.k8s.io/v1/namespaces/default/leases/l", "probe/1", "v1"),
        AuditRecord("list", "discovery.k8s.io", "endpointslices", "", "", "",
                    "/apis/discovery.k8s.io/v1/endpointslices", "probe/1", "v1"),
        AuditRecord("patch", "", "services", "status", "default", "x",
                    "/api/v1/namespaces/default/services/x/status", "probe/1", "v1"),
        AuditRecord("watch", "", "services", "", "", "", "/api/v1/services", "probe/1", "v1"),
    ]  # fmt: skip
    assert [r.path for r in api.audit if not r.is_resource_request] == ["/version"]


async def test_control_endpoint(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        async with s.post("/_double/fail-watches?count=1") as resp:
            assert resp.status == 200
        async with s.get("/api/v1/services?watch=true&resourceVersion=1") as resp:
            event = json.loads(await resp.content.readline())
        assert event["type"] == "ERROR"
        assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
        async with s.post("/_double/compact") as resp:
            assert (await resp.json())["resourceVersion"] == str(api.store.rv)
        async with s.get("/_double/audit") as resp:
            audit = await resp.json()
        assert {"verb": "watch", "resource": "services"}.items() <= audit[-1].items()
        async with s.post("/_double/stop?seconds=0.2") as resp:
            assert resp.status == 200
    # The server goes away and comes back on the same port.
    assert api.restarting is not None
    port = api.port
    await asyncio.wait_for(api.restarting, 5)
    assert api.running
    assert api.port == port
    async with aiohttp.ClientSession(api.url) as s, s.get("/version") as resp:
        assert resp.status == 200


async def test_an_outage_can_be_ended_before_its_time(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s, s.post("/_double/stop?seconds=600") as resp:
        assert resp.status == 200
    assert api.restarting is not None
    restarting = api.restarting

    async def gone() -> None:
        while api.running:  # noqa: ASYNC110 (the double has no event for it; polled under a deadline)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(gone(), 5)
    assert not restarting.done()  # away: 600 s were asked for
    api.resume()
    await asyncio.wait_for(restarting, 5)
    assert api.running
    async with aiohttp.ClientSession(api.url) as s, s.get("/version") as resp:
        assert resp.status == 200


async def test_audit_since_and_load_balancers_without_node_ports(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        async with s.get("/_double/audit") as resp:
            seen = len(await resp.json())
        svc = "/api/v1/namespaces/default/services"
        spec = {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False, "ports": [{"port": 80}]}
        code, created = await call(s, "POST", svc, {"metadata": {"name": "lb"}, "spec": spec})
        assert code == 201
        assert "nodePort" not in created["spec"]["ports"][0]
        assert created["spec"]["clusterIP"].startswith("10.96.")
        code, other = await call(s, "POST", svc, {"metadata": {"name": "lb2"}, "spec": {"ports": [{"port": 80}]}})
        assert other["spec"]["clusterIP"] != created["spec"]["clusterIP"]
        async with s.get(f"/_double/audit?since={seen}") as resp:
            assert [r["name"] for r in await resp.json()] == ["", ""]
        async with s.get("/_double/audit?since=x") as resp:
            assert resp.status == 400


async def test_cli_prints_url_and_writes_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wholeip_testkit.apiserver", "--port", "0", "--kubeconfig", str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        async with aiohttp.ClientSession(url) as s, s.get("/api") as resp:
            assert (await resp.json())["versions"] == ["v1"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
