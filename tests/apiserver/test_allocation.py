"""ClusterIP and NodePort allocation as a real API server does it (pkg/registry/core/service)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from wholeip_testkit.apiserver import ApiServer

Kubectl = Callable[..., Awaitable[Any]]

SVC = "/api/v1/namespaces/default/services"
V4 = ipaddress.ip_network("10.96.0.0/12")
V6 = ipaddress.ip_network("fd00:10:96::/112")


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


def service(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"name": "http", "port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


async def test_kubectl_create_service_loadbalancer_gets_ip_and_node_port(api: ApiServer, kubectl: Kubectl) -> None:
    # kubectl's typed command sends the Service in protobuf.
    await kubectl("create", "service", "loadbalancer", "web", "--tcp=80:8080", "--tcp=53:53")
    svc = json.loads((await kubectl("get", "service", "web", "-o", "json")).out)
    spec = svc["spec"]
    ip = ipaddress.ip_address(spec["clusterIP"])
    assert ip in V4
    assert ip not in (V4.network_address, V4.broadcast_address)
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert (spec["ipFamilies"], spec["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert spec["allocateLoadBalancerNodePorts"] is True
    ports = [p["nodePort"] for p in spec["ports"]]
    assert all(30000 <= p <= 32767 for p in ports)
    assert len(set(ports)) == 2
    assert [p["targetPort"] for p in spec["ports"]] == [8080, 53]
    assert "healthCheckNodePort" not in spec  # externalTrafficPolicy defaults to Cluster
    columns = "IP:.spec.clusterIP,NODEPORT:.spec.ports[0].nodePort"
    table = (await kubectl("get", "service", "web", "-o", f"custom-columns={columns}")).out
    assert table.split() == ["IP", "NODEPORT", spec["clusterIP"], str(ports[0])]

    # kubectl expose-style NodePort with a given port; the same port is refused next time.
    await kubectl("create", "service", "nodeport", "np", "--tcp=81:81", "--node-port=31000")
    again = await kubectl("create", "service", "nodeport", "np2", "--tcp=82:82", "--node-port=31000", check=False)
    assert again.code != 0
    assert (
        'Service "np2" is invalid: spec.ports[0].nodePort: Invalid value: 31000: provided port is already allocated'
        in (again.err)
    )
    # Deleting frees the port.
    await kubectl("delete", "service", "np")
    await kubectl("create", "service", "nodeport", "np2", "--tcp=82:82", "--node-port=31000")


async def test_given_cluster_ips_are_checked(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        code, dns = await call(s, "POST", SVC, service("dns", clusterIP="10.96.0.10"))
        assert code == 201
        assert (dns["spec"]["clusterIPs"], dns["spec"]["ipFamilies"]) == (["10.96.0.10"], ["IPv4"])
        # Dynamic allocation keeps off the lower band static choices like .10 come from.
        code, dyn = await call(s, "POST", SVC, service("dyn"))
        assert int(ipaddress.ip_address(dyn["spec"]["clusterIP"])) - int(V4.network_address) >= 256

        code, body = await call(s, "POST", SVC, service("dup", clusterIP="10.96.0.10"))
        assert (code, body["reason"]) == (422, "Invalid")
        assert body["message"] == (
            'Service "dup" is invalid: spec.clusterIPs: Invalid value: ["10.96.0.10"]: '
            "failed to allocate IP 10.96.0.10: provided IP is already allocated"
        )
        assert body["details"]["causes"] == [
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: ["10.96.0.10"]: '
                "failed to allocate IP 10.96.0.10: provided IP is already allocated",
                "field": "spec.clusterIPs",
            }
        ]
        for outside in ("192.168.1.1", "10.96.0.0", "10.111.255.255"):  # network and broadcast too
            code, body = await call(s, "POST", SVC, service("out", clusterIP=outside))
            assert code == 422, outside
            assert body["message"].endswith(
                f"failed to allocate IP {outside}: the provided network does not match the current range"
            )
        code, body = await call(s, "POST", SVC, service("bad", clusterIP="10.96.0.300"))
        assert code == 422
        assert "spec.clusterIPs[0]" in body["message"]

        # Deleting frees the IP; an update without clusterIP keeps it; changing it is refused.
        code, _ = await call(s, "DELETE", f"{SVC}/dns")
        code, dns = await call(s, "POST", SVC, service("dns", clusterIP="10.96.0.10"))
        assert code == 201
        put = service("dns")
        code, kept = await call(s, "PUT", f"{SVC}/dns", put)
        assert (code, kept["spec"]["clusterIP"]) == (200, "10.96.0.10")
        code, body = await call(s, "PUT", f"{SVC}/dns", service("dns", clusterIP="10.96.0.11"))
        assert code == 422
        assert "spec.clusterIPs[0]: Invalid value" in body["message"]
        assert "may not change once set" in body["message"]


async def test_headless_dual_stack_and_external_name(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        code, headless = await call(s, "POST", SVC, service("headless", clusterIP="None"))
        spec = headless["spec"]
        assert (spec["clusterIP"], spec["clusterIPs"], spec["ipFamilies"], spec["ipFamilyPolicy"]) == (
            "None", ["None"], ["IPv4"], "SingleStack",
        )  # fmt: skip
        bare = service("bare", clusterIP="None")
        del bare["spec"]["selector"]
        code, spec = await call(s, "POST", SVC, bare)
        assert (spec["spec"]["ipFamilyPolicy"], spec["spec"]["ipFamilies"]) == ("RequireDualStack", ["IPv4", "IPv6"])

        code, dual = await call(s, "POST", SVC, service("dual", ipFamilyPolicy="PreferDualStack"))
        v4, v6 = map(ipaddress.ip_address, dual["spec"]["clusterIPs"])
        assert v4 in V4
        assert v6 in V6
        assert dual["spec"]["clusterIP"] == str(v4)
        assert dual["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
        code, six = await call(
            s, "POST", SVC, service("six", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"])
        )
        assert [ipaddress.ip_address(ip).version for ip in six["spec"]["clusterIPs"]] == [6, 4]
        code, only6 = await call(s, "POST", SVC, service("only6", clusterIP="fd00:10:96::a"))
        assert (code, only6["spec"]["ipFamilies"]) == (201, ["IPv6"])
        code, body = await call(s, "POST", SVC, service("two", clusterIPs=["10.96.0.20", "fd00:10:96::20"]))
        assert code == 422
        assert "must be 'RequireDualStack' or 'PreferDualStack'" in body["message"]

        code, ext = await call(s, "POST", SVC, service("ext", type="ExternalName", externalName="example.com"))
        assert code == 201
        assert not {"clusterIP", "clusterIPs", "ipFamilies"} & set(ext["spec"])


async def test_single_stack_cluster_refuses_dual_stack() -> None:
    async with ApiServer(service_cidrs=["10.0.0.0/24"]) as api, aiohttp.ClientSession(api.url) as s:
        code, body = await call(s, "POST", SVC, service("d", ipFamilyPolicy="RequireDualStack"))
        assert (code, body["message"]) == (
            422,
            'Service "d" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
            "this cluster is not configured for dual-stack services",
        )
        code, body = await call(s, "POST", SVC, service("six", ipFamilies=["IPv6"]))
        assert code == 422
        assert 'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster' in body["message"]
        code, prefer = await call(s, "POST", SVC, service("p", ipFamilyPolicy="PreferDualStack"))
        assert code == 201
        assert ipaddress.ip_address(prefer["spec"]["clusterIP"]) in ipaddress.ip_network("10.0.0.0/24")
        assert prefer["spec"]["ipFamilies"] == ["IPv4"]


async def test_node_ports_and_health_check_node_port(api: ApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as s:
        ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        code, lb = await call(
            s, "POST", SVC, service("lb", type="LoadBalancer", externalTrafficPolicy="Local", ports=ports)
        )
        assert code == 201
        node_ports = {p["nodePort"] for p in lb["spec"]["ports"]}
        assert len(node_ports) == 1  # one port number, two protocols: one nodePort
        health = lb["spec"]["healthCheckNodePort"]
        assert 30000 <= health <= 32767
        assert health not in node_ports

        # NodePort + Local: no health check port (the real NeedsHealthCheck is LoadBalancer only).
        code, np = await call(s, "POST", SVC, service("np", type="NodePort", externalTrafficPolicy="Local"))
        assert "healthCheckNodePort" not in np["spec"]

        for taken in (health, next(iter(node_ports))):
            code, body = await call(
                s, "POST", SVC, service("x", type="NodePort", ports=[{"port": 1, "nodePort": taken}])
            )
            assert code == 422
            assert body["message"] == (
                f'Service "x" is invalid: spec.ports[0].nodePort: Invalid value: {taken}: '
                "provided port is already allocated"
            )
        code, body = await call(s, "POST", SVC, service("x", type="NodePort", ports=[{"port": 1, "nodePort": 80}]))
        assert code == 422
        assert body["message"].endswith(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        )
        code, body = await call(s, "POST", SVC, service("x", ports=[{"port": 1, "nodePort": 30500}]))
        assert code == 422
        assert "may not be used when `type` is 'ClusterIP'" in body["message"]

        # Local -> Cluster drops the health check port; the port is free again.
        lb["spec"]["externalTrafficPolicy"] = "Cluster"
        code, changed = await call(s, "PUT", f"{SVC}/lb", lb)
        assert code == 200
        assert "healthCheckNodePort" not in changed["spec"]
        assert changed["spec"]["ports"] == lb["spec"]["ports"]  # nodePorts kept
        code, _ = await call(s, "POST", SVC, service("y", type="NodePort", ports=[{"port": 1, "nodePort": health}]))
        assert code == 201

        # LoadBalancer -> ClusterIP drops the node ports it had and frees them.
        code, plain = await call(s, "PUT", f"{SVC}/lb", {**changed, "spec": {**changed["spec"], "type": "ClusterIP"}})
        assert code == 200
        assert all("nodePort" not in p for p in plain["spec"]["ports"])
        assert plain["spec"]["clusterIP"] == lb["spec"]["clusterIP"]
        code, _ = await call(
            s, "POST", SVC, service("z", type="NodePort", ports=[{"port": 1, "nodePort": next(iter(node_ports))}])
        )
        assert code == 201


async def test_restore_forgets_and_restores_allocations(api: ApiServer) -> None:
    api.store.create(service("a", clusterIP="10.96.0.50", type="NodePort", ports=[{"port": 1, "nodePort": 30050}]))
    backup = api.backup()
    await api.restore(None)
    fresh = api.store.create(
        service("b", clusterIP="10.96.0.50", type="NodePort", ports=[{"port": 1, "nodePort": 30050}])
    )
    assert fresh["spec"]["clusterIP"] == "10.96.0.50"
    await api.restore(backup)
    assert api.store.get("servicecidrs.networking.k8s.io", "kubernetes")["spec"]["cidrs"] == [str(V4), str(V6)]
    async with aiohttp.ClientSession(api.url) as s:
        code, body = await call(s, "POST", SVC, service("c", clusterIP="10.96.0.50"))
        assert code == 422
        assert "provided IP is already allocated" in body["message"]
