"""Probes and metrics listen on the configured address only, checked with real sockets.

The agent runs in the host network namespace, so a server on ``0.0.0.0`` would
answer on every address of the node, external ones included. Two checks:

* in this process, an Agent with ``bind_address="127.0.0.1"``: the kernel's
  socket table (``/proc/net/tcp``, ``tcp6``) holds exactly one listening socket of
  ours on its port, on 127.0.0.1, and other local addresses (127.0.0.2, ``::1``)
  refuse connections on that port;
* ``wholeip run --bind-address X`` as a process in a fresh network namespace with
  two non-loopback interfaces (IPv4 and IPv6): the namespace's only listening
  socket is X, and every other address of the namespace refuses.

Each "refused" is paired with a control: a wildcard listener on the same addresses
is reachable, so a refusal means "not listening there", never "not routable".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from agentkit import FAST
from kubernetes_asyncio import client

from wholeip.agent.app import Agent
from wholeip.nft.fake import FakeBackend
from wholeip.settings import Settings

if TYPE_CHECKING:
    from wholeip_testkit.netns import Netns

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def _decode(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(tcp: str, tcp6: str, *, inodes: set[str] | None = None) -> set[tuple[str, int]]:
    """(address, port) of every listening socket in these tables (only ``inodes`` if given)."""
    out = set()
    for text in (tcp, tcp6):
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN or (inodes is not None and fields[9] not in inodes):
                continue
            address, port = fields[1].split(":")
            out.add((_decode(address), int(port, 16)))
    return out


def own_socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                out.add(target[len("socket:[") : -1])
    return out


def own_listening() -> set[tuple[str, int]]:
    """This process's listening sockets, from its network namespace's tables."""
    tcp, tcp6 = (Path(f"/proc/net/{t}") for t in ("tcp", "tcp6"))
    return listening(tcp.read_text(), tcp6.read_text() if tcp6.exists() else "", inodes=own_socket_inodes())


def connect(address: str, port: int) -> str:
    """``connected`` or ``refused`` (blocking; runs in whatever network namespace the thread is in)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        return "connected"


def wildcard_listener() -> socket.socket:
    """A dual-stack listener on every address (the control): its port is free to connect to."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen()
    return sock


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- in this process


async def test_agent_listens_on_its_bind_address_only(kube_config: client.Configuration) -> None:
    settings = Settings(node_name="n1", bind_address="127.0.0.1", port=0, min_sync_interval=0.02)
    others = ["127.0.0.2"] + (["::1"] if _has_ipv6_loopback() else [])
    async with Agent(settings, backend=FakeBackend(), kube_config=kube_config, watch_options=FAST) as agent:
        assert agent.web is not None
        port = agent.web.port
        assert {entry for entry in own_listening() if entry[1] == port} == {("127.0.0.1", port)}

        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status in (200, 503)  # an answer from the probe server either way

        for address in others:
            assert await asyncio.to_thread(connect, address, port) == "refused", address
        # Control: the same addresses do reach a listener on all addresses.
        with wildcard_listener() as control:
            control_port = control.getsockname()[1]
            for address in [*others, "127.0.0.1"]:
                assert await asyncio.to_thread(connect, address, control_port) == "connected", address


# --------------------------------------------------------------------------- wholeip run in a namespace

PORT = 9765
INTERFACES = {
    "wip-a": ("192.0.2.1/24", "fd00:a::1/64"),
    "wip-b": ("198.51.100.1/24", "fd00:b::1/64"),
}
ADDRESSES = ["127.0.0.1", "::1"] + [a.split("/")[0] for pair in INTERFACES.values() for a in pair]


def _ip(ns: Netns, *argv: str) -> None:
    done = ns.run(["ip", *argv])
    assert done.returncode == 0, f"ip {' '.join(argv)}: {done.stderr}"


def _namespace_listening(ns: Netns) -> set[tuple[str, int]]:
    tcp, tcp6 = (ns.run(["cat", f"/proc/net/{t}"]).stdout for t in ("tcp", "tcp6"))
    return listening(tcp, tcp6)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _until(check: Callable[[], Any], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.05)


@pytest.mark.kernel
@pytest.mark.parametrize("bind", ["192.0.2.1", "fd00:a::1"])
def test_run_listens_on_the_bind_address_only(netns: Netns, bind: str, tmp_path: Path) -> None:
    _ip(netns, "link", "set", "lo", "up")
    _ip(netns, "link", "add", "wip-a", "type", "veth", "peer", "name", "wip-b")
    for name, (v4, v6) in INTERFACES.items():
        _ip(netns, "link", "set", name, "up")
        _ip(netns, "addr", "add", v4, "dev", name)
        _ip(netns, "addr", "add", v6, "dev", name, "nodad")  # usable at once, not "tentative"

    # Nothing listens on the API server's port in the namespace: the agent keeps retrying its
    # watches, but binds its probe server first, which is all this test looks at.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOLEIP_") and k not in ("KUBECONFIG", "NODE_NAME")}
    argv = ["ip", "netns", "exec", netns.name, sys.executable, "-m", "wholeip", "run", "--node-name", "n1"]
    argv += ["--kubeconfig", str(kubeconfig), "--bind-address", bind, "--port", str(PORT), "--log-level", "warning"]
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _until(
            lambda: proc.poll() is not None or _namespace_listening(netns),
            within=20,
            what="the agent listening",
        )
        assert proc.poll() is None, log.read_text()
        assert _namespace_listening(netns) == {(bind, PORT)}

        host = f"[{bind}]" if ":" in bind else bind
        assert netns.call(_http_status, f"http://{host}:{PORT}/metrics") == 200
        assert netns.call(_http_status, f"http://{host}:{PORT}/healthz") in (200, 503)
        others = [a for a in ADDRESSES if a != bind]
        for address in others:
            assert netns.call(connect, address, PORT) == "refused", address
        # Control: every one of those addresses reaches a listener on all addresses.
        control = netns.call(wildcard_listener)
        with control:
            for address in others:
                assert netns.call(connect, address, control.getsockname()[1]) == "connected", address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, log.read_text()
