"""End to end: real agents (``wholeip run``) in node namespaces, the API server double,
real kubectl, real traffic. Every step of a Service's life is asserted by traffic
within a deadline, never by sleeping.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from wholeip_testkit.sandbox import POD_IP, Sandbox, wait_for
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

EXT = ("203.0.113.10", "2001:db8:100::10")


@pytest.fixture(scope="module")
def sb(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(workdir=tmp_path_factory.mktemp("sandbox")) as sandbox:
        sandbox.wait_ready()
        yield sandbox


def reaches(sb: Sandbox, pod: str, family: int = 0, *, within: float = 15) -> None:
    """Until an outside client reaches ``pod`` through the external IP (and sees the IP reply)."""

    def ok() -> bool:
        r = exchange(sb.t, client="ext", server=pod, addr=EXT[family], proto="udp", timeout=1.0)  # type: ignore[arg-type]
        return r.ok and r.client_reply_from == EXT[family]

    wait_for(ok, within=within, what=f"outside -> {EXT[family]} -> {pod}")


def dark(sb: Sandbox, pod: str = "pod_a") -> bool:
    r = exchange(sb.t, client="ext", server=pod, addr=EXT[0], proto="udp", timeout=1.0)  # type: ignore[arg-type]
    return r.server_peer is None


def test_service_lifecycle(sb: Sandbox) -> None:
    # Created, with IPs, but not annotated: nothing happens.
    sb.apply([sb.service_manifest("vm"), *sb.slices_manifest("vm", "pod_a")])
    sb.set_load_balancer_ips("vm", EXT)
    assert dark(sb)
    # Annotated: both families reach pod A.
    sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP=true")
    reaches(sb, "pod_a", 0)
    reaches(sb, "pod_a", 1)
    egress = exchange(sb.t, client="pod_a", server="ext", addr=sb.t.addr("ext", 4), proto="udp")
    assert egress.server_peer == EXT[0]
    # The pod is replaced by one on the other node (new IP): the IP follows.
    for family in (4, 6):
        sb.t.route_external(EXT[0 if family == 4 else 1], "n2")
    sb.apply(sb.slices_manifest("vm", "pod_b"))
    sb.wait_mapping(EXT[0], POD_IP["pod_b"][0])
    reaches(sb, "pod_b", 0)
    reaches(sb, "pod_b", 1)
    for family in (4, 6):
        sb.t.route_external(EXT[0 if family == 4 else 1], "n1")
    # Back to pod A, then de-annotated: the mapping is gone everywhere.
    sb.apply(sb.slices_manifest("vm", "pod_a"))
    reaches(sb, "pod_a", 0)
    sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP-")
    sb.wait_mapping(EXT[0], None)
    assert dark(sb)
    # Annotated again, then the Service deleted.
    sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP=true")
    reaches(sb, "pod_a", 0)
    sb.kubectl("delete", "service", "vm")
    sb.wait_mapping(EXT[0], None)
    sb.wait_mapping(EXT[1], None)
    assert dark(sb)


@pytest.mark.parametrize("fault", ["drop-watches", "fail-watches?count=3", "stall-watches"])
def test_agents_recover_from_watch_faults(sb: Sandbox, fault: str) -> None:
    name = "f-" + fault.split("?")[0]
    sb.apply([sb.service_manifest(name), *sb.slices_manifest(name, "pod_a")])
    assert sb.api_call("POST", f"/_double/{fault}") is not None
    try:
        # A change made while the watches are broken must still arrive.
        sb.set_load_balancer_ips(name, EXT)
        sb.kubectl("annotate", "service", name, "networking.cozystack.io/wholeIP=true")
        if fault == "stall-watches":
            # The double stalls every watch, reconnects included, until released: the rules
            # stay as last known meanwhile, and the change arrives once watches flow again.
            assert sb.ingress("n1").get(EXT[0]) is None
        else:
            sb.wait_mapping(EXT[0], POD_IP["pod_a"][0], within=30)
    finally:
        sb.api_call("POST", "/_double/release-watches")
    sb.wait_mapping(EXT[0], POD_IP["pod_a"][0], within=30)
    reaches(sb, "pod_a", 0)
    sb.kubectl("delete", "service", name)
    sb.wait_mapping(EXT[0], None, within=30)


def test_restart_keeps_rules_and_commits_nothing_new(sb: Sandbox) -> None:
    sb.apply([sb.service_manifest("keep"), *sb.slices_manifest("keep", "pod_a")])
    sb.set_load_balancer_ips("keep", EXT)
    sb.kubectl("annotate", "service", "keep", "networking.cozystack.io/wholeIP=true")
    reaches(sb, "pod_a", 0)
    assert sb.kill_agent("n1", signal.SIGKILL) != 0
    # With the agent dead the rules are still there and traffic flows.
    reaches(sb, "pod_a", 0, within=3)
    sb.start_agent("n1")
    sb.wait_ready()
    reaches(sb, "pod_a", 0, within=3)
    sb.kubectl("delete", "service", "keep")
    sb.wait_mapping(EXT[0], None)
