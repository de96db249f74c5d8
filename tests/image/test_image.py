"""The image: built by ``make image``'s script on the minimal debootstrap base, and run
the way manifests/30-daemonset.yaml runs it.

The run test starts the sandbox (API server double, two netns nodes, no agents of its
own) and the image with podman in node n1's network namespace (the pod's
``hostNetwork``), with the DaemonSet's securityContext translated to podman flags (a
read-only root, every capability dropped but NET_ADMIN, no_new_privs, uid 0, /tmp a
small tmpfs), its environment (NODE_NAME and the rest, downward-API fields resolved
as the kubelet would) and its args, plus a mounted kubeconfig for the double. It checks
/readyz, maps the demo's Service, sends real TCP from outside to the whole IP, then
stops the container and checks that the table stays and keeps passing traffic.

The base is the debootstrap minbase on purpose (BASE_IMAGE=debootstrap): it has no
netbase, no /etc/protocols, nothing the Containerfile does not install by name.

Skipped, with the reason, only where podman cannot run at all. Slow the first time on
a machine (debootstrap, about a minute and a half, plus the build); podman keeps the
base and the layers, so later runs rebuild only what changed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from wholeip import __version__
from wholeip_testkit.sandbox import NODE_IP, POD_IP, Sandbox, SandboxError, wait_for
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "manifests" / "30-daemonset.yaml"
IMAGE = "localhost/wholeip:test"
EXT = "203.0.113.10"
NODE = "n1"
# This kind of machine has no CAP_SYS_RESOURCE: podman cannot raise limits past the
# current hard ones.
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192"]


def _podman() -> list[str]:
    # runc rather than Debian's crun, which refuses hybrid cgroups (as hack/image.sh).
    return ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]


@pytest.fixture(scope="module")
def podman() -> list[str]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (hack/bootstrap.sh installs it)")
    info = subprocess.run([*_podman(), "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    return _podman()


@pytest.fixture(scope="module")
def image(podman: list[str]) -> str:
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "hack" / "image.sh")],
        env={**os.environ, "IMAGE": IMAGE, "BASE_IMAGE": "debootstrap"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, f"hack/image.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"\nimage {IMAGE} built in {time.monotonic() - started:.0f}s: {proc.stdout.strip().splitlines()[-1]}")
    return IMAGE


def _in_image(podman: list[str], image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*podman, "run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", argv[0], image, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- what is in the image ---------------------------------------------------------------


def test_the_image_holds_the_product_and_what_it_needs(podman: list[str], image: str) -> None:
    version = _in_image(podman, image, "wholeip", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"wholeip {__version__}"

    check = (
        "import importlib.util as u, shutil, nftables, wholeip.cli.main\n"
        "for m in ('wholeip_testkit', 'wholeip_bench', 'pytest', 'hypothesis', 'tests'):\n"
        "    assert u.find_spec(m) is None, m\n"
        "for tool in ('gcc', 'cc', 'c++', 'ld', 'make', 'pip'):\n"
        "    assert shutil.which(tool) is None, tool\n"
        "for tool in ('nft', 'conntrack'):\n"
        "    assert shutil.which(tool), tool\n"
        "assert 'tcp' in open('/etc/protocols').read()\n"
        "print(nftables.__file__)\n"
    )
    result = _in_image(podman, image, "python3", "-c", check)
    assert result.returncode == 0, result.stderr
    # The binding is Debian's, paired with Debian's libnftables1.
    assert result.stdout.strip().startswith("/usr/lib/python3/dist-packages/nftables/")

    found = _in_image(
        podman, image, "sh", "-c", "find / -xdev \\( -name 'wholeip_testkit*' -o -name 'wholeip_bench*' \\)"
    )
    assert found.stdout.strip() == ""


# --- run as the DaemonSet runs it --------------------------------------------------------------


def _agent_container() -> tuple[dict[str, Any], dict[str, Any]]:
    (ds,) = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _security_flags(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The container's securityContext and volumes as podman flags; fails on anything
    this translation does not know (so a change to the DaemonSet is not silently lost)."""
    assert pod["hostNetwork"] is True
    sc = container["securityContext"]
    assert set(sc) <= {
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "privileged",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
        "seccompProfile",
    }, sc
    assert sc["privileged"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}  # podman's default profile
    flags = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    flags += [f"--cap-drop={c}" for c in sc["capabilities"]["drop"]]
    flags += [f"--cap-add={c}" for c in sc["capabilities"]["add"]]
    if sc["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    if sc["readOnlyRootFilesystem"]:
        # Only what the pod mounts is writable: no tmpfs of podman's own on /run etc.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert volume["emptyDir"]["medium"] == "Memory", volume
        size = volume["emptyDir"]["sizeLimit"].removesuffix("Mi")
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size}m"]
    return flags


def _env(container: dict[str, Any], node: str) -> list[str]:
    """The container's env with the downward API resolved as the kubelet would."""
    fields = {"spec.nodeName": node, "status.hostIP": NODE_IP[node]}
    flags = []
    for var in container["env"]:
        value = var["value"] if "value" in var else fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        flags += ["--env", f"{var['name']}={value}"]
    return flags


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(nodes=()) as sb:
        yield sb


def _tcp_from_outside(sb: Sandbox) -> tuple[bool, str]:
    port = random.randint(20000, 60000)
    r = exchange(sb.t, client="ext", server="pod_a", addr=EXT, proto="tcp", port=port)
    outside = Topology.addr("ext", 4)
    ok = bool(r.ok and r.server_peer == outside and r.client_reply_from == EXT)
    return ok, f"port {port}: ok={r.ok} server saw {r.server_peer}, reply from {r.client_reply_from}"


def test_the_image_runs_as_the_daemonset_does(podman: list[str], image: str, sandbox: Sandbox) -> None:
    sb = sandbox
    pod, container = _agent_container()
    name = f"wholeip-test-{sb.t.prefix}"
    kubeconfig = "/etc/wholeip/kubeconfig"
    argv = [
        *podman,
        "run",
        "--detach",
        "--name",
        name,
        *ULIMITS,
        "--network",
        f"ns:{sb.t.netns_path(NODE)}",
        *_security_flags(pod, container),
        *_env(container, NODE),
        "--env",
        f"KUBECONFIG={kubeconfig}",
        "--volume",
        f"{sb.kubeconfig}:{kubeconfig}:ro",
        image,
        *container["args"],
    ]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr

    def logs() -> str:
        out = subprocess.run([*podman, "logs", name], capture_output=True, text=True, timeout=30, check=False)
        return out.stdout + out.stderr

    try:
        try:
            wait_for(lambda: sb.probe(NODE, "/readyz")[0] == 200, within=90, what="the container's /readyz")
        except SandboxError as exc:
            raise AssertionError(f"{exc}\n{logs()[-4000:]}") from exc
        # The capabilities the agent really has: NET_ADMIN only (bit 12 of CapEff).
        status = subprocess.run(
            [*podman, "exec", name, "grep", "-E", "^(CapEff|NoNewPrivs)", "/proc/1/status"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        caps = dict(line.split(":\t") for line in status.splitlines())
        assert int(caps["CapEff"], 16) == 1 << 12, status
        assert caps["NoNewPrivs"].strip() == "1", status
        # The read-only root: nothing outside /tmp can be written.
        touch = subprocess.run([*podman, "exec", name, "touch", "/opt/x"], capture_output=True, text=True, timeout=30)
        assert touch.returncode != 0
        assert "Read-only file system" in touch.stderr

        # The demo's Service, and real traffic to its whole IP from outside.
        sb.apply([sb.service_manifest("vm"), *sb.slices_manifest("vm", "pod_a")])
        sb.set_load_balancer_ips("vm", [EXT])
        sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP=true")
        pod_ip = POD_IP["pod_a"][0]
        wait_for(lambda: sb.ingress(NODE).get(EXT) == pod_ip, within=30, what=f"{NODE}: {EXT} -> {pod_ip}")
        ok, detail = _tcp_from_outside(sb)
        assert ok, detail

        metrics = sb.probe(NODE, "/metrics")[1]
        assert 'wholeip_build_info{python_version="3.11.' in metrics
        assert f'version="{__version__}"' in metrics

        # Stop as the kubelet does (SIGTERM, then the grace period).
        grace = str(pod["terminationGracePeriodSeconds"])
        stopped = subprocess.run([*podman, "stop", "-t", grace, name], capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        state = subprocess.run(
            [*podman, "inspect", "--format", "{{.State.ExitCode}}", name],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        log = logs()
        assert state == "0", log[-4000:]
        assert "Could not resolve" not in log
        assert "table left in place" in log
        # The table stays, and keeps passing traffic with no agent running.
        assert sb.ingress(NODE).get(EXT) == pod_ip
        ok, detail = _tcp_from_outside(sb)
        assert ok, detail
    finally:
        subprocess.run([*podman, "rm", "--force", name], capture_output=True, timeout=60, check=False)
