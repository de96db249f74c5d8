"""``fieldSelector=spec.nodeName=X`` on Pods, for list and watch (what a node agent watches)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from wholeip_testkit.apiserver import ApiServer

PODS = "/api/v1/pods"


def pod(name: str, node: str | None, namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, str, str]:
    line = await asyncio.wait_for(resp.content.readline(), 5)
    event = json.loads(line)
    meta = event["object"]["metadata"]
    return event["type"], meta.get("name", ""), event["object"].get("spec", {}).get("nodeName", "")


async def test_pods_by_node_name_list_and_watch(api: ApiServer) -> None:
    api.store.create(pod("a1", "n1"))
    api.store.create(pod("b1", "n2"))
    api.store.create(pod("k1", "n1", namespace="kube-system"))
    async with aiohttp.ClientSession(api.url) as s:
        async with s.get(PODS, params={"fieldSelector": "spec.nodeName=n1"}) as resp:
            listed = await resp.json()
        assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in listed["items"]] == [
            ("default", "a1"),
            ("kube-system", "k1"),
        ]
        async with s.get(PODS, params={"fieldSelector": "spec.nodeName!=n1"}) as resp:
            assert [p["metadata"]["name"] for p in (await resp.json())["items"]] == ["b1"]
        async with s.get(PODS, params={"fieldSelector": "spec.nodeName=n1,metadata.namespace=default"}) as resp:
            assert [p["metadata"]["name"] for p in (await resp.json())["items"]] == ["a1"]
        async with s.get(PODS, params={"fieldSelector": "spec.nodeName"}) as resp:
            assert resp.status == 400

        watch_params = {
            "watch": "1",
            "fieldSelector": "spec.nodeName=n1",
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "false",
        }
        async with s.get(PODS, params=watch_params) as watch:
            api.store.create(pod("b2", "n2"))  # another node: not seen
            api.store.create(pod("p", None))  # unscheduled: not seen
            bound = api.store.get("pods", "p", "default")
            bound["spec"]["nodeName"] = "n1"  # the scheduler binds it here: it appears
            api.store.update(bound)
            assert await next_event(watch) == ("ADDED", "p", "n1")
            status = api.store.get("pods", "p", "default")
            status["status"] = {"phase": "Running", "podIP": "10.244.1.7"}
            api.store.update(status, subresource="status")
            assert await next_event(watch) == ("MODIFIED", "p", "n1")
            api.store.delete("pods", "b1", "default")  # another node's pod goes: not seen
            api.store.delete("pods", "a1", "default")
            assert await next_event(watch) == ("DELETED", "a1", "n1")
