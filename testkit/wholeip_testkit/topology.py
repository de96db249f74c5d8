"""A two-node cluster in network namespaces, for real-kernel tests of the datapath.

The topology is the one of ``docs/datapath.md`` (``pod_c`` only with
``Topology.create(pod_c=True)``)::

    ext (198.51.100.2, 2001:db8:1::2)
     |  eth0 <-> rtr:ext0                       (optionally a small MTU: docs/datapath.md row 13)
    rtr  bridge br0 192.0.2.1, 2001:db8:2::1    routes external IPs to a node
     |  rtr:n1p <-> n1:eth0      rtr:n2p <-> n2:eth0
    n1 (192.0.2.11, 2001:db8:2::11)            n2 (192.0.2.12, 2001:db8:2::12)
     |  n1:vpa <-> pod_a:eth0                    |  n2:vpb <-> pod_b:eth0
    pod_a 10.244.1.10, fd00:10:244:1::10        pod_b 10.244.2.20, fd00:10:244:2::20
     |  n1:vpc <-> pod_c:eth0   (optional)
    pod_c 10.244.1.30, fd00:10:244:1::30

Design choices, and why:

* **Only namespaces carry the unique prefix.** Every veth is created directly
  inside its namespaces (``ip -n A link add x type veth peer name y netns B``),
  so no interface ever exists in the host's namespace, not even for a moment,
  and interface names cannot collide between topologies. Namespace names are
  ``<prefix>-<role>``; :func:`teardown_prefix` removes every namespace with a
  prefix, which is all there is to clean up.
* **Pods look like a Calico/Cilium pod**: one /32 and one /128, a default route
  via a link-local gateway (169.254.1.1 answered by proxy ARP on the node's
  veth, ``fe80::1`` configured on it), host routes to each pod on its node and
  host-gw routes for the other node's pod CIDR. The router has no routes to pod
  CIDRs, like the internet: a pod's egress only gets answers once it leaves
  with an external IP as source.
* **Strict ``rp_filter`` on the pod-facing veths**, so a ruleset that rewrites
  a pod's source address before routing (the pitfall in ``datapath.md``) is
  caught here and not only in production.
* **The router routes external IPs** like MetalLB (L2 or BGP) would:
  ``203.0.113.10``/``2001:db8:100::10`` to n1 and ``203.0.113.20``/
  ``2001:db8:100::20`` to n2. :meth:`Topology.route_external` re-points any
  address, e.g. to make the first external IP arrive at n2 (row 12).
* **Row 13 (path MTU)** needs a bottleneck behind the node that does NAT and an
  outside host that still advertises a large MSS (otherwise TCP never sends a
  packet that is too big and the PMTU problem is invisible). ``ext_mtu`` sets
  the MTU of the ext<->rtr link and gives ext's routes an ``advmss`` of a
  1500-byte link, modelling a remote host whose own link is large while a
  tunnel or WAN hop in the middle is small.
* **Receive checksum offload is turned off on every veth** (when ``ethtool`` is
  present). A veth marks locally generated packets ``CHECKSUM_UNNECESSARY``,
  which would make every receiver skip checksum verification, so a NAT rule
  that forgets to fix a checksum would pass here and fail on real NICs.
* **A third pod is optional.** ``pod_c`` sits on n1 beside pod_a, wired exactly
  like it, so a test can have a pod client that is not an endpoint of the
  Service it calls (docs/datapath.md row 16). Only the topologies that ask for
  it (``pod_c=True``) pay for the extra namespace.
* Every wait is a condition with a deadline (addresses no longer tentative,
  bridge ports forwarding), never a fixed sleep.
* Teardown is idempotent and runs on any failure during set-up, so a failed
  test or a crashed ``create`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

Role = Literal["ext", "rtr", "n1", "n2", "pod_a", "pod_b", "pod_c"]
Family = Literal[4, 6]
Node = Literal["n1", "n2"]

#: The roles of every topology; ``pod_c`` is added by ``Topology.create(pod_c=True)``.
ROLES: Final[tuple[Role, ...]] = ("ext", "rtr", "n1", "n2", "pod_a", "pod_b")
ALL_ROLES: Final[tuple[Role, ...]] = (*ROLES, "pod_c")
NODES: Final[tuple[Node, ...]] = ("n1", "n2")

#: Every address of every role, per family. Nodes are listed with the address
#: other nodes and kubelet use; the router with its address on the node bridge.
ADDRESSES: Final[Mapping[Role, Mapping[Family, str]]] = {
    "ext": {4: "198.51.100.2", 6: "2001:db8:1::2"},
    "rtr": {4: "192.0.2.1", 6: "2001:db8:2::1"},
    "n1": {4: "192.0.2.11", 6: "2001:db8:2::11"},
    "n2": {4: "192.0.2.12", 6: "2001:db8:2::12"},
    "pod_a": {4: "10.244.1.10", 6: "fd00:10:244:1::10"},
    "pod_b": {4: "10.244.2.20", 6: "fd00:10:244:2::20"},
    "pod_c": {4: "10.244.1.30", 6: "fd00:10:244:1::30"},
}
#: The router's address on the ext link (ext's default gateway).
RTR_EXT_ADDRESSES: Final[Mapping[Family, str]] = {4: "198.51.100.1", 6: "2001:db8:1::1"}
#: Pod CIDR per node, per family.
POD_CIDRS: Final[Mapping[Node, Mapping[Family, str]]] = {
    "n1": {4: "10.244.1.0/24", 6: "fd00:10:244:1::/64"},
    "n2": {4: "10.244.2.0/24", 6: "fd00:10:244:2::/64"},
}
#: External IPs the router sends to each node at start-up.
EXTERNAL_IPS: Final[Mapping[Node, Mapping[Family, str]]] = {
    "n1": {4: "203.0.113.10", 6: "2001:db8:100::10"},
    "n2": {4: "203.0.113.20", 6: "2001:db8:100::20"},
}
#: The node each pod runs on, and the node-side name of its veth.
POD_NODE: Final[Mapping[Role, Node]] = {"pod_a": "n1", "pod_b": "n2", "pod_c": "n1"}
POD_HOST_IFACE: Final[Mapping[Role, str]] = {"pod_a": "vpa", "pod_b": "vpb", "pod_c": "vpc"}
#: The link-local gateways pods route through (Calico's choice for IPv4).
POD_GATEWAY: Final[Mapping[Family, str]] = {4: "169.254.1.1", 6: "fe80::1"}

#: Namespace names are ``<prefix>-<role>``; the longest role has 5 characters.
_PREFIX_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_READY_TIMEOUT: Final = 10.0


class TopologyError(RuntimeError):
    """Set-up failed; the message carries the failing command and its stderr."""


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0) -> str:
    """Run a set-up command; raise :class:`TopologyError` with its stderr on failure."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise TopologyError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces on the host."""
    out = _run(["ip", "netns", "list"])
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def teardown_prefix(prefix: str) -> list[str]:
    """Delete every namespace named ``<prefix>-*``; returns the names deleted.

    Deleting a namespace destroys the veths and bridge in it, so this is the
    whole clean-up. Safe to call twice and after a half-finished set-up.
    """
    if not prefix or "-" in prefix or "/" in prefix:
        raise ValueError(f"refusing suspicious prefix {prefix!r}")
    gone = []
    for ns in list_namespaces():
        if ns.startswith(f"{prefix}-"):
            # Kill anything still running in it first: a process holding the
            # namespace would keep its interfaces (and addresses) alive.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            gone.append(ns)
    return gone


def new_prefix() -> str:
    """A short random prefix (``wi`` + 6 characters) not used by any namespace."""
    existing = list_namespaces()
    while True:
        prefix = "wi" + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(6))
        if not any(ns.startswith(f"{prefix}-") for ns in existing):
            return prefix


def _probe_env() -> dict[str, str]:
    """Environment for child processes: makes ``python -m wholeip...`` and
    ``python -m wholeip_testkit...`` importable even when the packages are not
    installed into the interpreter (running from a checkout)."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    paths = (str(root / "src"), str(root / "testkit"), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


@dataclass
class Topology:
    """A live topology. Build it with :meth:`create`; use it as a context manager.

    ``addr(role, family)`` gives every address; ``external[node][family]`` the
    external IP the router sends to that node at start-up. ``pod_c``: whether
    the optional third pod (on n1) exists.
    """

    prefix: str
    ext_mtu: int | None = None
    pod_c: bool = False
    _procs: list[subprocess.Popen[str]] = field(default_factory=list, repr=False)
    _closed: bool = field(default=False, repr=False)

    # -- construction ------------------------------------------------------------

    @classmethod
    def create(cls, *, prefix: str | None = None, ext_mtu: int | None = None, pod_c: bool = False) -> Topology:
        """Build the whole topology and wait until it forwards.

        ``prefix``: namespace prefix (random when None). ``ext_mtu``: MTU of the
        ext<->rtr link (for row 13; IPv6 needs at least 1280). ``pod_c``: add
        the third pod, on n1 (10.244.1.30, fd00:10:244:1::30).
        """
        topo = cls(prefix=prefix or new_prefix(), ext_mtu=ext_mtu, pod_c=pod_c)
        try:
            topo._build()
            topo._wait_ready()
        except BaseException:
            topo.close()
            raise
        return topo

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started with :meth:`popen` and delete the namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        teardown_prefix(self.prefix)
        self._closed = True

    # -- queries -----------------------------------------------------------------

    def ns(self, role: Role) -> str:
        """The namespace name of a role."""
        return f"{self.prefix}-{role}"

    def netns_path(self, role: Role) -> str:
        """The bind-mounted namespace file, for ``setns(2)`` or ``nsenter --net=``."""
        return f"/var/run/netns/{self.ns(role)}"

    @staticmethod
    def addr(role: Role, family: Family) -> str:
        """The address of a role (node: its bridge address; rtr: on the bridge)."""
        return ADDRESSES[role][family]

    @property
    def external(self) -> Mapping[Node, Mapping[Family, str]]:
        """External IPs the router sends to each node at start-up."""
        return EXTERNAL_IPS

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles this topology has (``pod_c`` only when asked for)."""
        return ALL_ROLES if self.pod_c else ROLES

    @property
    def pods(self) -> tuple[Role, ...]:
        """The pods this topology has."""
        return tuple(role for role in self.roles if role in POD_NODE)

    # -- running things inside -----------------------------------------------------

    def exec(
        self,
        role: Role,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the role's namespace and capture its output (text)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=_probe_env(),
        )

    def popen(
        self,
        role: Role,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside the role's namespace; it is killed by :meth:`close`."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=_probe_env(),
        )
        self._procs.append(proc)
        return proc

    def python(self, role: Role, module: str, args: Sequence[str]) -> list[str]:
        """argv that runs ``python -m module args`` with this interpreter."""
        del role  # same interpreter everywhere; the role is chosen by exec/popen
        return [sys.executable, "-m", module, *args]

    def nft(self, node: Role, *args: str, input: str | None = None) -> str:
        """Run ``nft`` inside a namespace (never in the host's); raises on error."""
        proc = self.exec(node, ["nft", *args], input=input)
        if proc.returncode != 0:
            raise TopologyError(f"nft {' '.join(args)} in {node}: {proc.stderr.strip()}")
        return proc.stdout

    def route_external(self, address: str, node: Node) -> None:
        """Make the router send ``address`` (v4 or v6) to ``node``."""
        family: Family = 6 if ":" in address else 4
        plen = 128 if family == 6 else 32
        _run(
            [
                "ip",
                "-n",
                self.ns("rtr"),
                f"-{family}",
                "route",
                "replace",
                f"{address}/{plen}",
                "via",
                ADDRESSES[node][family],
            ]
        )

    # -- set-up ------------------------------------------------------------------

    def _sysctl(self, role: Role, settings: Mapping[str, str | int]) -> None:
        args = [f"{key}={value}" for key, value in settings.items()]
        _run(["ip", "netns", "exec", self.ns(role), "sysctl", "-qw", *args])

    def _batch(self, role: Role, commands: Sequence[str]) -> None:
        """Many ``ip`` commands in one process: fast, and fails on the first error."""
        _run(["ip", "-n", self.ns(role), "-batch", "-"], input="\n".join(commands) + "\n")

    def _veth(self, a: Role, a_if: str, b: Role, b_if: str) -> None:
        _run(
            [
                "ip",
                "-n",
                self.ns(a),
                "link",
                "add",
                a_if,
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                self.ns(b),
            ]
        )

    def _build(self) -> None:
        for role in self.roles:
            _run(["ip", "netns", "add", self.ns(role)])
            # IPv4 settings of a new namespace are inherited from the host's,
            # so everything that matters is set explicitly. DAD is off so IPv6
            # addresses are usable at once (the wait below still checks).
            forwarding = 0 if role == "ext" or role in POD_NODE else 1
            self._sysctl(
                role,
                {
                    "net.ipv4.ip_forward": forwarding,
                    "net.ipv4.conf.all.rp_filter": 0,
                    "net.ipv4.conf.default.rp_filter": 0,
                    "net.ipv6.conf.all.forwarding": forwarding,
                    "net.ipv6.conf.all.accept_dad": 0,
                    "net.ipv6.conf.default.accept_dad": 0,
                    "net.ipv6.conf.all.keep_addr_on_down": 1,
                },
            )
            self._batch(role, ["link set lo up"])

        self._veth("ext", "eth0", "rtr", "ext0")
        self._veth("rtr", "n1p", "n1", "eth0")
        self._veth("rtr", "n2p", "n2", "eth0")
        for pod in self.pods:
            self._veth(POD_NODE[pod], POD_HOST_IFACE[pod], pod, "eth0")

        mtu = [] if self.ext_mtu is None else [f"link set dev eth0 mtu {self.ext_mtu}"]
        rtr_mtu = [] if self.ext_mtu is None else [f"link set dev ext0 mtu {self.ext_mtu}"]
        # advmss of a 1500-byte link: the remote end offers a large MSS, so the
        # pod sends full-size segments and the bottleneck must be discovered.
        adv4 = [] if self.ext_mtu is None else ["advmss", "1460"]
        adv6 = [] if self.ext_mtu is None else ["advmss", "1440"]
        ext4, ext6 = RTR_EXT_ADDRESSES[4], RTR_EXT_ADDRESSES[6]
        self._batch(
            "ext",
            [
                *mtu,
                "link set dev eth0 up",
                f"addr add {ADDRESSES['ext'][4]}/24 dev eth0",
                f"addr add {ADDRESSES['ext'][6]}/64 dev eth0 nodad",
                " ".join(["route add default via", ext4, *adv4]),
                " ".join(["route add ::/0 via", ext6, *adv6]),
            ],
        )

        rtr_routes = []
        for node in NODES:
            for fam in (4, 6):
                plen = 128 if fam == 6 else 32
                rtr_routes.append(f"route add {EXTERNAL_IPS[node][fam]}/{plen} via {ADDRESSES[node][fam]}")
        self._batch(
            "rtr",
            [
                # STP off and no forward delay: ports forward as soon as they are up.
                "link add br0 type bridge stp_state 0 forward_delay 0",
                "link set dev n1p master br0",
                "link set dev n2p master br0",
                *rtr_mtu,
                "link set dev ext0 up",
                "link set dev n1p up",
                "link set dev n2p up",
                "link set dev br0 up",
                f"addr add {ext4}/24 dev ext0",
                f"addr add {ext6}/64 dev ext0 nodad",
                f"addr add {ADDRESSES['rtr'][4]}/24 dev br0",
                f"addr add {ADDRESSES['rtr'][6]}/64 dev br0 nodad",
                *rtr_routes,
            ],
        )

        pairs: tuple[tuple[Node, Node], ...] = (("n1", "n2"), ("n2", "n1"))
        for node, other in pairs:
            self._batch(
                node,
                [
                    "link set dev eth0 up",
                    f"addr add {ADDRESSES[node][4]}/24 dev eth0",
                    f"addr add {ADDRESSES[node][6]}/64 dev eth0 nodad",
                    f"route add default via {ADDRESSES['rtr'][4]}",
                    f"route add ::/0 via {ADDRESSES['rtr'][6]}",
                    # host-gw: the other node's pod CIDR via its bridge address.
                    f"route add {POD_CIDRS[other][4]} via {ADDRESSES[other][4]}",
                    f"route add {POD_CIDRS[other][6]} via {ADDRESSES[other][6]}",
                ],
            )

        for pod in self.pods:
            node = POD_NODE[pod]
            host_if = POD_HOST_IFACE[pod]
            self._batch(
                node,
                [
                    f"link set dev {host_if} up",
                    # The pod's IPv6 gateway; link-local, so every pod veth can carry it.
                    f"addr add {POD_GATEWAY[6]}/64 dev {host_if} nodad",
                    f"route add {ADDRESSES[pod][4]}/32 dev {host_if}",
                    f"route add {ADDRESSES[pod][6]}/128 dev {host_if}",
                ],
            )
            self._sysctl(
                node,
                {
                    # Answers the pod's ARP for 169.254.1.1 (the node has no such
                    # address; proxy ARP replies because its route leaves elsewhere).
                    f"net.ipv4.conf.{host_if}.proxy_arp": 1,
                    # Proxy ARP answers after a random delay of up to 0.8 s by default.
                    f"net.ipv4.neigh.{host_if}.proxy_delay": 0,
                    # Strict: catches source rewrites that happen before routing.
                    f"net.ipv4.conf.{host_if}.rp_filter": 1,
                },
            )
            self._batch(
                pod,
                [
                    "link set dev eth0 up",
                    f"addr add {ADDRESSES[pod][4]}/32 dev eth0",
                    f"addr add {ADDRESSES[pod][6]}/128 dev eth0 nodad",
                    f"route add {POD_GATEWAY[4]} dev eth0 scope link",
                    f"route add default via {POD_GATEWAY[4]} dev eth0",
                    f"route add ::/0 via {POD_GATEWAY[6]} dev eth0",
                ],
            )

        if shutil.which("ethtool"):
            veths: list[tuple[Role, str]] = [
                ("ext", "eth0"),
                ("rtr", "ext0"),
                ("rtr", "n1p"),
                ("rtr", "n2p"),
                ("n1", "eth0"),
                ("n2", "eth0"),
            ]
            for pod in self.pods:
                veths += [(POD_NODE[pod], POD_HOST_IFACE[pod]), (pod, "eth0")]
            for role, iface in veths:
                self.exec(role, ["ethtool", "-K", iface, "rx", "off", "tx", "off"], check=True)

    def _wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until no IPv6 address is tentative and both bridge ports forward."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [
                role for role in self.roles if self.exec(role, ["ip", "-6", "addr", "show", "tentative"]).stdout.strip()
            ]
            bridge = self.exec("rtr", ["bridge", "link", "show"]).stdout
            ports_ok = bridge.count("state forwarding") >= 2
            if not pending and ports_ok:
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"topology {self.prefix} not ready: tentative in {pending}, bridge: {bridge!r}")
            time.sleep(0.05)


@contextlib.contextmanager
def topology(*, prefix: str | None = None, ext_mtu: int | None = None, pod_c: bool = False) -> Iterator[Topology]:
    """``with topology() as topo:`` -- :meth:`Topology.create` as a context manager."""
    topo = Topology.create(prefix=prefix, ext_mtu=ext_mtu, pod_c=pod_c)
    try:
        yield topo
    finally:
        topo.close()
