"""``kubectl get`` prints the server's columns (server-side printing, :mod:`.tables`), as
against kube-apiserver; without them kubectl falls back to NAME and AGE."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.apiserver.conftest import Kubectl
from tests.apiserver.test_kubectl import STACK

from wholeip_testkit.apiserver import ApiServer
from wholeip_testkit.apiserver.tables import human_duration, wanted

CRD = Path(__file__).resolve().parents[2] / "testkit" / "wholeip_testkit" / "crds" / "metallb.io_servicel2statuses.yaml"


def rows(text: str) -> list[list[str]]:
    """kubectl's table, split on its column gaps (two spaces or more)."""
    return [[cell for cell in line.split("  ") if cell.strip()] for line in text.strip().splitlines()]


def cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in row] for row in rows(text)]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (599, "9m59s"), (600, "10m"),
        (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (3 * 3600 + 300, "3h5m"), (8 * 3600, "8h"), (47 * 3600, "47h"),
        (48 * 3600, "2d"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (729 * 86400, "729d"), (730 * 86400, "2y"),
        (731 * 86400, "2y1d"), (8 * 365 * 86400, "8y"),
    ],
)  # fmt: skip
def test_ages_read_as_kubectl_shows_them_from_a_real_server(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_a_table_is_sent_when_kubectl_asks_for_one_first() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert wanted(kubectl) == "v1"
    assert wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    assert wanted("application/json") is None
    assert wanted("application/json, application/json;as=Table;v=v1;g=meta.k8s.io") is None
    assert wanted("application/json;as=Table;v=v2;g=meta.k8s.io,application/json") is None


async def test_kubectl_get_prints_the_columns_of_a_real_server(
    api: ApiServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    await kubectl("apply", "-f", str(manifest))
    ns = ("-n", "demo")
    svc = cells((await kubectl("get", *ns, "services", "-o", "wide")).out)
    assert svc[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    name, kind, cluster_ip, external, ports, age, selector = svc[1]
    assert (name, kind, external, selector) == ("web", "LoadBalancer", "<pending>", "app=web")
    assert cluster_ip.startswith("10.96.")
    assert age.endswith("s")
    node_ports = json.loads((await kubectl("get", *ns, "service", "web", "-o", "json")).out)["spec"]["ports"]
    assert ports == ",".join(f"{p['port']}:{p['nodePort']}/{p['protocol']}" for p in node_ports)
    await kubectl("patch", *ns, "service", "web", "--subresource=status", "--type=merge", "-p",
                  '{"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}')  # fmt: skip
    one = cells((await kubectl("get", *ns, "service", "web")).out)
    assert one[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert one[1][3] == "203.0.113.7"
    labelled = cells((await kubectl("get", *ns, "services", "--show-labels")).out)
    assert labelled[0][-1] == "LABELS"
    assert labelled[1][-1] == "app=web,tier=front"  # (from the rows' object metadata)

    slices = cells((await kubectl("get", *ns, "endpointslices")).out)
    assert slices[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert slices[1][:4] == ["web-abc", "IPv4", "8080", "10.244.1.5"]
    daemonsets = cells((await kubectl("get", *ns, "daemonsets")).out)
    assert daemonsets[0] == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"]
    roles = cells((await kubectl("get", "clusterroles", "agent")).out)
    assert roles[0] == ["NAME", "CREATED AT"]  # (the default table of a kind without a printer)
    bindings = cells((await kubectl("get", "clusterrolebindings", "agent")).out)
    assert (bindings[0], bindings[1][:2]) == (["NAME", "ROLE", "AGE"], ["agent", "ClusterRole/agent"])
    await kubectl("create", "secret", "generic", "token", "-n", "demo", "--from-literal=a=b")
    secrets = cells((await kubectl("get", *ns, "secrets", "token")).out)
    assert (secrets[0], secrets[1][:3]) == (["NAME", "TYPE", "DATA", "AGE"], ["token", "Opaque", "1"])
    # (kubectl create secret sends protobuf: the value arrives as a real server stores it)
    assert (await kubectl("get", *ns, "secret", "token", "-o", "jsonpath={.data.a}")).out == "Yg=="
    cidrs = cells((await kubectl("get", "servicecidrs")).out)
    assert cidrs[0] == ["NAME", "CIDRS", "AGE"]
    sorted_wide = cells((await kubectl("get", *ns, "services", "--sort-by=.metadata.name", "-o", "wide")).out)
    assert sorted_wide[0] == svc[0]  # (--sort-by asks for the rows' whole objects)
    assert (sorted_wide[1][:5], sorted_wide[1][-1]) == (one[1][:5], "app=web")

    # Custom resources: their CRD's printer columns, then AGE.
    await kubectl("apply", "-f", str(CRD))
    await kubectl("wait", "--for=condition=Established", "--timeout=10s", "crd/servicel2statuses.metallb.io")
    await kubectl("apply", "-f", "-", stdin=(
        "apiVersion: metallb.io/v1beta1\nkind: ServiceL2Status\nmetadata: {name: l2-web, namespace: demo}\n"
    ))  # fmt: skip
    await kubectl("patch", *ns, "servicel2statuses", "l2-web", "--subresource=status", "--type=merge", "-p",
                  '{"status": {"node": "n1", "serviceName": "web", "serviceNamespace": "demo"}}')  # fmt: skip
    l2 = cells((await kubectl("get", *ns, "servicel2statuses")).out)
    assert l2[0] == ["NAME", "ALLOCATED NODE", "SERVICE NAME", "SERVICE NAMESPACE", "AGE"]
    assert l2[1][:4] == ["l2-web", "n1", "web", "demo"]


async def test_kubectl_get_watch_prints_rows_as_they_change(api: ApiServer, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    await kubectl("apply", "-f", str(manifest))
    watching = asyncio.ensure_future(
        kubectl("get", "-n", "demo", "services", "-w", "--request-timeout=3s", check=False)
    )
    await api.wait_for_watches(1)
    await kubectl("patch", "-n", "demo", "service", "web", "--subresource=status", "--type=merge", "-p",
                  '{"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.8"}]}}}')  # fmt: skip
    out = (await watching).out
    table = cells(out)
    assert table[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]  # (one header)
    assert [row[3] for row in table[1:]] == ["<pending>", "203.0.113.8"], out


async def test_events_print_as_kubectl_shows_them(api: ApiServer, kubectl: Kubectl) -> None:
    await kubectl("create", "namespace", "demo")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "demo"},
        "involvedObject": {"kind": "Service", "name": "web", "namespace": "demo"},
        "reason": "ExternalIPConflict",
        "message": "external IP 203.0.113.7 is already claimed",
        "type": "Warning",
        "source": {"component": "wholeip", "host": "n1"},
        "count": 3,
    }
    await kubectl("create", "-f", "-", stdin=json.dumps(event))
    table = cells((await kubectl("get", "-n", "demo", "events")).out)
    assert table[0] == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert table[1][1:] == [
        "Warning",
        "ExternalIPConflict",
        "service/web",
        "external IP 203.0.113.7 is already claimed",
    ]
