"""``--lb-to-clusterip``: reading LoadBalancer Services, their elements, the flag.

The index's side (incremental == fresh, one Service at a time) is in
``tests/unit/test_index.py`` and ``tests/unit/test_properties.py``; real traffic in
``tests/nft/test_lb_to_clusterip.py``.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from wholeip.cli.main import build_parser
from wholeip.cli.run import settings_from_args
from wholeip.core.elements import compile_table, lb_redirect_element
from wholeip.core.index import build_state
from wholeip.core.objects import parse_lb_service
from wholeip.core.ruleset import SKELETON
from wholeip.settings import ModelSettings

NODES = [
    {
        "kind": "Node",
        "metadata": {"name": n},
        "spec": {"podCIDRs": [f"10.244.{i}.0/24", f"fd00:10:244:{i}::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.1{i}"}]},
    }
    for i, n in ((1, "n1"), (2, "n2"))
]
ON = ModelSettings(lb_to_clusterip=True)


def svc(**spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Service",
        "metadata": {"namespace": "ns", "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8:5::1"}]}},
    }
    out["spec"].update(spec)
    return out


def lb_elements(services: list[dict[str, Any]], settings: ModelSettings = ON, node: str = "n1") -> dict[str, Any]:
    state = build_state(services=services, endpoint_slices=[], nodes=NODES, node_name=node, settings=settings)
    doc = compile_table(state, node_name=node)
    return {k: set(v) for k, v in doc.elements.items() if k.startswith(("lbclusterip", "localpods"))}


def test_every_port_of_every_lb_ip_goes_to_the_cluster_ip_of_its_family() -> None:
    assert lb_elements([svc()]) == {
        "lbclusterip4": {(("198.51.100.1", "tcp", 443), "10.96.0.10"), (("198.51.100.1", "udp", 53), "10.96.0.10")},
        "lbclusterip6": {
            (("2001:db8:5::1", "tcp", 443), "fd00:96::10"),
            (("2001:db8:5::1", "udp", 53), "fd00:96::10"),
        },
        "localpods4": {"10.244.1.0/24"},
        "localpods6": {"fd00:10:244:1::/64"},
    }


def test_the_other_nodes_table_holds_its_own_pod_cidrs() -> None:
    assert lb_elements([svc()], node="n2")["localpods4"] == {"10.244.2.0/24"}


def test_the_flag_off_gives_empty_sets() -> None:
    assert lb_elements([svc()], settings=ModelSettings()) == {
        "lbclusterip4": set(),
        "lbclusterip6": set(),
        "localpods4": set(),
        "localpods6": set(),
    }


def test_the_skeleton_is_the_same_with_the_flag_on_or_off() -> None:
    on = build_state(services=[svc()], endpoint_slices=[], nodes=NODES, node_name="n1", settings=ON)
    off = build_state(services=[svc()], endpoint_slices=[], nodes=NODES, node_name="n1", settings=ModelSettings())
    assert compile_table(on, node_name="n1").skeleton is compile_table(off, node_name="n1").skeleton is SKELETON


def test_a_service_we_map_one_to_one_is_left_out() -> None:
    managed = svc()
    managed["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    labelled = copy.deepcopy(svc())
    labelled["metadata"]["name"] = "other"
    labelled["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    assert lb_elements([managed, labelled])["lbclusterip4"] == set()


def test_only_the_family_with_a_cluster_ip_is_redirected() -> None:
    got = lb_elements([svc(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10"])])
    assert got["lbclusterip6"] == set()
    assert len(got["lbclusterip4"]) == 2


def test_guarded_addresses_are_never_redirected() -> None:
    ingress = [{"ip": ip} for ip in ("127.0.0.1", "10.244.1.5", "10.96.0.99", "192.0.2.11", "fe80::1", "198.51.100.7")]
    service = svc()
    service["status"]["loadBalancer"]["ingress"] = ingress
    assert {k[0] for k, _ in lb_elements([service])["lbclusterip4"]} == {"198.51.100.7"}


def test_two_services_sharing_an_ip_each_keep_their_ports_the_oldest_wins_a_port_both_list() -> None:
    older = svc(ports=[{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}])
    younger = svc(
        clusterIP="10.96.0.20", clusterIPs=["10.96.0.20"], ports=[{"port": 53, "protocol": "UDP"}, {"port": 53}]
    )
    younger["metadata"] |= {"name": "dns", "creationTimestamp": "2026-02-01T00:00:00Z"}
    assert lb_elements([younger, older])["lbclusterip4"] == {
        (("198.51.100.1", "tcp", 80), "10.96.0.10"),
        (("198.51.100.1", "udp", 53), "10.96.0.10"),
        (("198.51.100.1", "tcp", 53), "10.96.0.20"),
    }


@pytest.mark.parametrize(
    "change",
    [
        {"type": "ClusterIP"},
        {"type": "NodePort"},
        {"clusterIP": "None", "clusterIPs": ["None"]},
        {"clusterIP": "not-an-ip", "clusterIPs": []},
        {"ports": [{"port": 0}, {"port": "80"}, {"port": True}, {"port": 80, "protocol": "ICMP"}]},
        {"ports": []},
    ],
)
def test_what_cannot_be_redirected_is_skipped_quietly(change: dict[str, Any]) -> None:
    assert parse_lb_service(svc(**change)) is None
    state = build_state(services=[svc(**change)], endpoint_slices=[], nodes=NODES, node_name="n1", settings=ON)
    assert state.lb_redirects == ()
    assert state.problems == ()  # not our Service: no Event on it


def test_parse_reads_cluster_ip_alone_and_keeps_one_per_family() -> None:
    info = parse_lb_service(svc(clusterIPs=None, clusterIP="10.96.0.10"))
    assert info is not None
    assert info.cluster_ips == (ipaddress.ip_address("10.96.0.10"),)
    info = parse_lb_service(svc(clusterIPs=["10.96.0.10", "10.96.0.11", "fd00:96::1"]))
    assert info is not None
    assert [str(i) for i in info.cluster_ips] == ["10.96.0.10", "fd00:96::1"]
    assert info.ports == (("tcp", 443), ("udp", 53))


def test_spec_external_ips_are_never_redirected() -> None:
    service = svc(externalIPs=["198.51.100.9"])
    got = lb_elements([service], settings=ModelSettings(lb_to_clusterip=True, allow_spec_external_ips=True))
    assert {k[0] for k, _ in got["lbclusterip4"]} == {"198.51.100.1"}


def test_the_element_is_keyed_by_address_protocol_and_port() -> None:
    assert lb_redirect_element("198.51.100.1", "tcp", 80, "10.96.0.10") == (
        "lbclusterip4",
        (("198.51.100.1", "tcp", 80), "10.96.0.10"),
    )
    assert lb_redirect_element("2001:db8::1", "sctp", 9, "fd00::1")[0] == "lbclusterip6"


@pytest.mark.parametrize("command", ["render", "diff", "apply"])
def test_the_offline_commands_take_the_flag(command: str) -> None:
    args = build_parser().parse_args([command, "-f", "x.yaml", "--node-name", "n1", "--lb-to-clusterip", "true"])
    assert args.lb_to_clusterip is True
    assert build_parser().parse_args([command, "-f", "x.yaml"]).lb_to_clusterip is False


def test_run_takes_the_flag_and_its_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["run", "--node-name", "n1", "--lb-to-clusterip", "yes"])
    assert settings_from_args(args).model.lb_to_clusterip is True
    monkeypatch.setenv("WHOLEIP_LB_TO_CLUSTERIP", "true")
    args = build_parser().parse_args(["run", "--node-name", "n1"])
    assert settings_from_args(args).model.lb_to_clusterip is True
    assert ModelSettings().lb_to_clusterip is False
