"""The bare topology, without any NAT: what the datapath tests build on.

If one of these fails, every datapath result is meaningless, so they check
the plumbing the contract assumes: host-gw pod routing, node -> pod (kubelet
probes), the outside reaching node addresses, both families, and that the
router really has no route to pod CIDRs (so NAT tests cannot pass by accident).
"""

from __future__ import annotations

import pytest

from wholeip_testkit.topology import ADDRESSES, Family, Topology, list_namespaces
from wholeip_testkit.traffic import exchange, ping

pytestmark = pytest.mark.kernel

FAMILIES: tuple[Family, ...] = (4, 6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pod_to_pod_across_nodes(topo: Topology, family: Family, proto: str) -> None:
    for client, server in (("pod_a", "pod_b"), ("pod_b", "pod_a")):
        r = exchange(
            topo,
            client=client,  # type: ignore[arg-type]
            server=server,  # type: ignore[arg-type]
            addr=ADDRESSES[server][family],  # type: ignore[index]
            proto=proto,  # type: ignore[arg-type]
        )
        assert r.ok, r
        assert r.server_peer == ADDRESSES[client][family]  # type: ignore[index]
        assert r.client_local == ADDRESSES[client][family]  # type: ignore[index]
        assert r.client_reply_from == ADDRESSES[server][family]  # type: ignore[index]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("node", ["n1", "n2"])
def test_node_to_pod(topo: Topology, family: Family, node: str) -> None:
    r = exchange(topo, client=node, server="pod_a", addr=ADDRESSES["pod_a"][family])  # type: ignore[arg-type]
    assert r.ok, r
    assert r.server_peer == ADDRESSES[node][family]  # type: ignore[index]
    assert r.client_reply_from == ADDRESSES["pod_a"][family]


@pytest.mark.parametrize("family", FAMILIES)
def test_outside_to_node(topo: Topology, family: Family) -> None:
    r = exchange(topo, client="ext", server="n1", addr=ADDRESSES["n1"][family], proto="udp")
    assert r.ok, r
    assert r.server_peer == ADDRESSES["ext"][family]
    assert r.client_reply_from == ADDRESSES["n1"][family]
    p = ping(topo, "ext", ADDRESSES["n2"][family])
    assert p.ok, p
    assert p.reply_from == ADDRESSES["n2"][family]


@pytest.mark.parametrize("family", FAMILIES)
def test_pod_egress_without_nat_gets_no_answer(topo: Topology, family: Family) -> None:
    """The router has no route back to pod CIDRs, like the internet."""
    p = ping(topo, "pod_a", ADDRESSES["ext"][family], timeout=0.5)
    assert not p.ok


def test_teardown_removes_everything(kernel_ok: None) -> None:
    with Topology.create() as t:
        prefix = t.prefix
        assert sum(ns.startswith(f"{prefix}-") for ns in list_namespaces()) == 6
    assert not [ns for ns in list_namespaces() if ns.startswith(f"{prefix}-")]


def test_the_third_pod_only_when_asked_for_and_wired_like_pod_a(kernel_ok: None) -> None:
    """``pod_c=True`` adds a seventh namespace: pod_c on n1, which reaches its neighbour
    pod_a and pod_b across the nodes in both families, and whose veth on n1 has the
    strict ``rp_filter`` and proxy ARP of pod_a's."""
    with Topology.create(pod_c=True) as t:
        prefix = t.prefix
        assert sum(ns.startswith(f"{prefix}-") for ns in list_namespaces()) == 7
        for family in FAMILIES:
            for server in ("pod_a", "pod_b"):
                r = exchange(t, client="pod_c", server=server, addr=ADDRESSES[server][family])  # type: ignore[arg-type]
                assert r.ok, (family, server, r)
                assert r.server_peer == ADDRESSES["pod_c"][family]
                assert r.client_reply_from == ADDRESSES[server][family]  # type: ignore[index]
        sysctl = t.exec("n1", ["sysctl", "-n", "net.ipv4.conf.vpc.rp_filter", "net.ipv4.conf.vpc.proxy_arp"])
        assert sysctl.stdout.split() == ["1", "1"], sysctl
    assert not [ns for ns in list_namespaces() if ns.startswith(f"{prefix}-")]
