"""ServiceCIDR (networking.k8s.io/v1) as a 1.33+ server serves it, and a server without it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from wholeip_testkit.apiserver import ApiServer

Kubectl = Callable[..., Awaitable[Any]]
KUBECTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kubectl"
CIDRS = "/apis/networking.k8s.io/v1/servicecidrs"
SVC = "/api/v1/namespaces/default/services"


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    line = await asyncio.wait_for(resp.content.readline(), 5)
    return json.loads(line)


async def test_kubectl_gets_the_default_service_cidr(api: ApiServer, kubectl: Kubectl) -> None:
    resources = (await kubectl("api-resources", "--api-group=networking.k8s.io", "-o", "wide")).out
    assert any(line.split()[:4] == ["servicecidrs", "networking.k8s.io/v1", "false", "ServiceCIDR"]
               for line in resources.splitlines())  # fmt: skip
    out = json.loads((await kubectl("get", "servicecidrs", "-o", "json")).out)
    assert [o["metadata"]["name"] for o in out["items"]] == ["kubernetes"]
    default = out["items"][0]
    assert default["spec"]["cidrs"] == ["10.96.0.0/12", "fd00:10:96::/112"]
    [ready] = default["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["message"]) == (
        "Ready",
        "True",
        "Kubernetes default Service CIDR is ready",
    )
    name = (await kubectl("get", "servicecidr", "kubernetes", "-o", "name")).out.strip()
    assert name == "servicecidr.networking.k8s.io/kubernetes"


async def test_new_service_cidrs_are_watched_and_allocated_from(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        code, listed = await call(s, "GET", CIDRS)
        assert code == 200
        assert listed["kind"] == "ServiceCIDRList"
        rv = listed["metadata"]["resourceVersion"]
        # Outside every range: refused until a ServiceCIDR covers it.
        code, body = await call(s, "POST", SVC, {"metadata": {"name": "a"}, "spec": {"clusterIP": "192.168.7.10"}})
        assert code == 422
        assert "the provided network does not match the current range" in body["message"]
        async with s.get(CIDRS, params={"watch": "1", "resourceVersion": rv}) as watch:
            extra = {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "extra"}}
            code, created = await call(s, "POST", CIDRS, {**extra, "spec": {"cidrs": ["192.168.7.0/24"]}})
            assert code == 201
            event = await next_event(watch)
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "extra")
            assert event["object"]["spec"]["cidrs"] == ["192.168.7.0/24"]
        code, svc = await call(s, "POST", SVC, {"metadata": {"name": "a"}, "spec": {"clusterIP": "192.168.7.10"}})
        assert (code, svc["spec"]["clusterIP"]) == (201, "192.168.7.10")

        # The CIDRs may only gain a second family; garbage is refused with the real wording.
        created["spec"]["cidrs"] = ["192.168.8.0/24"]
        code, body = await call(s, "PUT", f"{CIDRS}/extra", created)
        assert (code, body["reason"]) == (422, "Invalid")
        assert body["message"].startswith('ServiceCIDR.networking.k8s.io "extra" is invalid: spec.cidrs: Invalid value')
        assert body["message"].endswith("field is immutable")
        created["spec"]["cidrs"] = ["192.168.7.0/24", "fd00:77::/112"]
        code, _ = await call(s, "PUT", f"{CIDRS}/extra", created)
        assert code == 200
        code, body = await call(
            s, "POST", CIDRS, {**extra, "metadata": {"name": "bad"}, "spec": {"cidrs": ["10.0.0.0/33"]}}
        )
        assert code == 422
        assert 'spec.cidrs[0]: Invalid value: "10.0.0.0/33": must be a valid CIDR value' in body["message"]

        # Deleting the ServiceCIDR takes its range away from new Services.
        code, _ = await call(s, "DELETE", f"{CIDRS}/extra")
        assert code == 200
        code, body = await call(s, "POST", SVC, {"metadata": {"name": "b"}, "spec": {"clusterIP": "192.168.7.11"}})
        assert code == 422


async def test_without_the_service_cidr_api(kubectl_env: dict[str, str]) -> None:
    async with (
        ApiServer(service_cidr_api=False, service_cidrs=["10.0.0.0/16"]) as api,
        aiohttp.ClientSession(api.url) as s,
    ):
        code, groups = await call(s, "GET", "/apis")
        assert "networking.k8s.io" not in [g["name"] for g in groups["groups"]]
        for url in (CIDRS, f"{CIDRS}/kubernetes", "/apis/networking.k8s.io/v1", "/apis/networking.k8s.io"):
            code, body = await call(s, "GET", url)
            assert (code, body["reason"]) == (404, "NotFound"), url
        async with s.get(CIDRS, params={"watch": "1"}) as resp:
            assert resp.status == 404
        # Services still get addresses, from the server's own range.
        code, svc = await call(s, "POST", SVC, {"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}})
        assert code == 201
        assert svc["spec"]["clusterIP"].startswith("10.0.")
        # And a real kubectl finds no such resource type.
        env = {**kubectl_env, "KUBECONFIG": str(api.write_kubeconfig(Path(kubectl_env["HOME"]) / "old-kubeconfig"))}
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "get", "servicecidrs", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
        assert 'the server doesn\'t have a resource type "servicecidrs"' in err.decode()


async def test_cli_flags() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wholeip_testkit.apiserver", "--port", "0", "--service-cidrs", "10.50.0.0/24",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    old = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wholeip_testkit.apiserver", "--port", "0", "--no-service-cidr-api",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert old.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        old_url = (await asyncio.wait_for(old.stdout.readline(), 20)).decode().strip()
        async with aiohttp.ClientSession() as s:
            code, default = await call(s, "GET", f"{url}{CIDRS}/kubernetes")
            assert (code, default["spec"]["cidrs"]) == (200, ["10.50.0.0/24"])
            code, _ = await call(s, "GET", f"{old_url}{CIDRS}")
            assert code == 404
    finally:
        for p in (proc, old):
            p.terminate()
            assert await asyncio.wait_for(p.wait(), 10) == 0
