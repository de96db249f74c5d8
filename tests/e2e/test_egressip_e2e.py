"""Egress IP end to end (docs/datapath.md row 18): real agents (``wholeip run``) in the node
namespaces, the API server double serving MetalLB's ServiceL2Status as a custom resource
(created with a real kubectl from MetalLB's CRD), real traffic.

The agents start after the CRD exists (installing it later works too, see tests/agent/test_discovery_agent.py). Then:
the holder named by the ServiceL2Status SNATs, the other node steers its member there;
the agents report it in their metrics; a deleted ip rule and a deleted route of the
steering are back within one resync; the status moves to the other node and the egress
follows; a Service whose holder nobody names gets a Warning Event ``EgressNodeUnknown``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from wholeip.core.steering import DEFAULT_RULE_PRIORITY, DEFAULT_TABLE_BASE
from wholeip.names import EGRESS_IP_ANNOTATION
from wholeip_testkit.apiserver import SERVICE_L2_STATUS_CRD
from wholeip_testkit.sandbox import Sandbox, wait_for
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

EGRESS_IP = ("203.0.113.50", "2001:db8:100::50")
RESYNC = 2.0
"""The agents' --max-sync-interval here: a full sync (and the routing's repair) at least this often."""


@pytest.fixture(scope="module")
def sb(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(
        workdir=tmp_path_factory.mktemp("egress"), nodes=(), agent_args=("--max-sync-interval", str(RESYNC))
    ) as sandbox:
        sandbox.kubectl("apply", "-f", str(SERVICE_L2_STATUS_CRD))
        sandbox.kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/servicel2statuses.metallb.io")
        sandbox.start_agent("n1")
        sandbox.start_agent("n2")
        sandbox.wait_ready()
        yield sandbox


def egress_service(name: str) -> dict[str, object]:
    svc = Sandbox.service_manifest(name)
    svc["metadata"]["annotations"] = {EGRESS_IP_ANNOTATION: "true"}  # type: ignore[index]
    return svc


def slices(name: str) -> list[dict[str, object]]:
    """Both pods ready endpoints of ``name``, both families."""
    a, b = Sandbox.slices_manifest(name, "pod_a"), Sandbox.slices_manifest(name, "pod_b")
    for sa, sb_ in zip(a, b, strict=True):
        sa["endpoints"] += sb_["endpoints"]
    return a


def set_holder(sb: Sandbox, service: str, node: str) -> None:
    """What MetalLB's speaker does: the ServiceL2Status of the Service names the announcing node."""
    name = f"l2-{service}"
    sb.apply(
        [
            {
                "apiVersion": "metallb.io/v1beta1",
                "kind": "ServiceL2Status",
                "metadata": {"name": name, "namespace": "default", "labels": {"metallb.io/node": node}},
                "spec": {},
            }
        ]
    )
    status = {"status": {"node": node, "serviceName": service, "serviceNamespace": "default"}}
    sb.kubectl("patch", "servicel2status", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    for family in (0, 1):
        sb.t.route_external(EGRESS_IP[family], node)  # type: ignore[arg-type]


def leaves_with_egress_ip(sb: Sandbox, pod: str, family: int, *, within: float = 15) -> None:
    def ok() -> bool:
        r = exchange(sb.t, client=pod, server="ext", addr=sb.t.addr("ext", 4 if family == 0 else 6), timeout=1.0)  # type: ignore[arg-type]
        return r.ok and r.server_peer == EGRESS_IP[family]

    wait_for(ok, within=within, what=f"{pod} -> outside with {EGRESS_IP[family]}")


def our_rules(sb: Sandbox, node: str, family: int) -> list[str]:
    out = sb.t.exec(node, ["ip", f"-{family}", "rule", "show"]).stdout  # type: ignore[arg-type]
    return [line for line in out.splitlines() if line.startswith(f"{DEFAULT_RULE_PRIORITY}:")]


def test_egress_ip_from_metallb_status_steered_repaired_and_moved(sb: Sandbox) -> None:
    sb.apply([egress_service("mail"), *slices("mail")])
    sb.set_load_balancer_ips("mail", EGRESS_IP)
    set_holder(sb, "mail", "n1")
    for family in (0, 1):
        leaves_with_egress_ip(sb, "pod_a", family)
        leaves_with_egress_ip(sb, "pod_b", family)
    wait_for(
        lambda: sb.metrics("n2").get('wholeip_egress_pods{role="steered"}') == 2.0,
        within=10,
        what="n2 counts its member's two addresses as steered",
    )
    assert sb.metrics("n1").get('wholeip_egress_pods{role="snat"}') == 4.0
    assert sb.metrics("n1").get("wholeip_egress_services") == 1.0
    assert sb.metrics("n1").get('wholeip_egress_pods{role="steered"}') == 0.0

    # A deleted rule (IPv4) and a deleted route (IPv6) are back within one resync.
    (rule,) = our_rules(sb, "n2", 4)
    table = re.search(r"lookup (\d+)", rule)
    assert table is not None
    assert int(table.group(1)) > DEFAULT_TABLE_BASE
    priority, _, selector = rule.partition(":")
    # check=True proves the deletions took effect; the agent may put them back before we could look
    # (a resync can fall between the two commands), so their absence is not asserted afterwards.
    sb.t.exec("n2", ["ip", "-4", "rule", "del", "priority", priority, *selector.split()], check=True)
    sb.t.exec("n2", ["ip", "-6", "route", "flush", "table", table.group(1)], check=True)
    wait_for(lambda: our_rules(sb, "n2", 4) == [rule], within=RESYNC * 3, what="the rule repaired")
    wait_for(
        lambda: "default via" in sb.t.exec("n2", ["ip", "-6", "route", "show", "table", table.group(1)]).stdout,
        within=RESYNC * 3,
        what="the route repaired",
    )
    for family in (0, 1):
        leaves_with_egress_ip(sb, "pod_b", family, within=5)

    # MetalLB moves the IP to n2: the egress follows, now pod A is the steered one.
    set_holder(sb, "mail", "n2")
    for family in (0, 1):
        leaves_with_egress_ip(sb, "pod_a", family)
        leaves_with_egress_ip(sb, "pod_b", family)
    wait_for(lambda: not our_rules(sb, "n2", 4), within=10, what="n2 steers nothing any more")
    assert our_rules(sb, "n1", 4)

    sb.kubectl("delete", "service", "mail")
    wait_for(lambda: not our_rules(sb, "n1", 4) and not our_rules(sb, "n1", 6), within=10, what="n1's rules gone")
    r = exchange(sb.t, client="pod_a", server="ext", addr=sb.t.addr("ext", 4), proto="udp", timeout=1.0)
    assert r.server_peer == sb.t.addr("pod_a", 4)  # its own address again (no masquerade here)


def test_a_service_without_a_holder_gets_a_warning_event(sb: Sandbox) -> None:
    sb.apply([egress_service("orphan"), *slices("orphan")])
    sb.set_load_balancer_ips("orphan", ("203.0.113.60",))

    def warned() -> bool:
        out = sb.kubectl("get", "events", "-o", "json", "--field-selector", "involvedObject.name=orphan").stdout
        return any(
            e.get("reason") == "EgressNodeUnknown" and e.get("type") == "Warning" for e in json.loads(out)["items"]
        )

    wait_for(warned, within=20, what="a Warning Event EgressNodeUnknown on Service orphan")
    sb.kubectl("delete", "service", "orphan")
