"""The podnat annotation's problems become Warning Events on the Pod, from a real agent.

One agent (node n1) runs against the API server double with a FakeBackend. Pods are
written to the double's store as the kubelet would leave them (scheduled, Running, with
an address); the Events are read back over HTTP with the field selectors ``kubectl
describe pod`` uses. The node's default-route source is passed in the settings, so the
agent reads nothing of the host's network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from agentkit import FAST, cluster, eventually
from kubernetes_asyncio import client

from wholeip.agent.app import Agent
from wholeip.names import PODNAT_ADDR, PODNAT_ANNOTATION
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings, PodNatSettings, Settings
from wholeip_testkit.apiserver import ApiServer

NODE = "n1"
NODE_ADDRESS = "192.0.2.11"
"""n1's default-route source (and InternalIP in :func:`agentkit.cluster`): ``ifaceAuto``'s choice."""

EventLister = Callable[[str, str], Awaitable[list[dict[str, Any]]]]


def pod(name: str, node_name: str, pod_ip: str, annotation: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {PODNAT_ANNOTATION: annotation}},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]},
    }


def entries(*ports: tuple[int, int]) -> str:
    return json.dumps({"entries": [{"srcPort": src, "dstPort": dst} for src, dst in ports]})


@pytest.fixture
async def agent(api: ApiServer, kube_config: client.Configuration) -> AsyncIterator[Agent]:
    cluster(api)
    settings = Settings(
        node_name=NODE,
        port=0,
        min_sync_interval=0.02,
        max_sync_interval=30.0,
        health_timeout=10.0,
        model=ModelSettings(podnat=PodNatSettings(default_sources=(ipaddress.ip_address(NODE_ADDRESS),))),
    )
    # event_settle=0: a problem is written at once (the default waits 2 s for transients).
    running = Agent(settings, backend=FakeBackend(), kube_config=kube_config, watch_options=FAST, event_settle=0.0)
    await running.start()
    await running.wait_ready()
    yield running
    task = running.task
    await running.stop()
    assert task is None or task.cancelled() or task.exception() is None  # never died on its own


@pytest.fixture
async def pod_events(kube_config: client.Configuration) -> AsyncIterator[EventLister]:
    """Events about one Pod, listed from the double over HTTP with field selectors."""
    async with client.ApiClient(kube_config) as api_client:
        core = client.CoreV1Api(api_client)

        async def listed(namespace: str, name: str) -> list[dict[str, Any]]:
            result = await core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}",
                _preload_content=False,
            )
            async with result as response:
                body = json.loads(await response.read())
            items: list[dict[str, Any]] = body["items"]
            return items

        yield listed


async def wait_events(events: EventLister, namespace: str, name: str, *, within: float = 10.0) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def poll() -> bool:
        found[:] = await events(namespace, name)
        return bool(found)

    # eventually() takes a synchronous check: poll the async one the same way, with a deadline.
    deadline = time.monotonic() + within
    while not await poll():
        if time.monotonic() > deadline:
            raise AssertionError(f"no Event for Pod {namespace}/{name} within {within}s")
        await asyncio.sleep(0.05)
    return found


def published(agent: Agent) -> set[Any]:
    doc = agent.engine.observe()
    return set(doc.elements.get(PODNAT_ADDR[4], ())) if doc is not None else set()


async def test_restricted_port_gets_a_warning_event_and_the_rest_is_published(
    api: ApiServer, agent: Agent, pod_events: EventLister
) -> None:
    api.store.create(pod("ssh", NODE, "10.244.1.10", entries((22, 22), (8080, 80))))
    uid = api.store.get("pods", "ssh", "default")["metadata"]["uid"]

    (event,) = await wait_events(pod_events, "default", "ssh")
    assert (event["reason"], event["type"]) == ("PodNATPortRestricted", "Warning")
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["involvedObject"]["uid"] == uid
    assert event["source"] == {"component": "wholeip", "host": NODE}
    assert "port 22" in event["message"]
    # Only the restricted entry is refused: the other one is published on the node's address.
    await eventually(lambda: published(agent) == {((NODE_ADDRESS, "tcp", 8080), "10.244.1.10")})


async def test_malformed_annotation_gets_a_warning_event(api: ApiServer, agent: Agent, pod_events: EventLister) -> None:
    api.store.create(pod("broken", NODE, "10.244.1.11", '{"entries": [{"srcPort": 25,'))

    (event,) = await wait_events(pod_events, "default", "broken")
    assert (event["reason"], event["type"]) == ("InvalidPodNATAnnotation", "Warning")
    assert event["involvedObject"]["kind"] == "Pod"
    assert "not JSON" in event["message"]
    assert published(agent) == set()


async def test_another_nodes_pod_gets_no_event_from_this_agent(
    api: ApiServer, agent: Agent, pod_events: EventLister
) -> None:
    bad = '{"entries": [{"srcPort": 25,'
    # The other node's pod first, then a pod of this node: once this node's Event is
    # written, the agent's watch has gone past the other pod's creation too.
    api.store.create(pod("elsewhere", "n2", "10.244.2.20", bad))
    api.store.create(pod("here", NODE, "10.244.1.12", bad))
    (event,) = await wait_events(pod_events, "default", "here")
    assert event["reason"] == "InvalidPodNATAnnotation"
    await eventually(lambda: agent.events is not None and agent.events.backlog == 0, what="events written")

    assert agent.pod_informer is not None
    assert [p["metadata"]["name"] for p in agent.pod_informer.iterate()] == ["here"]  # n1's pods only
    assert await pod_events("default", "elsewhere") == []
    assert agent.events is not None
    assert agent.events.written == 1  # the one Event about this node's pod
