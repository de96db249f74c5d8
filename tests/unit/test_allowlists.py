"""Operator allowlists: external CIDRs and namespaces (issue 5, guards)."""

from __future__ import annotations

import ipaddress

import pytest
from tests.unit.test_model import build, eps, node, reasons, svc

from wholeip.cli.flags import model_settings
from wholeip.cli.main import build_parser
from wholeip.settings import ModelSettings

POOL = ModelSettings(allowed_external_cidrs=(ipaddress.ip_network("203.0.113.0/24"),))


def test_external_ip_outside_the_allowed_cidrs_is_refused_and_others_still_map() -> None:
    state = build(
        node(),
        svc("inside", ips=("203.0.113.10",)),
        eps("inside", ("10.244.1.10",)),
        svc("outside", ips=("198.51.100.7",)),
        eps("outside", ("10.244.1.11",)),
        settings=POOL,
    )
    assert [(str(m.external_ip), m.service.name) for m in state.mappings] == [("203.0.113.10", "inside")]
    [problem] = [p for p in state.problems if p.reason == "ExternalIPRefused"]
    assert problem.ref.name == "outside"
    assert "outside the allowed external CIDRs (203.0.113.0/24)" in problem.message


def test_without_allowlist_any_public_address_maps() -> None:
    state = build(node(), svc("outside", ips=("198.51.100.7",)), eps("outside", ("10.244.1.11",)))
    assert len(state.mappings) == 1
    assert "ExternalIPRefused" not in reasons(state)


def test_namespace_allowlist() -> None:
    settings = ModelSettings(allowed_namespaces=frozenset({"vms"}))
    state = build(
        node(),
        svc("a", namespace="vms", ips=("203.0.113.10",)),
        eps("a", ("10.244.1.10",), namespace="vms"),
        svc("b", namespace="tenant", ips=("203.0.113.11",)),
        eps("b", ("10.244.1.11",), namespace="tenant"),
        svc("c", namespace="tenant", ips=("203.0.113.12",), annotations={}),  # not asking: no Event
        settings=settings,
    )
    assert [m.service.namespace for m in state.mappings] == ["vms"]
    refused = [p for p in state.problems if p.reason == "NamespaceNotAllowed"]
    assert [(p.ref.namespace, p.ref.name) for p in refused] == [("tenant", "b")]
    assert [r.name for r in state.managed_services] == ["a"]


def test_cli_flags_and_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(
        [
            *("render", "--allowed-external-cidrs", "203.0.113.0/24,2001:db8::/64"),
            *("--allowed-namespaces", "vms, lb", "--node-name", "n1", "-f", "-"),
        ]
    )
    s = model_settings(args)
    assert [str(n) for n in s.allowed_external_cidrs] == ["203.0.113.0/24", "2001:db8::/64"]
    assert s.allowed_namespaces == frozenset({"vms", "lb"})
    monkeypatch.setenv("WHOLEIP_ALLOWED_NAMESPACES", "x")
    s = model_settings(build_parser().parse_args(["render", "--node-name", "n1", "-f", "-"]))
    assert s.allowed_namespaces == frozenset({"x"})


def test_endpoint_outside_the_pod_networks_is_ignored_with_a_problem() -> None:
    # A hand-written EndpointSlice pointing at a Node (or another network): CVE-2021-25740.
    state = build(
        node(),  # pod network 10.244.1.0/24
        svc("web", ips=("203.0.113.10",)),
        eps("web", ("192.0.2.11", "10.244.1.10")),
        svc("rogue", ips=("203.0.113.11",)),
        eps("rogue", ("192.0.2.11",)),
    )
    assert [(m.service.name, str(m.pod_ip)) for m in state.mappings] == [("web", "10.244.1.10")]
    outside = [(p.ref.name, p.reason) for p in state.problems if p.reason == "EndpointOutsidePodNetwork"]
    assert outside == [("rogue", "EndpointOutsidePodNetwork"), ("web", "EndpointOutsidePodNetwork")]
    assert "NoReadyEndpoint" in reasons(state)  # rogue has nothing left


def test_unknown_pod_networks_do_not_filter_endpoints() -> None:
    bare = {"kind": "Node", "metadata": {"name": "n1"}, "spec": {}, "status": {}}
    state = build(bare, svc("web", ips=("203.0.113.10",)), eps("web", ("192.0.2.50",)))
    assert [str(m.pod_ip) for m in state.mappings] == ["192.0.2.50"]
