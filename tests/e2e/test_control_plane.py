"""An external IP equal to the API server's address (issue 15 item 1), with real agents.

In the sandbox the API server double listens on 192.0.2.1, the router's address on the
node network; the agents' kubeconfig names it. Mapped, that address would redirect the
nodes' own traffic to the API server (the output hook) to a pod, and every agent would
lose its watches for good. It is refused with an Event naming the reason, and the agents
stay connected: a Service created afterwards is still mapped on both nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from wholeip_testkit.sandbox import API_HOST, NODE_IP, POD_IP, Sandbox, wait_for

pytestmark = pytest.mark.kernel

EXT = ("203.0.113.10", "2001:db8:100::10")


@pytest.fixture(scope="module")
def sb(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(workdir=tmp_path_factory.mktemp("sandbox")) as sandbox:
        sandbox.wait_ready()
        yield sandbox


def events_of(sb: Sandbox, service: str) -> list[dict[str, object]]:
    out = sb.kubectl("get", "events", "-o", "json", "--field-selector", f"involvedObject.name={service}").stdout
    return list(json.loads(out).get("items", []))


def test_the_api_servers_address_is_refused_and_the_agents_stay_connected(sb: Sandbox) -> None:
    assert API_HOST not in NODE_IP.values()  # not a Node address: only the new guard refuses it
    thief = sb.service_manifest("thief")
    thief["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    sb.apply([thief, *sb.slices_manifest("thief", "pod_a")])
    sb.set_load_balancer_ips("thief", [API_HOST])

    def refused() -> list[dict[str, object]]:
        return [e for e in events_of(sb, "thief") if e.get("reason") == "ExternalIPRefused"]

    [event] = wait_for(refused, within=30, what="the ExternalIPRefused Event")
    assert event["type"] == "Warning"
    assert event["message"] == (
        f"external IP refused: {API_HOST} is the API server's address"
        " (the API server address the agent is configured with)"
    )
    for node in ("n1", "n2"):
        assert API_HOST not in sb.ingress(node)
    # Still connected: a Service made afterwards is mapped everywhere, and both agents are ready.
    vm = sb.service_manifest("vm")
    vm["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    sb.apply([vm, *sb.slices_manifest("vm", "pod_b")])
    sb.set_load_balancer_ips("vm", EXT)
    sb.wait_mapping(EXT[0], POD_IP["pod_b"][0], within=30)
    for node in ("n1", "n2"):
        assert sb.probe(node, "/readyz")[0] == 200
        assert sb.probe(node, "/healthz")[0] == 200
