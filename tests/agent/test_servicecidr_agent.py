"""The Service networks come from the cluster's ServiceCIDR objects, not from a guess.

Against the API server double: with the ServiceCIDR API (its default object
``kubernetes`` holds 10.96.0.0/12 and fd00:10:96::/112) the agent reads and
follows the objects; a range added at run time becomes east-west at once, so an
external IP inside it is refused; without the API (a server before 1.33) the
``--service-cidr`` fallback applies; a flag given explicitly wins and the objects
are not even read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from tests.agent.agentkit import FAST, cluster, endpoint_slice, eventually, service, set_lb_ip
from tests.agent.test_agent import AgentFactory, settings, start_agent, table

from wholeip.agent.app import Agent
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings
from wholeip_testkit.apiserver import ApiServer

__all__ = ["start_agent"]  # the fixture, shared with test_agent

ODD = "172.30.0.10"
"""An external IP the default Service ranges do not cover."""


def odd_service(api: ApiServer) -> None:
    cluster(api)
    api.store.create(service("odd"))
    set_lb_ip(api, "odd", ODD)
    api.store.create(endpoint_slice("odd", "10.244.1.10", "n1"))


def service_cidr(name: str, *cidrs: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": list(cidrs)},
    }


def refused(agent: Agent) -> bool:
    """Whether the odd external IP is refused as inside the cluster network 172.30.0.0/16."""
    assert agent.syncer is not None
    assert agent.syncer.index is not None
    messages = [p.message for p in agent.syncer.index.problems if ODD in p.message]
    return len(messages) == 1 and f"{ODD} lies inside the cluster network 172.30.0.0/16" in messages[0]


async def test_service_cidrs_added_and_removed_at_run_time_change_the_cluster_networks(
    api: ApiServer, start_agent: AgentFactory
) -> None:
    odd_service(api)
    agent = await start_agent("n1")
    await agent.wait_ready()
    # Both families of the default object, which the flag's fallback (IPv4 only) lacks.
    assert "10.96.0.0/12" in table(agent, "cluster4")
    assert "fd00:10:96::/112" in table(agent, "cluster6")
    assert table(agent) == {(ODD, "10.244.1.10")}

    assert agent.syncer is not None
    rebuilds = agent.syncer.rebuilds
    api.store.create(service_cidr("extra", "172.30.0.0/16"))
    await eventually(lambda: table(agent) == set(), what="the external IP inside the new range refused")
    assert "172.30.0.0/16" in table(agent, "cluster4")
    assert refused(agent)
    assert agent.syncer.rebuilds == rebuilds  # the index is updated in place, like after a Node change

    api.store.delete("servicecidrs", "extra")
    await eventually(lambda: table(agent) == {(ODD, "10.244.1.10")}, what="the mapping back once the range is gone")
    assert "172.30.0.0/16" not in table(agent, "cluster4")


async def test_an_explicit_flag_wins_and_the_objects_are_not_read(api: ApiServer, start_agent: AgentFactory) -> None:
    odd_service(api)
    model = ModelSettings(service_cidrs=(ipaddress.ip_network("172.30.0.0/16"),), service_cidrs_given=True)
    agent = await start_agent("n1", settings={"model": model})
    await agent.wait_ready()
    assert table(agent) == set()
    assert "172.30.0.0/16" in table(agent, "cluster4")
    assert "10.96.0.0/12" not in table(agent, "cluster4")
    assert refused(agent)
    assert not [r for r in api.audit if r.resource == "servicecidrs" or "networking.k8s.io" in r.path]


@pytest.fixture
async def old_api() -> AsyncIterator[ApiServer]:
    async with ApiServer(bookmark_interval=0.2, history=1000, service_cidr_api=False) as server:
        yield server


async def test_without_the_api_the_flags_fallback_applies(old_api: ApiServer, tmp_path: Path) -> None:
    odd_service(old_api)
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=str(old_api.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
    )
    # Not given explicitly: the fallback value (what an unset --service-cidr would default to).
    model = ModelSettings(service_cidrs=(ipaddress.ip_network("172.30.0.0/16"),))
    async with Agent(settings("n1", model=model), backend=FakeBackend(), kube_config=cfg, watch_options=FAST) as agent:
        await agent.wait_ready()
        assert agent.service_cidrs is not None
        assert agent.service_cidrs.decided.is_set()
        assert agent.service_cidrs.objects() is None  # discovery found no API
        assert table(agent) == set()
        assert table(agent, "cluster4") >= {"172.30.0.0/16"}
        assert refused(agent)
        # Discovery asked once and got 404; nothing was listed or watched there.
        asked = [r for r in old_api.audit if "networking.k8s.io" in r.path or r.resource == "servicecidrs"]
        assert [(r.verb, r.path) for r in asked] == [("get", "/apis/networking.k8s.io/v1")]
