"""Least privilege, derived: the RBAC in manifests/ grants exactly what the agent calls.

A real :class:`~wholeip.agent.app.Agent` (FakeBackend for the kernel) runs against the
API server double through a scenario that reaches every API call in its code:

* start: discovery of the ServiceCIDR and ServiceL2Status APIs, the first list of
  Services, EndpointSlices, Nodes, ServiceCIDRs and MetalLB's ServiceL2Statuses (a CRD
  here; several pages each), and their watches;
* a watch whose resourceVersion was compacted away: ``410 Gone``, then a relist;
* a Service with a problem: an Event is created, re-emitted by patching its
  count, and created anew when the server has expired it (the patch gets 404);
* shutdown.

Every request the double receives is mapped to ``(apiGroup, resource, verb)``
the way the Kubernetes authorizer does (``RequestInfoFactory`` in
k8s.io/apiserver: the URL and the method only, no resource table), checked
against the double's own audit log, and the set of calls must equal the set of
grants in every ClusterRole and Role in manifests/: a call without a grant
would be a 403 in a real cluster, a grant never used is excess privilege.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio import client, config

from wholeip import __version__
from wholeip.agent.app import Agent
from wholeip.kube.informer import WatchOptions
from wholeip.names import WHOLE_IP_ANNOTATION
from wholeip.nft.fake import FakeBackend
from wholeip.settings import Settings
from wholeip_testkit.apiserver import SERVICE_L2_STATUS_CRD, ApiServer

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

Triple = tuple[str, str, str]
"""(apiGroup, resource or "resource/subresource", verb), as in an RBAC rule.
Non-resource requests are ("", "nonResourceURL:" + path, verb)."""

NON_RESOURCE = "nonResourceURL:"


# --------------------------------------------------------------------------- the authorizer's view


def _parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool, which the apiserver uses for ``?watch=``."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean {value!r}")


@dataclass(frozen=True, slots=True)
class Seen:
    """One HTTP request as it reached the server."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]


def authorizer_attributes(method: str, path: str, query: Iterable[tuple[str, str]]) -> Triple:
    """What RBAC is asked for a request: k8s.io/apiserver ``RequestInfoFactory.NewRequestInfo``.

    Needs no resource table: ``/api/v1/namespaces/ns/events/x`` is resource ``events``
    in namespace ``ns``; ``/api/v1/namespaces/ns/status`` the namespace's subresource.
    """
    parts = [p for p in path.strip("/").split("/") if p]
    verb_of_method = {
        "POST": "create",
        "GET": "get",
        "HEAD": "get",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return ("", NON_RESOURCE + path, method.lower())
    if rest[0] in ("watch", "proxy"):  # the deprecated /api/v1/watch/... form
        if len(rest) < 2:
            raise AssertionError(f"bad request path {path}")
        verb, rest = rest[0], rest[1:]
    else:
        verb = verb_of_method.get(method, "")
        assert verb, f"no verb for {method} {path}"
    if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in ("status", "finalize"):
        rest = rest[2:]  # namespace name consumed; what follows is a resource of its own
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        watch = [v for k, v in query if k == "watch"]
        verb = "watch" if watch and _parse_bool(watch[-1]) else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return (group, f"{resource}/{subresource}" if subresource else resource, verb)


def test_authorizer_attributes_follow_the_kubernetes_rules() -> None:
    # The mapping itself, on the shapes of request any client may send.
    cases: list[tuple[str, str, list[tuple[str, str]], Triple]] = [
        ("GET", "/api/v1/services", [], ("", "services", "list")),
        ("GET", "/api/v1/services", [("watch", "true")], ("", "services", "watch")),
        ("GET", "/api/v1/nodes", [("watch", "1")], ("", "nodes", "watch")),
        ("GET", "/api/v1/nodes", [("watch", "false")], ("", "nodes", "list")),
        ("GET", "/api/v1/watch/nodes", [], ("", "nodes", "watch")),
        ("GET", "/api/v1/nodes/n1", [], ("", "nodes", "get")),
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices", [], ("discovery.k8s.io", "endpointslices", "list")),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/d/endpointslices/x",
            [],
            ("discovery.k8s.io", "endpointslices", "get"),
        ),
        ("POST", "/api/v1/namespaces/default/events", [], ("", "events", "create")),
        ("PATCH", "/api/v1/namespaces/default/events/e", [], ("", "events", "patch")),
        ("PUT", "/api/v1/namespaces/default/events/e", [], ("", "events", "update")),
        ("DELETE", "/api/v1/namespaces/default/events/e", [], ("", "events", "delete")),
        ("DELETE", "/api/v1/namespaces/default/events", [], ("", "events", "deletecollection")),
        ("PUT", "/api/v1/namespaces/default/services/web/status", [], ("", "services/status", "update")),
        ("GET", "/api/v1/namespaces/default", [], ("", "namespaces", "get")),
        ("PUT", "/api/v1/namespaces/default/finalize", [], ("", "namespaces/finalize", "update")),
        ("GET", "/api", [], ("", "nonResourceURL:/api", "get")),
        ("GET", "/version", [], ("", "nonResourceURL:/version", "get")),
    ]
    for method, path, query, expected in cases:
        assert authorizer_attributes(method, path, query) == expected, (method, path, query)


class RecordingApiServer(ApiServer):
    """The double, also keeping the raw method, path and query of every request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Seen] = []

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, tuple(request.query.items())))
        return await super()._dispatch(request)


# --------------------------------------------------------------------------- the manifests' grants


def granted() -> set[Triple]:
    """Every (group, resource, verb) granted by a ClusterRole or Role in manifests/."""
    out: set[Triple] = set()
    roles = 0
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
                continue
            roles += 1
            assert "aggregationRule" not in doc, f"{path}: an aggregated role grants what others add"
            for rule in doc.get("rules") or []:
                # resourceNames would narrow a grant below what this test can compare.
                assert set(rule) <= {"apiGroups", "resources", "verbs", "nonResourceURLs"}, rule
                for verb in rule["verbs"]:
                    assert verb != "*", f"{path}: wildcard verb in {rule}"
                    for url in rule.get("nonResourceURLs") or []:
                        assert "*" not in url, f"{path}: wildcard URL in {rule}"
                        out.add(("", NON_RESOURCE + url, verb))
                    for group in rule.get("apiGroups") or []:
                        for resource in rule.get("resources") or []:
                            assert "*" not in (group, resource), f"{path}: wildcard in {rule}"
                            out.add((group, resource, verb))
    assert roles, "no ClusterRole or Role in manifests/"
    return out


# --------------------------------------------------------------------------- the scenario

OPTIONS = WatchOptions(
    watch_timeout=30.0,
    idle_timeout=1.0,
    connect_timeout=2.0,
    list_timeout=5.0,
    backoff_base=0.05,
    backoff_max=0.3,
    page_size=2,  # every first list and relist takes several pages (``continue``)
)


async def eventually(check: Callable[[], Any], *, within: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)
    return result


def _node(name: str, address: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _service(api: ApiServer, name: str, lb_ip: str | None) -> None:
    api.store.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": {WHOLE_IP_ANNOTATION: "true"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        }
    )
    if lb_ip is not None:
        svc = api.store.get("services", name, "default")
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
        api.store.update(svc, subresource="status")


def _slice(api: ApiServer, service: str, pod_ip: str, node_name: str) -> None:
    api.store.create(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-a",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [pod_ip], "nodeName": node_name, "conditions": {"ready": True}}],
            "ports": [{"port": 80, "protocol": "TCP"}],
        }
    )


def _ingress(agent: Agent) -> set[Any]:
    doc = agent.engine.observe()
    return set(doc.elements.get("ingress4", ())) if doc is not None else set()


def _events(api: ApiServer, service: str) -> list[dict[str, Any]]:
    return [e for e in api.store.list("events") if e["involvedObject"]["name"] == service]


async def _run_scenario(api: RecordingApiServer, kube_config: client.Configuration) -> list[dict[str, str]]:
    """Drive the agent through every call it can make; the audit log over the double's HTTP endpoint."""
    for i in range(3):
        api.store.create(_node(f"n{i + 1}", f"192.0.2.{11 + i}", f"10.244.{i + 1}.0/24"))
    api.store.create(yaml.safe_load(SERVICE_L2_STATUS_CRD.read_text()))
    api.store.create(
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "ServiceL2Status",
            "metadata": {"name": "l2-web0", "namespace": "default"},
            "status": {"node": "n2", "serviceName": "web0", "serviceNamespace": "default"},
        }
    )
    for i in range(3):
        _service(api, f"web{i}", f"198.51.100.{10 + i}")
        _slice(api, f"web{i}", f"10.244.1.{10 + i}", "n1")
    # No EndpointSlice: NoReadyEndpoint. With no backend the smallest Ready node, n1, reports it.
    _service(api, "lonely", "198.51.100.99")

    settings = Settings(
        node_name="n1",
        port=0,
        min_sync_interval=0.02,
        sync_burst=2,
        max_sync_interval=0.2,  # the re-emit check runs on every sync
        health_timeout=10.0,
    )
    agent = Agent(
        settings,
        backend=FakeBackend(),
        kube_config=kube_config,
        watch_options=OPTIONS,
        event_reemit_interval=0.3,
        event_retry_interval=0.1,
    )
    async with agent:
        await agent.wait_ready(within=10)
        assert agent.informers is not None
        assert all(i.lists == 1 for i in agent.informers)
        await api.wait_for_watches(5)  # and the ServiceCIDRs' and ServiceL2Statuses'

        # Events: created, then the persisting problem patches the same one's count.
        (first,) = await eventually(lambda: _events(api, "lonely"), what="an Event for the problem")
        await eventually(
            lambda: [e.get("count", 1) >= 2 for e in _events(api, "lonely")] == [True], what="the Event's count patched"
        )
        # The server expired the Event (its TTL): the next patch gets 404, and a new one is created.
        api.store.delete("events", first["metadata"]["name"], "default")
        await eventually(
            lambda: [e["metadata"]["name"] != first["metadata"]["name"] for e in _events(api, "lonely")] == [True],
            what="a new Event after the old one expired",
        )

        # 410 Gone: changes while the watches are stalled, then the history is compacted, so
        # every informer's resourceVersion is too old when it watches again: each relists.
        api.stall_watches()
        api.store.create(_node("n4", "192.0.2.14", "10.244.4.0/24"))
        _service(api, "db", "198.51.100.20")
        _slice(api, "db", "10.244.1.30", "n1")
        api.compact()
        api.drop_watches()
        api.release_watches()
        await eventually(
            lambda: all(i.lists >= 2 and i.restarts["expired"] >= 1 for i in agent.informers or ()),
            what="every informer relisted after 410",
        )
        await eventually(lambda: ("198.51.100.20", "10.244.1.30") in _ingress(agent), what="the relist in the table")
        await api.wait_for_watches(5)
        task = agent.task
    # Shutdown is part of the scenario (it must not need any call either).
    assert task is not None
    assert task.cancelled()

    async with aiohttp.ClientSession() as session, session.get(f"{api.url}/_double/audit") as response:
        assert response.status == 200
        audit: list[dict[str, str]] = await response.json()
    return audit


@pytest.fixture
async def api() -> AsyncIterator[RecordingApiServer]:
    server = RecordingApiServer(bookmark_interval=0.2, history=1000)
    async with server:
        yield server


async def test_cluster_role_grants_exactly_what_the_agent_calls(api: RecordingApiServer, tmp_path: Path) -> None:
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
    )
    audit = await _run_scenario(api, cfg)

    # Only the agent spoke to the server (the scenario writes through the store).
    assert {r["userAgent"] for r in audit} == {f"wholeip/{__version__}"}
    # Our own reading of each raw request agrees with the double's audit log, request by request.
    derived = [authorizer_attributes(s.method, s.path, s.query) for s in api.seen]
    from_audit = [
        (
            r["apiGroup"],
            (f"{r['resource']}/{r['subresource']}" if r["subresource"] else r["resource"])
            if r["resource"]
            else NON_RESOURCE + r["path"],
            r["verb"],
        )
        for r in audit
    ]
    assert derived == from_audit
    # The scenario did reach list pages beyond the first (``continue``) and relists after 410.
    assert any(k == "continue" for s in api.seen for k, _ in s.query)

    used = set(derived)
    grants = granted()
    missing = sorted(used - grants)
    excess = sorted(grants - used)
    assert not missing, f"the agent calls these without a grant (403 in a real cluster): {missing}"
    assert not excess, f"granted but never called (excess privilege): {excess}"
