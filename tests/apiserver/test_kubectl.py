"""Unmodified kubectl against the double: apply (3-way SMP), annotate, label, patch, get, delete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from wholeip_testkit.apiserver import ApiServer

Kubectl = Callable[..., Awaitable[Any]]

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"

STACK = """
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: agent
  namespace: demo
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  labels: {app: web, tier: front}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  nodeName: n1
ports:
- {name: http, port: 8080}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: demo
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      serviceAccountName: agent
      containers:
      - name: agent
        image: example/agent:1
        env:
        - {name: MODE, value: "a"}
        - {name: LEVEL, value: info}
      - name: sidecar
        image: example/sidecar:1
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: agent
rules:
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: agent
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent}
subjects:
- {kind: ServiceAccount, name: agent, namespace: demo}
"""


async def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads((await kubectl("get", *args, "-o", "json")).out)


async def test_apply_then_reapply_is_a_three_way_strategic_merge(
    api: ApiServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    result = await kubectl("apply", "-f", str(manifest))
    for created in (
        "namespace/demo created",
        "service/web created",
        "endpointslice.discovery.k8s.io/web-abc created",
        "daemonset.apps/agent created",
        "clusterrole.rbac.authorization.k8s.io/agent created",
        "clusterrolebinding.rbac.authorization.k8s.io/agent created",
        "serviceaccount/agent created",
    ):
        assert created in result.out
    assert "warning" not in result.err.lower()

    # Something else (a controller) adds a container env var and a label; a
    # 3-way merge must keep them while applying the file's changes.
    ds = api.store.get("daemonsets.apps", "agent", "demo")
    ds["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "x"})
    ds["metadata"].setdefault("labels", {})["owner"] = "controller"
    api.store.update(ds)

    changed = (
        STACK.replace('value: "a"', 'value: "b"')
        .replace("        - {name: LEVEL, value: info}\n", "")
        .replace("image: example/sidecar:1", "image: example/sidecar:2")
    )
    manifest.write_text(changed)
    result = await kubectl("apply", "-f", str(manifest))
    assert "daemonset.apps/agent configured" in result.out
    assert "service/web unchanged" in result.out

    ds = await get_json(kubectl, "-n", "demo", "daemonset", "agent")
    containers = ds["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["agent", "sidecar"]
    assert containers[0]["env"] == [{"name": "MODE", "value": "b"}, {"name": "EXTRA", "value": "x"}]
    assert containers[1]["image"] == "example/sidecar:2"
    assert ds["metadata"]["labels"]["owner"] == "controller"
    assert ds["metadata"]["generation"] == 3

    svc = await get_json(kubectl, "-n", "demo", "service", "web")
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    assert all(30000 <= p["nodePort"] < 32768 for p in svc["spec"]["ports"])
    assert [p["protocol"] for p in svc["spec"]["ports"]] == ["TCP", "UDP"]


async def test_annotate_label_patch_and_status_subresource(api: ApiServer, kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    await kubectl("apply", "-f", str(manifest))
    ns = ("-n", "demo")

    await kubectl("annotate", *ns, "service", "web", "example.com/a=1", "example.com/b=2")
    await kubectl("annotate", *ns, "service", "web", "example.com/a-")
    await kubectl("label", *ns, "service", "web", "wholeip=yes")
    await kubectl("patch", *ns, "service", "web", "--type=merge", "-p",
                  '{"spec": {"externalTrafficPolicy": "Local"}}')  # fmt: skip
    await kubectl("patch", *ns, "service", "web", "--type=json", "-p",
                  '[{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]')  # fmt: skip
    result = await kubectl(
        "patch", *ns, "service", "web", "--subresource=status", "--type=merge", "-p",
        '{"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}',
    )  # fmt: skip
    assert "patched" in result.out
    # Status written through the main resource is ignored, as on a real server.
    result = await kubectl("patch", *ns, "service", "web", "--type=merge", "-p",
                           '{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}')  # fmt: skip
    assert "no change" in result.out

    svc = await get_json(kubectl, *ns, "service", "web")
    annotations = svc["metadata"]["annotations"]
    assert annotations["example.com/b"] == "2"
    assert "example.com/a" not in annotations
    assert svc["metadata"]["labels"]["wholeip"] == "yes"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["ports"][0]["port"] == 81
    assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.7"}]

    names = await kubectl("get", "services", "-A", "-l", "wholeip in (yes,maybe),tier", "-o", "name")
    assert names.out.split() == ["service/web"]
    names = await kubectl("get", "services", "-A", "-l", "wholeip!=yes", "-o", "name")
    assert names.out.split() == []
    names = await kubectl("get", "pods,services", "-A", "--field-selector", "metadata.name=web",
                          "-o", "name")  # fmt: skip
    assert names.out.split() == ["service/web"]
    bad = await kubectl("get", "services", "-A", "--field-selector", "spec.nope=1", check=False)
    assert bad.code != 0
    assert "field label not supported: spec.nope" in bad.err

    await kubectl("delete", *ns, "service", "web")
    missing = await kubectl("get", *ns, "service", "web", check=False)
    assert missing.code != 0
    assert 'services "web" not found' in missing.err

    # Deleting the file works although the namespace (listed first) goes first.
    result = await kubectl("delete", "-f", str(manifest), "--ignore-not-found", "--timeout=20s")
    assert 'namespace "demo" deleted' in result.out
    assert api.store.list("namespaces", namespace=None)[-1]["metadata"]["name"] != "demo"


async def test_get_watch_streams_changes(api: ApiServer, kubectl_env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), "get", "configmaps", "-n", "default", "--watch", "--output-watch-events",
        env=kubectl_env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await api.wait_for_watches(1)
        api.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}})
        cm = api.store.get("configmaps", "c1", "default")
        cm["data"] = {"k": "v"}
        api.store.update(cm)
        api.store.delete("configmaps", "c1", "default")
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()[:2] for _ in range(4)]
        assert lines == [["EVENT", "NAME"], ["ADDED", "c1"], ["MODIFIED", "c1"], ["DELETED", "c1"]]
        # A watch that ends the way a server-side timeout ends it ends `kubectl get -w`.
        assert api.drop_watches(graceful=True) == 1
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.skipif(not any(MANIFESTS.glob("**/*.yaml")), reason="manifests/ holds no YAML files yet")
async def test_project_manifests_apply(kubectl: Kubectl) -> None:
    # The install and the uninstall helper; not -R: manifests/monitoring/ holds a rule
    # file, a dashboard and a PrometheusRule (a CRD), applied with -k on their own.
    result = await kubectl("apply", "-f", str(MANIFESTS), "-f", str(MANIFESTS / "cleanup"))
    assert "created" in result.out


async def test_typed_create_commands_send_protobuf_and_get_json_back(api: ApiServer, kubectl: Kubectl) -> None:
    # `kubectl create namespace|configmap` send a protobuf body (Accept: protobuf, then JSON)
    # and do not retry in JSON after a 415: the double must decode them as a real server does.
    result = await kubectl("create", "namespace", "x", "--dry-run=none")
    assert "namespace/x created" in result.out
    result = await kubectl("create", "configmap", "cm", "-n", "x", "--from-literal=k=v", "--from-literal=e=")
    assert "configmap/cm created" in result.out
    requests = [r for r in api.audit if r.verb == "create"]
    assert [(r.resource, r.namespace) for r in requests] == [("namespaces", ""), ("configmaps", "x")]
    ns = api.store.get("namespaces", "x")
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "x"}
    assert ns["status"]["phase"] == "Active"
    cm = api.store.get("configmaps", "cm", "x")
    assert cm["data"] == {"k": "v", "e": ""}
    assert (await get_json(kubectl, "namespace", "x"))["metadata"]["name"] == "x"


async def test_auth_can_i_answers_as_a_server_without_authorization(api: ApiServer, kubectl: Kubectl) -> None:
    """``kubectl auth can-i`` (the typed client: protobuf reviews) gets "yes", as from a server
    with ``--authorization-mode=AlwaysAllow``; reviews are answered, never stored or listed."""
    assert (await kubectl("auth", "can-i", "list", "services")).out.strip() == "yes"
    sa = "--as=system:serviceaccount:wholeip-system:wholeip"
    assert (await kubectl("auth", "can-i", "watch", "endpointslices.discovery.k8s.io", sa)).out.strip() == "yes"
    rules = (await kubectl("auth", "can-i", "--list")).out.splitlines()
    assert rules[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    assert rules[1].split() == ["*.*", "[]", "[]", "[*]"]
    listed = await kubectl("get", "selfsubjectaccessreviews", check=False)
    assert listed.code != 0
    assert "MethodNotAllowed" in listed.err


async def test_kubectls_typed_create_commands_for_rbac_and_service_accounts(kubectl: Kubectl) -> None:
    """``kubectl create serviceaccount|role|clusterrole|rolebinding|clusterrolebinding|secret``
    send protobuf bodies; the objects arrive as a real server stores them."""
    await kubectl("create", "serviceaccount", "agent")
    await kubectl("create", "role", "r", "--verb=get,list", "--resource=pods,daemonsets.apps")
    await kubectl("create", "clusterrole", "c", "--verb=get", "--non-resource-url=/healthz")
    await kubectl("create", "rolebinding", "rb", "--role=r", "--serviceaccount=default:agent")
    await kubectl("create", "clusterrolebinding", "b", "--clusterrole=view", "--user=alice")
    await kubectl("create", "secret", "generic", "s", "--from-literal=k=v")
    assert (await get_json(kubectl, "serviceaccount", "agent"))["metadata"]["name"] == "agent"
    assert (await get_json(kubectl, "role", "r"))["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list"]},
    ]
    assert (await get_json(kubectl, "clusterrole", "c"))["rules"] == [
        {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}
    ]
    binding = await get_json(kubectl, "rolebinding", "rb")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "agent", "namespace": "default"}]
    cluster = await get_json(kubectl, "clusterrolebinding", "b")
    assert cluster["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    secret = await get_json(kubectl, "secret", "s")
    assert (secret["type"], secret["data"]) == ("Opaque", {"k": "dg=="})
