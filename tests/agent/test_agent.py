"""The whole agent against the API server double, with a FakeBackend instead of the kernel.

Each test changes the cluster through the double's store (as controllers and
users would through the API) and waits, with a deadline, for the fake table to
hold what the datapath needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from agentkit import FAST, cluster, endpoint_slice, eventually, node, service, set_lb_ip
from kubernetes_asyncio import client

from wholeip.agent.app import Agent
from wholeip.names import WHOLE_IP_ANNOTATION
from wholeip.nft.fake import FakeBackend
from wholeip.settings import Settings
from wholeip_testkit.apiserver import ApiServer

AgentFactory = Callable[..., Any]


def settings(node_name: str = "n1", **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "node_name": node_name,
        "port": 0,
        "min_sync_interval": 0.02,
        "sync_burst": 2,
        "max_sync_interval": 30.0,
        "health_timeout": 10.0,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def start_agent(kube_config: client.Configuration) -> AsyncIterator[AgentFactory]:
    agents: list[Agent] = []

    async def start(node_name: str = "n1", *, backend: FakeBackend | None = None, **kwargs: Any) -> Agent:
        agent = Agent(
            settings(node_name, **kwargs.pop("settings", {})),
            backend=backend or FakeBackend(),
            kube_config=kube_config,
            watch_options=kwargs.pop("watch_options", FAST),
            **kwargs,
        )
        await agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        task = agent.task
        await agent.stop()
        # The agent's tasks must never have died on their own.
        assert task is None or task.cancelled() or task.exception() is None


def table(agent: Agent, name: str = "ingress4") -> set[Any]:
    doc = agent.engine.observe()
    return set(doc.elements.get(name, ())) if doc is not None else set()


def managed_web(api: ApiServer, *, pod: str = "10.244.1.10", node_name: str = "n1") -> None:
    cluster(api)
    api.store.create(service("web"))
    set_lb_ip(api, "web", "198.51.100.10")
    api.store.create(endpoint_slice("web", pod, node_name))


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


# --------------------------------------------------------------------------- the lifecycle of a mapping


async def test_annotated_service_gets_its_mapping(api: ApiServer, start_agent: AgentFactory) -> None:
    cluster(api)
    agent = await start_agent("n1")
    await agent.wait_ready()
    assert table(agent) == set()

    api.store.create(service("web"))
    api.store.create(endpoint_slice("web", "10.244.1.10", "n1"))
    set_lb_ip(api, "web", "198.51.100.10")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    # The pod lives on n1: this node also gives it its egress address.
    await eventually(lambda: table(agent, "egress4") == {("10.244.1.10", "198.51.100.10")})
    assert agent.web is not None
    assert await http_get(agent.web.url + "/readyz") == (200, "ok\n")
    assert await http_get(agent.web.url + "/healthz") == (200, "ok\n")
    _status, metrics = await http_get(agent.web.url + "/metrics")
    assert 'wholeip_mappings{direction="ingress",ip_family="ipv4"} 1.0' in metrics


async def test_ingress_is_cluster_wide_and_egress_node_local(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api, node_name="n1")
    n1 = await start_agent("n1")
    n2 = await start_agent("n2")
    await eventually(lambda: table(n1) == table(n2) == {("198.51.100.10", "10.244.1.10")})
    assert table(n1, "egress4") == {("10.244.1.10", "198.51.100.10")}
    assert table(n2, "egress4") == set()


async def test_pod_change_swaps_the_element(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    # The first commit done: a new table goes in as several transactions, and its elements
    # show before the last one (whose plan would otherwise be the last result read below).
    await agent.wait_ready()

    syncer = agent.syncer
    assert syncer is not None
    rebuilds, first = syncer.rebuilds, syncer.last_result
    eps = api.store.get("endpointslices", "web-a", "default")
    eps["endpoints"] = [{"addresses": ["10.244.2.20"], "nodeName": "n2", "conditions": {"ready": True}}]
    api.store.update(eps)
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.2.20")})
    # (The table is committed in the worker thread a moment before the loop books the result.)
    await eventually(lambda: syncer.last_result is not first)
    assert table(agent, "egress4") == set()  # the pod moved to n2
    # A watched change updates the index in place: no snapshot of the whole cluster.
    assert agent.syncer.rebuilds == rebuilds
    assert agent.syncer.last_result is not None
    # Five deleted since docs/datapath.md row 15: the pod's egress carries one more element (its ICMP fix).
    assert (agent.syncer.last_result.plan.added, agent.syncer.last_result.plan.deleted) == (2, 5)


async def test_a_node_joining_updates_the_index_in_place(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await agent.wait_ready()  # the first commit done (see above)
    assert agent.syncer is not None
    rebuilds = agent.syncer.rebuilds
    api.store.create(node("n3", "192.0.2.13", "10.244.3.0/24"))
    # Its pod CIDR and address merge with n2's: two elements replace two.
    await eventually(lambda: "10.244.2.0/23" in table(agent, "cluster4"), what="the new Node's pod CIDR")
    assert table(agent, "cluster4") == {
        "10.244.1.0/24",
        "10.244.2.0/23",
        "10.96.0.0/12",
        "192.0.2.11/32",
        "192.0.2.12/31",
    }
    assert table(agent) == {("198.51.100.10", "10.244.1.10")}
    assert agent.syncer.rebuilds == rebuilds  # no snapshot of the whole cluster: an update of the index


async def test_de_annotated_service_loses_its_mapping(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})

    svc = api.store.get("services", "web", "default")
    svc["metadata"]["annotations"] = {WHOLE_IP_ANNOTATION: "false"}
    api.store.update(svc)
    await eventually(lambda: table(agent) == set() and table(agent, "egress4") == set())


async def test_deleted_service_loses_its_mapping(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    api.store.delete("services", "web", "default")
    await eventually(lambda: table(agent) == set())


# --------------------------------------------------------------------------- start-up and shutdown


async def test_nothing_is_written_until_the_informers_synced(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    await api.stop()  # the API server is away when the agent starts
    backend = FakeBackend()
    agent = await start_agent("n1", backend=backend)
    assert agent.web is not None
    assert agent.informers is not None
    await eventually(lambda: sum(i.restarts["error"] for i in agent.informers or ()) >= 3)
    status, body = await http_get(agent.web.url + "/readyz")
    assert status == 503
    assert "informers not synced" in body
    assert (await http_get(agent.web.url + "/healthz"))[0] == 200  # waiting for the API is not a fault
    assert backend.tables == {}
    assert backend.transactions == []

    await api.start()
    await agent.wait_ready()
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    assert (await http_get(agent.web.url + "/readyz"))[0] == 200


async def test_the_start_up_index_follows_the_lists(api: ApiServer, start_agent: AgentFactory) -> None:
    """The first sync takes the index the prefill built from the lists (every Service and
    slice listed) and commits every mapping; a Service changed and one deleted afterwards
    are updates of that index, not rebuilds. (The first lists ask for resourceVersion=0,
    which a server answers whole, as one page; pages of any size are test_prefill's.)"""
    cluster(api)
    for i in range(12):
        api.store.create(service(f"s{i}"))
        set_lb_ip(api, f"s{i}", f"198.51.100.{10 + i}")
        api.store.create(endpoint_slice(f"s{i}", f"10.244.1.{10 + i}", "n1"))
    listed = len(api.store.list("services", None)) + len(api.store.list("endpointslices", None))
    agent = await start_agent("n1")
    await agent.wait_ready()
    assert agent.syncer is not None
    assert agent.syncer.prefilled == listed
    assert agent.syncer.prefill is None  # taken
    assert table(agent) == {(f"198.51.100.{10 + i}", f"10.244.1.{10 + i}") for i in range(12)}
    rebuilds = agent.syncer.rebuilds
    set_lb_ip(api, "s0", "198.51.100.99")
    api.store.delete("services", "s1", "default")
    expected = {(f"198.51.100.{10 + i}", f"10.244.1.{10 + i}") for i in range(2, 12)} | {
        ("198.51.100.99", "10.244.1.10")
    }
    await eventually(lambda: table(agent) == expected)
    assert agent.syncer.rebuilds == rebuilds


async def test_stop_leaves_the_rules_and_a_successor_takes_over_without_changes(
    api: ApiServer, start_agent: AgentFactory
) -> None:
    managed_web(api)
    backend = FakeBackend()  # the same "kernel" for the old and the new agent
    old = await start_agent("n1", backend=backend)
    # The first commit done: a new table goes in as several transactions (skeleton, elements,
    # the rules that use typeof sets), and its elements show before the last one.
    await old.wait_ready()
    await eventually(lambda: table(old) == {("198.51.100.10", "10.244.1.10")})
    await old.stop()
    assert table(old) == {("198.51.100.10", "10.244.1.10")}  # rules stay: traffic keeps flowing
    transactions = len(backend.transactions)

    new = await start_agent("n1", backend=backend)
    await new.wait_ready()
    assert new.syncer is not None
    assert new.syncer.last_result is not None
    assert new.syncer.last_result.full
    assert new.syncer.last_result.plan.empty  # the first (full) sync found the table right
    assert len(backend.transactions) == transactions


# --------------------------------------------------------------------------- faults


async def test_dropped_watches_recover(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await api.wait_for_watches(3)
    api.stall_watches()
    eps = api.store.get("endpointslices", "web-a", "default")
    eps["endpoints"][0]["addresses"] = ["10.244.1.11"]
    api.store.update(eps)
    api.drop_watches()
    api.release_watches()
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.11")})


async def test_gone_relists_and_recovers(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await api.wait_for_watches(3)
    api.stall_watches()
    api.store.delete("services", "web", "default")
    api.store.create(service("db"))
    set_lb_ip(api, "db", "198.51.100.20")
    api.store.create(endpoint_slice("db", "10.244.1.30", "n1"))
    api.compact()
    api.fail_next_watches(3)
    api.drop_watches()
    api.release_watches()
    await eventually(lambda: table(agent) == {("198.51.100.20", "10.244.1.30")})
    assert agent.informers is not None
    services = agent.informers[0]
    assert services.lists >= 2  # the deletion was compacted away: only a relist can see it
    assert sum(i.restarts["expired"] for i in agent.informers) >= 3
    _status, metrics = await http_get(agent.web.url + "/metrics")
    assert 'wholeip_watch_restarts_total{reason="expired",resource="services"}' in metrics


async def test_stalled_watches_recover(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await api.wait_for_watches(3)
    api.stall_watches()
    svc = api.store.get("services", "web", "default")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.11"}]}}
    api.store.update(svc, subresource="status")
    assert agent.informers is not None
    services = agent.informers[0]
    await eventually(lambda: services.restarts["idle"] >= 1, within=FAST.idle_timeout * 5)
    api.release_watches()
    await eventually(lambda: table(agent) == {("198.51.100.11", "10.244.1.10")})


async def test_api_server_restart_recovers(api: ApiServer, start_agent: AgentFactory) -> None:
    managed_web(api)
    agent = await start_agent("n1")
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await api.stop()
    api.store.delete("endpointslices", "web-a", "default")
    api.store.create(endpoint_slice("web", "10.244.1.12", "n1", suffix="b"))
    await asyncio.sleep(0)  # let the agent notice the outage; nothing to wait for here
    await api.start()
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.12")})


async def test_a_kernel_failure_is_retried(api: ApiServer, start_agent: AgentFactory) -> None:
    from wholeip.nft.backend import Rejected

    managed_web(api)
    backend = FakeBackend()
    agent = await start_agent("n1", backend=backend)
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    backend.fail_next = Rejected("injected")
    api.store.delete("services", "web", "default")
    await eventually(lambda: table(agent) == set(), within=10)
    assert agent.reconciler is not None
    # The table is committed in the worker thread a moment before the loop books the success.
    await eventually(lambda: agent.reconciler is not None and agent.reconciler.failures == 0)
    _status, metrics = await http_get(agent.web.url + "/metrics")
    assert 'wholeip_syncs_total{result="error"} 1.0' in metrics


# --------------------------------------------------------------------------- Events


def syncs(agents: list[Agent]) -> list[int]:
    return [a.reconciler.syncs if a.reconciler is not None else 0 for a in agents]


async def wait_for_more_syncs(agents: list[Agent], before: list[int]) -> None:
    await eventually(lambda: all(now > then for now, then in zip(syncs(agents), before, strict=True)))


def events_for(api: ApiServer, name: str) -> list[dict[str, Any]]:
    return [e for e in api.store.list("events") if e["involvedObject"]["name"] == name]


async def test_problem_becomes_one_event_from_one_node(api: ApiServer, start_agent: AgentFactory) -> None:
    cluster(api)
    api.store.create(service("web"))
    set_lb_ip(api, "web", "198.51.100.10")  # no EndpointSlice: NoReadyEndpoint
    agents = [await start_agent(name) for name in ("n1", "n2")]
    await eventually(lambda: events_for(api, "web"))
    # More syncs on both nodes (unrelated changes) must not repeat the Event.
    for i in range(3):
        before = syncs(agents)
        api.store.create(service(f"other{i}", whole_ip=False))
        await wait_for_more_syncs(agents, before)
    await eventually(lambda: all(a.events is not None and a.events.backlog == 0 for a in agents))

    (event,) = events_for(api, "web")
    svc = api.store.get("services", "web", "default")
    assert event["reason"] == "NoReadyEndpoint"
    assert event["type"] == "Warning"
    assert event["count"] == 1
    assert event["involvedObject"]["uid"] == svc["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Service"
    assert event["source"] == {"component": "wholeip", "host": "n1"}  # no backend: smallest Ready node
    assert event["reportingComponent"] == "wholeip"
    assert sum(a.events.written for a in agents if a.events is not None) == 1


async def test_event_comes_from_the_backends_node_and_is_refreshed_not_repeated(
    api: ApiServer, start_agent: AgentFactory
) -> None:
    cluster(api)
    api.store.create(service("web"))
    set_lb_ip(api, "web", "198.51.100.10")
    eps = endpoint_slice("web", "10.244.2.20", "n2")
    eps["endpoints"].append({"addresses": ["10.244.2.21"], "nodeName": "n2", "conditions": {"ready": True}})
    api.store.create(eps)  # two ready endpoints: SeveralReadyEndpoints, backend on n2
    # A short resync interval: the re-emit check runs on every sync, and nothing else changes here.
    agents = [
        await start_agent(name, event_reemit_interval=0.3, settings={"max_sync_interval": 0.2}) for name in ("n1", "n2")
    ]
    await eventually(lambda: events_for(api, "web"))
    (event,) = events_for(api, "web")
    assert event["reason"] == "SeveralReadyEndpoints"
    assert event["source"]["host"] == "n2"
    name = event["metadata"]["name"]

    # The problem persists: after the re-emit interval the same Event's count grows.
    await eventually(lambda: events_for(api, "web")[0].get("count", 1) >= 2)
    (event,) = events_for(api, "web")
    assert event["metadata"]["name"] == name
    assert event["lastTimestamp"] >= event["firstTimestamp"]
    assert sum(a.events.written for a in agents if a.events is not None and a.settings.node_name == "n1") == 0


# --------------------------------------------------------------------------- the process


async def test_sigterm_stops_cleanly_with_exit_code_0_and_keeps_the_rules(
    api: ApiServer, kube_config: client.Configuration
) -> None:
    import os
    import signal

    from wholeip.agent import app

    managed_web(api)
    backend = FakeBackend()
    agent = Agent(settings("n1"), backend=backend, kube_config=kube_config, watch_options=FAST)
    main = asyncio.create_task(app._main(agent.settings, agent=agent))
    await eventually(lambda: agent.reconciler is not None and agent.reconciler.first_commit.is_set())
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(main, 10) == 0
    assert agent.task is None
    assert table(agent) == {("198.51.100.10", "10.244.1.10")}  # nothing was removed on the way out


async def test_an_unreachable_configuration_fails_start_with_exit_code_1(tmp_path: Any) -> None:
    from wholeip.agent import app

    missing = tmp_path / "no-such-kubeconfig"
    agent = Agent(settings("n1", kubeconfig=str(missing)), backend=FakeBackend())
    assert await app._main(agent.settings, agent=agent) == 1


async def test_a_flapping_endpoint_costs_bounded_syncs_and_ends_in_its_last_state(
    api: ApiServer, start_agent: AgentFactory
) -> None:
    managed_web(api)
    agent = await start_agent("n1", settings={"min_sync_interval": 0.25, "sync_burst": 2})
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    assert agent.reconciler is not None
    before = agent.reconciler.syncs
    loop = asyncio.get_running_loop()
    started = loop.time()
    flaps = 40
    for i in range(flaps):
        eps = api.store.get("endpointslices", "web-a", "default")
        eps["endpoints"][0]["conditions"] = {"ready": i % 2 == 1}  # ends ready
        api.store.update(eps)
        await asyncio.sleep(0.01)  # pacing of the writer, not a wait for the agent
    elapsed = loop.time() - started
    await eventually(lambda: table(agent) == {("198.51.100.10", "10.244.1.10")})
    await eventually(lambda: agent.reconciler is not None and agent.reconciler.pending_age() == 0)
    # The token bucket: the burst, then one sync per min_sync_interval, plus the last one.
    bound = 2 + elapsed / 0.25 + 2
    assert agent.reconciler.syncs - before <= bound, (agent.reconciler.syncs - before, bound)
    # And it settles in the last state, also when that state is "not ready".
    eps = api.store.get("endpointslices", "web-a", "default")
    eps["endpoints"][0]["conditions"] = {"ready": False}
    api.store.update(eps)
    await eventually(lambda: table(agent) == set())
