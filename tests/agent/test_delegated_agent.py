"""Delegated Services through the whole agent (docs/datapath.md row 16): the API server
double allocates the ClusterIP and the NodePort, the informers' trimmed caches keep what
the model reads (ClusterIPs, policies, endpoint conditions), and the fake table follows
endpoint changes."""

from __future__ import annotations

from typing import Any

from agentkit import cluster, eventually
from test_agent import AgentFactory, start_agent, table  # noqa: F401 (the fixture)

from wholeip_testkit.apiserver import ApiServer


def delegated_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "dns",
            "namespace": "default",
            "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
        },
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "ports": [{"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}],
        },
    }


def slice_of(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "dns-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
    }


async def test_the_agent_serves_a_delegated_services_cluster_ip_and_node_port(
    api: ApiServer,
    start_agent: AgentFactory,  # noqa: F811 (the fixture of test_agent)
) -> None:
    cluster(api)
    api.store.create(delegated_service())
    svc = api.store.get("services", "dns", "default")
    cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    ready = {"addresses": ["10.244.1.10"], "nodeName": "n1", "conditions": {"ready": True}}
    leaving = {
        "addresses": ["10.244.1.11"],
        "nodeName": "n1",
        "conditions": {"ready": False, "serving": True, "terminating": True},
    }
    api.store.create(slice_of([ready, leaving]))
    agent = await start_agent("n1")
    key = (cluster_ip, "udp", 53)
    await eventually(lambda: table(agent, "svc4") == {(key, "goto lb_1")}, what="the ClusterIP served")
    assert table(agent, "svcaddr4") == {((*key, 0), "10.244.1.10")}
    assert table(agent, "svcport4") == {((*key, 0), 5353)}
    assert table(agent, "nodeport4") == {(("udp", node_port), "goto lb_1")}
    assert table(agent, "npmasq4") == set()  # externalTrafficPolicy Local: the client is kept
    # The ready endpoint goes: the serving, terminating one takes over (kube-proxy's fallback).
    sl = api.store.get("endpointslices", "dns-a", "default")
    sl["endpoints"] = [{**ready, "conditions": {"ready": False, "serving": False, "terminating": True}}, leaving]
    api.store.update(sl)
    await eventually(lambda: table(agent, "svcaddr4") == {((*key, 0), "10.244.1.11")}, what="the fallback")
    # None at all: refused at once.
    sl = api.store.get("endpointslices", "dns-a", "default")
    sl["endpoints"] = []
    api.store.update(sl)
    await eventually(lambda: table(agent, "svcrefuse4") == {(key, "goto refuse")}, what="refused")
    assert table(agent, "svc4") == set()
