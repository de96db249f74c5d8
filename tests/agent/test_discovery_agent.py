"""Optional APIs that come and go while the agent runs: MetalLB installed after wholeip is
picked up without a restart, and uninstalled it is let go (the egressNode annotation
applies again) while the agent stays ready.

Against the API server double, which serves MetalLB's ServiceL2Status once its CRD is
created over HTTP (as ``kubectl apply`` of MetalLB's manifests does) and stops serving it
when the CRD is deleted.
"""

from __future__ import annotations

import dataclasses

import aiohttp
from tests.agent.agentkit import FAST, cluster, endpoint_slice, eventually, service, set_lb_ip
from tests.agent.test_agent import AgentFactory, start_agent

from wholeip.agent.app import Agent
from wholeip.names import EGRESS_IP_ANNOTATION
from wholeip_testkit.apiserver import SERVICE_L2_STATUS_CRD, ApiServer

__all__ = ["start_agent"]

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
L2 = "/apis/metallb.io/v1beta1/namespaces/default/servicel2statuses"
REDISCOVER = 0.2
OPTIONS = dataclasses.replace(FAST, rediscover_interval=REDISCOVER)


def reasons(agent: Agent) -> set[str]:
    assert agent.syncer is not None
    index = agent.syncer.index
    return {p.reason for p in index.problems if p.ref.name == "eg"} if index is not None else set()


def snat(agent: Agent) -> bool:
    """Whether this node SNATs the egress Service's pod (it holds the egress IP)."""
    doc = agent.engine.observe()
    return doc is not None and bool(doc.elements.get("egresssnat4"))


async def test_metallb_installed_then_removed_while_the_agent_runs(api: ApiServer, start_agent: AgentFactory) -> None:
    cluster(api)
    svc = service("eg", whole_ip=False)
    svc["metadata"]["annotations"][EGRESS_IP_ANNOTATION] = "true"
    api.store.create(svc)
    set_lb_ip(api, "eg", "203.0.113.50")
    api.store.create(endpoint_slice("eg", "10.244.1.10", "n1"))

    agent = await start_agent("n1", watch_options=OPTIONS)
    await agent.wait_ready()
    assert agent.l2_statuses is not None
    assert agent.l2_statuses.informer is None  # no such API yet
    await eventually(lambda: "EgressNodeUnknown" in reasons(agent), what="no holder known")
    await eventually(lambda: not snat(agent), what="the holder's SNAT gone")

    async with aiohttp.ClientSession(api.url) as s:
        async with s.post(
            CRDS, data=SERVICE_L2_STATUS_CRD.read_text(), headers={"Content-Type": "application/yaml"}
        ) as resp:
            assert resp.status == 201, await resp.text()
        # What MetalLB's speaker writes: the status names the announcing node.
        status = {"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status", "metadata": {"name": "l2-eg"}}
        async with s.post(L2, json=status) as resp:
            assert resp.status == 201, await resp.text()
        patch = {"status": {"node": "n1", "serviceName": "eg", "serviceNamespace": "default"}}
        async with s.patch(
            f"{L2}/l2-eg/status", json=patch, headers={"Content-Type": "application/merge-patch+json"}
        ) as resp:
            assert resp.status == 200, await resp.text()

        await eventually(lambda: snat(agent), what="the holder from the ServiceL2Status installed after the start")
        assert "EgressNodeUnknown" not in reasons(agent)
        assert agent.l2_statuses.informer is not None

        async with s.delete(f"{CRDS}/servicel2statuses.metallb.io") as resp:
            assert resp.status == 200, await resp.text()

    await eventually(lambda: agent.l2_statuses is not None and agent.l2_statuses.informer is None, what="let go")
    await eventually(lambda: "EgressNodeUnknown" in reasons(agent), what="back to the annotation (none here)")
    await eventually(lambda: not snat(agent), what="the holder's SNAT gone")
    # Still ready: a removed API is not a failing informer.
    assert agent.health is not None
    assert agent.health.ready().ok, agent.health.ready()
    assert agent.l2_statuses.failing_for() == 0.0
