"""Property-based tests: arbitrary Services, EndpointSlices and Nodes through model and compiler.

The strategies produce clusters that are mostly plausible (small pools of names
and addresses, so Services collide, share pods and claim each other's IPs),
with garbage spliced into some objects: wrong types anywhere, huge integers,
booleans, zone ids, unicode, missing fields. Properties:

* ``build_state`` and ``compile_table`` never raise;
* the state and the table do not depend on the order of the input objects;
* the model's invariants (unique external IPs, one egress per pod, families
  match, no external IP inside the cluster networks, the oldest claimant with
  a ready endpoint wins ...);
* the compiler's invariants (which sets hold which mappings' elements);
* the fake backend accepts every compiled table, a second full sync is empty,
  and going from any table A to any table B converges on B;
* the agent's index, told only what changed from A to B, equals a fresh B.

``tests/nft/test_properties_kernel.py`` runs a sample of the same clusters
against nf_tables in a fresh network namespace.

Runs are derandomized (the same examples every time, about 20 s). For a longer,
random exploration (20x the examples; shrinking a failure can take minutes)::

    WHOLEIP_HYPOTHESIS=long pytest --timeout=0 tests/unit/test_properties.py

:func:`props` sets the other property tests of the index as well (``test_index``,
``test_fill``, ``test_egressip``, ``test_podnat``, ``test_earlyfill``, ``test_prefill``):
the same variable runs them long (``make test-long``).
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wholeip.core import model, objects
from wholeip.core.delegated import without_history
from wholeip.core.elements import compile_table
from wholeip.core.index import ClusterIndex, build_state, load, service_key
from wholeip.core.model import ClusterState, Mapping1to1, Mode
from wholeip.core.ruleset import icmp4_compensation, skeleton
from wholeip.engine import Engine
from wholeip.names import ALLOW_ICMP_ANNOTATION, PROXY_NAME_LABEL, SERVICE_NAME_LABEL, WHOLE_IP_ANNOTATION
from wholeip.nft.diff import diff
from wholeip.nft.doc import TableDoc, interval_cover
from wholeip.nft.fake import FakeBackend
from wholeip.nft.listing import parse_listing
from wholeip.nft.render import render_table
from wholeip.settings import ModelSettings

# --------------------------------------------------------------------------- profiles

_PROFILE = os.environ.get("WHOLEIP_HYPOTHESIS", "ci")
_SCALE = 20 if _PROFILE == "long" else 1


def props(examples: int) -> settings:
    """Settings for one property: ``examples`` in CI (derandomized, no database), 20x and
    random with ``WHOLEIP_HYPOTHESIS=long``."""
    return settings(
        max_examples=examples * _SCALE,
        deadline=None,
        derandomize=_PROFILE != "long",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# --------------------------------------------------------------------------- pools

NAMESPACES = ("default", "prod")
NAMES = ("a", "b", "c", "d", "e", "f")
NODES = ("n1", "n2", "n3")
PORT_NAMES = ("", "http", "dns")
PORTS = (53, 80, 443, 8080)

EXT4 = ("203.0.113.1", "203.0.113.2", "198.51.100.9")
EXT6 = ("2001:db8:1::1", "2001:DB8:1:0::1", "2001:db8:1::2", "2001:db8:1:0:0:0:0:3", "2001:db8:1::0:3")
# Addresses the model must refuse as external IPs (loopback, link-local, multicast,
# unspecified, broadcast, pod/service networks, node addresses).
GUARDED = (
    "127.0.0.1",
    "169.254.0.1",
    "224.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "10.244.1.50",
    "10.96.0.10",
    "192.0.2.11",
    "::1",
    "::",
    "fe80::1",
    "ff02::1",
    "fd00:10:244:1::50",
    "2001:db8:ffff::1",
    # IPv6 spellings of IPv4 addresses, and other special ranges (issue 15 item 6).
    "::2",
    "::ffff:203.0.113.9",
    "64:ff9b::1",
    "fec0::1",
    "0.1.2.3",
    "240.0.0.1",
)
# Python's ipaddress takes IPv6 zone ids ("%eth0"); nft does not.
ZONED = ("2001:db8:1::1%eth0", "2001:db8:1::2%1", "fd00:10:244:1::a%eth0", "fe80::1%eth0")
WEIRD_STRINGS = (
    "",
    " ",
    "not-an-ip",
    " 203.0.113.1",
    "203.0.113.1 ",
    "203.0.113.1/32",
    "203.0.113.256",
    "203.0.113.01",
    "2001:db8:1::1%eth0",
    "fe80::1%1",
    "fd00:10:244:1::%eth0/64",
    "\uff12\uff10\uff13.0.113.1",  # fullwidth digits
    "\u0662\u0660\u0663.0.113.1",  # Arabic-Indic digits
    "true",
    "TRUE",
    "yes",
    "\u017fctp",  # long s: upper() is "SCTP"
    "tcp\x00",
    "🙂",
    "a" * 300,
    "0x50",
    "1e3",
)


CLUSTER_IPS = (
    ["10.96.0.10"],
    ["10.96.0.11", "fd00:96::11"],
    ["fd00:96::12", "10.96.0.12"],
    ["None"],
    ["10.96.0.13", "10.96.0.14"],
    [],
)


def _pod4(node: int, slot: int) -> str:
    return f"10.244.{node}.{10 + slot}"


def _pod6(node: int, slot: int) -> str:
    return f"fd00:10:244:{node}::{10 + slot:x}"


# --------------------------------------------------------------------------- garbage

garbage: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**8), max_value=2**17),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WEIRD_STRINGS),
    st.text(max_size=8),
    st.lists(st.sampled_from(["203.0.113.1", 80, None]), max_size=2),
    st.dictionaries(st.sampled_from(["ip", "port", "name", "x"]), st.sampled_from([1, "x", None]), max_size=2),
    st.datetimes(min_value=datetime.datetime(2020, 1, 1), max_value=datetime.datetime(2030, 1, 1)),
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def corrupt(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` or, in a fifth of the draws, a copy with one to three values replaced by
    garbage or deleted (the top level stays a dict: every input path hands the model dicts)."""
    n = max(0, draw(st.integers(0, 14)) - 11)
    if n == 0:
        return obj
    obj = copy.deepcopy(obj)
    for _ in range(n):
        paths = list(_paths(obj))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(garbage)
    event("corrupted object")
    return obj


# --------------------------------------------------------------------------- plausible objects


def _maybe(draw: st.DrawFn, value: Any, key: str, into: dict[str, Any]) -> None:
    if draw(st.integers(0, 9)) > 0:
        into[key] = value


ext_ip = st.one_of(
    st.sampled_from(EXT4),
    st.sampled_from(EXT4),
    st.sampled_from(EXT4),
    st.sampled_from(EXT6),
    st.sampled_from(EXT6),
    st.sampled_from(GUARDED),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.sampled_from(ZONED),
)

source_range = st.one_of(
    st.sampled_from(
        (
            "198.51.100.0/24",
            "198.51.100.7/24",  # host bits set, as Kubernetes allows
            "198.51.100.128/25",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "10.0.0.0/8",
            "2001:db8:2::/48",
            "2001:db8:2::1/128",
            "::/0",
            " 203.0.113.0/24 ",
            "2001:db8:2::%eth0/48",
        )
    ),
    st.builds(
        lambda ip, n: f"{ip}/{n}",
        st.ip_addresses(v=4),
        st.integers(0, 32),
    ),
    st.builds(lambda ip, n: f"{ip}/{n}", st.ip_addresses(v=6), st.integers(0, 128)),
)


@st.composite
def service_port(draw: st.DrawFn) -> dict[str, Any]:
    port = draw(st.sampled_from(PORTS) | st.sampled_from((1, 65535)) | st.integers(1, 65535))
    entry: dict[str, Any] = {"port": port}
    if draw(st.integers(0, 7)) == 0:  # what YAML or a careless client makes of a port
        entry["port"] = draw(st.sampled_from((True, False, "80", 80.0, 0, 65536, -1, None, 2**64)))
    _maybe(
        draw, draw(st.sampled_from(("TCP", "UDP", "SCTP", "tcp", "TCP", "UDP", "ICMP", "\u017fctp"))), "protocol", entry
    )
    if draw(st.booleans()):
        entry["name"] = draw(st.sampled_from(PORT_NAMES))
    node_port = draw(st.sampled_from((None, None, None, 30080, 30081, "30080")))
    if node_port is not None:  # delegated Services serve NodePorts (two Services may collide)
        entry["nodePort"] = node_port
    target = draw(st.sampled_from(("same", "same", "absent", "other", "named")))
    if target == "same":
        entry["targetPort"] = entry["port"]
    elif target == "other":
        entry["targetPort"] = draw(st.sampled_from(PORTS))
    elif target == "named":
        entry["targetPort"] = draw(st.sampled_from(("http", "dns")))
    return entry


DELEGATED_SPECS: tuple[dict[str, Any], ...] = (
    {},
    {},
    {"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000},
    {"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000, "internalTrafficPolicy": "Local"},
    {"externalTrafficPolicy": "Cluster", "healthCheckNodePort": 32001},
    {"internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"},
    {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
    {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": "x"}}},
    {"externalTrafficPolicy": "local", "healthCheckNodePort": 0},
)
"""What delegated Services (labelled) read besides ports: traffic policies, affinity, the
health check, some of it malformed."""


@st.composite
def service(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(st.sampled_from(NAMES))}
    _maybe(draw, draw(st.sampled_from(NAMESPACES)), "namespace", meta)
    meta["uid"] = f"uid-{draw(st.integers(0, 20))}"
    _maybe(
        draw,
        draw(st.sampled_from(("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-06-01T12:00:00Z"))),
        "creationTimestamp",
        meta,
    )
    annotations: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    how = draw(st.sampled_from(("annotation", "annotation", "label", "label", "both", "neither")))
    if how in ("annotation", "both"):
        annotations[WHOLE_IP_ANNOTATION] = draw(
            st.sampled_from(("true", "true", "true", "True", " TRUE ", "false", "yes"))
        )
    if how in ("label", "both"):
        labels[PROXY_NAME_LABEL] = draw(st.sampled_from(("wholeip", "wholeip", "wholeip", "cozy-proxy", "other")))
    if draw(st.booleans()):
        annotations[ALLOW_ICMP_ANNOTATION] = draw(st.sampled_from(("true", "false", "True")))
    meta["annotations"] = annotations
    meta["labels"] = labels
    spec: dict[str, Any] = {"type": draw(st.sampled_from(("LoadBalancer", "LoadBalancer", "LoadBalancer", "NodePort")))}
    spec["ports"] = draw(st.lists(service_port(), max_size=3))
    if draw(st.integers(0, 3)) > 0:  # --lb-to-clusterip sends the LoadBalancer IPs there
        _maybe(draw, draw(st.sampled_from(CLUSTER_IPS)), "clusterIPs", spec)
    spec.update(draw(st.sampled_from(DELEGATED_SPECS)))  # one draw: the examples' entropy is bounded
    if draw(st.integers(0, 3)) == 0:
        spec["loadBalancerSourceRanges"] = draw(st.lists(source_range, min_size=1, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        spec["externalIPs"] = draw(st.lists(ext_ip, max_size=2))
    ips = draw(st.lists(ext_ip, min_size=draw(st.sampled_from((0, 1, 1, 1, 1, 1, 1, 1))), max_size=3))
    ingress: list[Any] = [{"ip": ip} for ip in ips]
    if draw(st.integers(0, 9)) == 0:
        ingress.append({"hostname": "lb.example.com"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress}},
    }


@st.composite
def endpoint_slice(
    draw: st.DrawFn,
    namespace: Any = None,
    service_name: Any = None,
    family: str | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A slice; for a given Service (namespace, name, family, ports) or for any of the pool."""
    if family is None:
        family = draw(st.sampled_from(("IPv4", "IPv4", "IPv6", "FQDN")))
    meta: dict[str, Any] = {
        "name": f"slice-{draw(st.integers(0, 30))}",
        "labels": {SERVICE_NAME_LABEL: service_name if service_name is not None else draw(st.sampled_from(NAMES))},
    }
    if namespace is not None:
        meta["namespace"] = namespace
    elif service_name is None:
        _maybe(draw, draw(st.sampled_from(NAMESPACES)), "namespace", meta)
    endpoints = []
    for _ in range(draw(st.integers(0 if service_name is None else 1, 3))):
        node = draw(st.integers(0, len(NODES) - 1))
        slot = draw(st.integers(0, 3))
        if family == "IPv6":
            addr = _pod6(node, slot)
        elif family == "IPv4":
            addr = _pod4(node, slot)
        else:
            addr = "pod.example.com"
        if draw(st.integers(0, 9)) == 0:  # any address of the family, or the wrong family
            addr = str(draw(st.ip_addresses()))
        elif draw(st.integers(0, 19)) == 0:
            addr = draw(st.sampled_from(ZONED))
        endpoint: dict[str, Any] = {"addresses": [addr]}
        ready = draw(st.sampled_from((True, True, True, True, False, None)))
        if ready is not None:
            endpoint["conditions"] = {"ready": ready, "serving": True, "terminating": not ready}
        if draw(st.integers(0, 7)) == 0:  # conditions no kubelet writes (ready, yet terminating ...)
            endpoint["conditions"] = draw(
                st.dictionaries(st.sampled_from(("ready", "serving", "terminating")), st.sampled_from((True, False)))
            )
        if draw(st.integers(0, 5)) > 0:
            endpoint["nodeName"] = NODES[node]
        endpoints.append(endpoint)
    if ports is None or draw(st.integers(0, 9)) == 0:
        ports = [
            {"name": draw(st.sampled_from(PORT_NAMES)), "port": draw(st.sampled_from(PORTS)), "protocol": proto}
            for proto in draw(st.lists(st.sampled_from(("TCP", "UDP", "SCTP")), max_size=2))
        ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    }


def slice_ports(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """The ports an EndpointSlice controller would write for ``svc`` (target ports resolved:
    a named one to 8080)."""
    out = []
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        out.append(
            {
                "name": p.get("name", ""),
                "port": target if isinstance(target, int) else 8080,
                "protocol": p.get("protocol", "TCP"),
            }
        )
    return out


@st.composite
def node_obj(draw: st.DrawFn, index: int) -> dict[str, Any]:
    cidrs = [f"10.244.{index}.0/24"]
    if draw(st.booleans()):
        cidrs.append(f"fd00:10:244:{index}::" + draw(st.sampled_from(("", "", "", "%eth0"))) + "/64")
    spec: dict[str, Any] = {"podCIDRs": cidrs}
    if draw(st.booleans()):
        spec["podCIDR"] = cidrs[0]
    addresses = [
        {"type": "InternalIP", "address": f"192.0.2.{11 + index}"},
        {"type": "Hostname", "address": NODES[index]},
    ]
    if draw(st.booleans()):
        addresses.append(
            {"type": "InternalIP", "address": draw(st.sampled_from((f"2001:db8:ffff::{index + 1}", "fe80::1%eth0")))}
        )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODES[index]},
        "spec": spec,
        "status": {"addresses": addresses},
    }


# --------------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    services: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    settings: ModelSettings
    node_name: str

    def state(self) -> ClusterState:
        return build_state(
            services=self.services,
            endpoint_slices=self.slices,
            nodes=self.nodes,
            node_name=self.node_name,
            settings=self.settings,
        )

    def doc(self) -> TableDoc:
        return compile_table(self.state(), node_name=self.node_name)


model_settings = st.sampled_from(
    (
        ModelSettings(),
        ModelSettings(),
        ModelSettings(),
        ModelSettings(),
        ModelSettings(allow_spec_external_ips=True),
        ModelSettings(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/56"))),
        ModelSettings(
            service_cidrs=(ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:96::/112")),
            proxy_name="cozy-proxy",
        ),
        ModelSettings(proxy_name=""),
        ModelSettings(lb_to_clusterip=True),
        ModelSettings(lb_to_clusterip=True, allow_spec_external_ips=True),
        ModelSettings(
            allowed_external_cidrs=(ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:1::/64")),
            allowed_namespaces=frozenset({"prod", ""}),
        ),
    )
)


@st.composite
def clusters(draw: st.DrawFn, *, max_services: int = 6) -> Cluster:
    nodes = [draw(node_obj(i)) for i in sorted(draw(st.sets(st.integers(0, len(NODES) - 1), max_size=3)))]
    services = draw(st.lists(service(), min_size=3, max_size=max_services))
    slices: list[dict[str, Any]] = []
    for svc in services:
        # Most Services get a slice per family of their external IPs, some a second one.
        meta = svc["metadata"]
        families = sorted(
            {"IPv6" if ":" in i["ip"] else "IPv4" for i in svc["status"]["loadBalancer"]["ingress"] if "ip" in i}
        )
        for family in families + draw(st.lists(st.sampled_from(("IPv4", "IPv6")), max_size=1)):
            if draw(st.integers(0, 9)) > 0:
                slices.append(
                    draw(
                        endpoint_slice(
                            namespace=meta.get("namespace"),
                            service_name=meta["name"],
                            family=family,
                            ports=slice_ports(svc),
                        )
                    )
                )
    slices += draw(st.lists(endpoint_slice(), max_size=2))
    c = Cluster(
        services=[draw(corrupt(s)) for s in services],
        slices=[draw(corrupt(s)) for s in slices],
        nodes=[draw(corrupt(n)) for n in nodes],
        settings=draw(model_settings),
        node_name=draw(st.sampled_from((*NODES, "n1", "elsewhere"))),
    )
    if nodes and draw(st.integers(0, 4)) == 0:
        # A second Node under one name (a cluster file can hold both), other content.
        twin = draw(node_obj(draw(st.integers(0, len(NODES) - 1))))
        twin["metadata"]["name"] = draw(st.sampled_from(nodes))["metadata"]["name"]
        c.nodes.append(twin)
    return c


# --------------------------------------------------------------------------- invariants


def one_per_name(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Nodes that count: of two under one name, the one whose text sorts first (input
    order must not decide); nameless ones all."""
    first: dict[str, dict[str, Any]] = {}
    for node in sorted(nodes, key=repr):
        first.setdefault(service_key(node)[1], node)
    return [n for n in nodes if not service_key(n)[1] or first[service_key(n)[1]] is n]


def _canonical(addr: str) -> bool:
    return "%" not in addr and str(ipaddress.ip_address(addr)) == addr


@dataclass
class Expected:
    """What the model must decide, worked out the simple way (no index, no incrementality)."""

    winners: dict[Any, tuple[Any, Any]]
    """External IP -> (its Service's ServiceInfo, the pod IP)."""
    parsed: list[Any]
    """Every managed ServiceInfo, duplicates included."""


def expected(c: Cluster) -> Expected:
    parsed = [s for s in (objects.parse_service(o, c.settings, []) for o in c.services) if s is not None]
    first: dict[tuple[str, str], Any] = {}
    # Duplicates: the oldest is used; same-age ones are told apart by content (uid, then all of it).
    for s in sorted(parsed, key=lambda s: (s.age_key, s.ref.uid, repr(s))):
        first.setdefault((s.ref.namespace, s.ref.name), s)
    ready: dict[tuple[tuple[str, str], int], set[Any]] = {}
    for raw in c.slices:
        sl = objects.parse_slice(raw)
        if sl is not None:
            ready.setdefault((sl.service, sl.family), set()).update(map(ipaddress.ip_address, sl.ready))
    pod_cidrs, node_ips = objects.node_networks(one_per_name(c.nodes), [])
    guard = model.collapse([*c.settings.cluster_cidrs, *pod_cidrs, *c.settings.service_cidrs])
    # Backends must lie in the pod networks of their family, when that family's are known.
    pod_nets = model.collapse(c.settings.cluster_cidrs or pod_cidrs)
    for (_, family), addrs in ready.items():
        nets = [n for n in pod_nets if n.version == family]
        if nets:
            addrs -= {a for a in addrs if not any(a in n for n in nets)}
    claimants: dict[Any, list[Any]] = {}
    for s in first.values():
        for ip in s.external_ips:
            claimants.setdefault(ip, []).append(s)
    # A pod's address is no external IP (its mapping and the pod's would share the filter's
    # elements): possible where a family's pod networks are unknown.
    pod_addresses = set().union(*ready.values())
    winners = {}
    for ip, svcs in claimants.items():
        allowed = c.settings.allowed_external_cidrs
        if model.refusal(ip, cluster=guard, node_ips=frozenset(node_ips), allowed=allowed) is not None:
            continue
        if ip in pod_addresses:
            continue
        # The oldest claimant that has a ready endpoint of the family wins.
        for s in sorted(svcs, key=lambda s: s.age_key):
            pods = ready.get(((s.ref.namespace, s.ref.name), ip.version))
            if pods:
                winners[ip] = (s, min(pods, key=int))
                break
    return Expected(winners, parsed)


def check_state(c: Cluster, state: ClusterState) -> None:
    exts = [m.external_ip for m in state.mappings]
    assert len(exts) == len(set(exts)), "an external IP is mapped twice"
    assert [(m.external_ip.version, int(m.external_ip)) for m in state.mappings] == sorted(
        (ip.version, int(ip)) for ip in exts
    )
    assert list(state.managed_services) == sorted(state.managed_services)
    want = expected(c)
    assert set(state.managed_services) == {s.ref for s in want.parsed}
    for net in state.cluster_networks:
        assert "%" not in str(net)
    nets = list(state.cluster_networks)
    assert not any(a != b and a.version == b.version and a.overlaps(b) for a in nets for b in nets), (
        "cluster networks are collapsed"
    )
    # The winners: the oldest claimant with a ready endpoint, its lowest ready address.
    got = {m.external_ip: (m.service, m.pod_ip) for m in state.mappings}
    assert got == {ip: (s.ref, pod) for ip, (s, pod) in want.winners.items()}
    egress: dict[Any, list[Mapping1to1]] = {}
    managed = set(state.managed_services)
    for m in state.mappings:
        ext, pod = m.external_ip, m.pod_ip
        svc = want.winners[ext][0]
        assert ext.version == pod.version, "families differ"
        assert _canonical(str(ext))
        assert _canonical(str(pod))
        assert m.service in managed
        assert model.refusal(ext, cluster=state.cluster_networks, node_ips=frozenset()) is None, (
            f"{ext} may not be an external IP"
        )
        assert (m.mode, m.allow_icmp, m.source_ranges) == (svc.mode, svc.allow_icmp, svc.source_ranges)
        # Ranges that were listed and all invalid close the address; they never open it.
        raw = [o for o in c.services if objects.namespaced_name(o) == (m.service.namespace, m.service.name)]
        listed = any(
            isinstance(o.get("spec"), dict)
            and isinstance(o["spec"].get("loadBalancerSourceRanges"), list)
            and o["spec"]["loadBalancerSourceRanges"]
            for o in raw
        )
        assert m.closed == svc.closed
        assert not m.closed or (listed and not m.source_ranges)
        if c.settings.allowed_external_cidrs:
            assert any(ext in net for net in c.settings.allowed_external_cidrs)
        if c.settings.allowed_namespaces:
            assert m.service.namespace in c.settings.allowed_namespaces
        egress.setdefault(pod, []).append(m)
        if m.mode is Mode.WHOLE_IP:
            assert m.ports == ()
        else:
            assert list(m.ports) == sorted(set(m.ports))
            assert {(p.protocol, p.port) for p in m.ports} <= {(p.protocol, p.port) for p in svc.ports}
            for port in m.ports:
                assert port.protocol in ("tcp", "udp", "sctp")
                assert type(port.port) is int
                assert 0 < port.port < 65536
        ranges = list(m.source_ranges)
        assert not any(a != b and a.version == b.version and a.overlaps(b) for a in ranges for b in ranges)
    # Every mapped pod leaves through exactly one external IP: its oldest Service's first.
    for pod, ms in egress.items():
        leaving = [m for m in ms if m.egress]
        assert len(leaving) == 1, f"pod {pod} leaves through {len(leaving)} external IPs"

        def order(m: Mapping1to1) -> Any:
            s = want.winners[m.external_ip][0]
            return (s.age_key, s.external_ips.index(m.external_ip))

        assert leaving[0] == min(ms, key=order)
    for p in state.problems:
        assert p.ref.kind in ("Service", "EndpointSlice", "Node")
        assert p.reason[:1].isupper()
        assert p.reason.isalnum()


def _word_sum(addr: Any) -> int:
    return sum(int.from_bytes(addr.packed[i : i + 2], "big") for i in range(0, len(addr.packed), 2))


def _parts(value: Any) -> Iterator[Any]:
    if isinstance(value, tuple | frozenset | set):
        for v in value:
            yield from _parts(v)
    else:
        yield value


def _keys(elems: frozenset[Any]) -> list[Any]:
    return [e[0] for e in elems]


FILTER_SETS = ("filtered", "ports", "icmp", "ranged", "sources")


def _key(elem: Any) -> Any:
    return elem[0] if isinstance(elem, tuple) else elem


def _udp_rule(m: Mapping1to1) -> tuple[Any, ...] | None:
    """What one mapping lets in of UDP/SCTP from outside: None for everything, else
    (listed ports or None for any port, allowed ranges or None for any source)."""
    if m.mode is Mode.WHOLE_IP and not m.source_ranges and not m.closed:
        return None
    ports = frozenset((p.protocol, p.port) for p in m.ports if p.protocol != "tcp") if m.mode is Mode.PER_PORT else None
    if m.closed:
        return (ports, frozenset({"nobody"}))  # ranges, none of them valid: no outside source
    return (ports, frozenset(m.source_ranges) if m.source_ranges else None)


def _at_pod(group: list[Mapping1to1]) -> tuple[Any, Any] | None:
    """Independently of the compiler: what the pod's node lets in for a pod with these
    mappings, as a rule (ports or None for any, ranges or None for any source); None:
    the pod's node does not filter for it."""
    rules = {_udp_rule(m) for m in group}
    if rules == {None}:
        return None
    if None in rules:
        return (None, None)  # one of them lets everything in
    if len({r[1] for r in rules if r is not None}) != 1:
        return None  # ranges differ
    any_port = any(r is not None and r[0] is None for r in rules)
    ports = None if any_port else frozenset().union(*(r[0] for r in rules if r is not None and r[0] is not None))
    return (ports, next(r[1] for r in rules if r is not None))


def check_doc(state: ClusterState, doc: TableDoc, node_name: str) -> None:
    assert doc.skeleton == skeleton()
    el: dict[str, Any] = dict(doc.elements)  # elements as Any: the checks below know each set's shape
    assert set(el) == {s.name for s in doc.skeleton.sets}
    for name, elems in el.items():
        for part in _parts(elems):
            assert "%" not in str(part), f"{name}: {part!r} has a zone id"
            if isinstance(part, str) and ("." in part or ":" in part):
                assert str(ipaddress.ip_network(part) if "/" in part else ipaddress.ip_address(part)) == part, (
                    f"{name}: {part!r} is not in canonical form"
                )
    json.dumps(render_table(doc))  # renders, and is JSON
    for v in (4, 6):
        ms = [m for m in state.mappings if m.external_ip.version == v]
        ingress = el[f"ingress{v}"]
        assert len(_keys(ingress)) == len(set(_keys(ingress))), "an external IP twice in ingress"
        assert ingress == {(str(m.external_ip), str(m.pod_ip)) for m in ms}
        for ext, pod in ingress:
            assert ipaddress.ip_address(ext).version == v == ipaddress.ip_address(pod).version
        egress = el[f"egress{v}"]
        assert len(_keys(egress)) == len(set(_keys(egress))), "a pod IP twice in egress"
        assert egress == {(str(m.pod_ip), str(m.external_ip)) for m in ms if m.egress and m.node_name == node_name}
        assert el[f"selfhairpin{v}"] == {(pod, pod) for pod, _ in egress}
        cover = interval_cover(el[f"cluster{v}"])
        assert all(ipaddress.ip_address(k).version == v for k, _ in ingress)
        for ext, _ in ingress:
            n = int(ipaddress.ip_address(ext))
            assert not any(lo <= n <= hi for ver, lo, hi in cover if ver == v), f"{ext} inside the cluster networks"
        # The filter's sets hold elements keyed by external IP, and (at the pod's node) by pod IP.
        exts = {str(m.external_ip) for m in ms}
        by_ext = {name: {e for e in el[f"{name}{v}"] if _key(e) in exts} for name in FILTER_SETS}
        by_pod = {name: el[f"{name}{v}"] - by_ext[name] for name in FILTER_SETS}
        per_port = {str(m.external_ip): m for m in ms if m.mode is Mode.PER_PORT}
        # Ranges of either family restrict an address; ranges of the other family only
        # leave it with no allowed source (denied from outside), never open.
        # So do ranges that were listed and all invalid (closed).
        ranged = {str(m.external_ip): m for m in ms if m.source_ranges or m.closed}
        sourced = {e for e, m in ranged.items() if any(r.version == v for r in m.source_ranges)}
        dispatch = dict(el[f"dispatch{v}"])
        assert set(dispatch) == set(per_port) | set(ranged)
        for ext, verdict in dispatch.items():
            assert verdict == (f"jump per_port{v}" if ext in per_port else f"jump whole_ip{v}")
        assert by_ext["filtered"] == set(dispatch)
        ports = by_ext["ports"]
        assert {e[0] for e in ports} <= set(per_port), "ports elements only for per-port external IPs"
        for ext, m in per_port.items():
            assert {(p, n) for e, p, n in ports if e == ext} == {(p.protocol, p.port) for p in m.ports}
        assert el[f"icmp{v}"] == {e for e, m in per_port.items() if m.allow_icmp}
        assert by_ext["ranged"] == set(ranged)
        assert {e for e, _ in by_ext["sources"]} == sourced
        for _, src in el[f"sources{v}"]:
            assert ipaddress.ip_network(src).version == v
        # A pod whose mappings all carry one and the same filter is filtered at its node for
        # UDP/SCTP that arrived at another one: there keyed by the pod IP (from its egress
        # mapping), everywhere else its external IPs are "away".
        groups: dict[str, list[Mapping1to1]] = {}
        for m in ms:
            groups.setdefault(str(m.pod_ip), []).append(m)
        at_pod = {pod: f for pod, g in groups.items() if (f := _at_pod(g)) is not None}
        here = {
            str(m.pod_ip): at_pod[str(m.pod_ip)]
            for m in ms
            if m.egress and m.node_name == node_name and str(m.pod_ip) in at_pod
        }
        assert el[f"away{v}"] == {
            str(m.external_ip)
            for m in ms
            if str(m.pod_ip) in at_pod
            and m.node_name is not None
            and m.node_name != node_name
            and _udp_rule(m) is not None
        }
        want_arrive, want_ports, want_ranged, want_sourced = {}, set(), set(), set()
        for pod, (ports, ranges) in here.items():
            if ports is None and ranges is None:
                continue  # lets everything in: no filter at the pod's node
            want_arrive[pod] = f"jump per_port{v}" if ports is not None else f"jump whole_ip{v}"
            want_ports |= {(pod, proto, port) for proto, port in ports or ()}
            if ranges:
                want_ranged.add(pod)
                if any(getattr(r, "version", None) == v for r in ranges):
                    want_sourced.add(pod)
        assert dict(el[f"arrive{v}"]) == want_arrive
        assert by_pod["filtered"] == set(want_arrive)
        assert by_pod["ports"] == want_ports
        assert by_pod["ranged"] == want_ranged
        assert {e for e, _ in by_pod["sources"]} == want_sourced
        assert by_pod["icmp"] == set()
        assert el[f"flows{v}"] == frozenset()
    fix4 = dict(el["icmpfix4"])
    # Row 15: the pod's own errors, keyed external IP . pod IP, on the pod's node only.
    back4 = {(ext, int(ipaddress.ip_address(pod))): (pod, ext) for pod, ext in el["egress4"]}
    assert set(fix4) == {(ext, int(ipaddress.ip_address(ext))) for ext, _ in el["ingress4"]} | set(back4)
    for key, (pod, ext) in back4.items():
        e, p = ipaddress.ip_address(ext), ipaddress.ip_address(pod)
        assert (fix4[key] + _word_sum(e) - _word_sum(p)) % 0xFFFF == 0
        assert fix4[key] == icmp4_compensation(p, e)
    for ext, pod in el["ingress4"]:
        comp = fix4[(ext, int(ipaddress.ip_address(ext)))]
        assert 0 <= comp <= 0xFFFF
        e, p = ipaddress.ip_address(ext), ipaddress.ip_address(pod)
        # Writing comp into a zero word and replacing ext by pod leaves the ones'-complement sum alone.
        assert (comp + _word_sum(p) - _word_sum(e)) % 0xFFFF == 0
        assert comp == icmp4_compensation(e, p)
    assert el["icmpguard6"] == {(ext, int(ipaddress.ip_address(ext))) for ext, _ in el["ingress6"]} | {
        (ext, int(ipaddress.ip_address(pod))) for pod, ext in el["egress6"]
    }


def check_lb(c: Cluster, doc: TableDoc) -> None:
    """``--lb-to-clusterip``, worked out the simple way: every port of every usable
    LoadBalancer IP of every LoadBalancer Service nobody manages -> its ClusterIP of that
    family, the oldest Service first; this node's pod CIDRs. Nothing with the flag off."""
    el: dict[str, Any] = dict(doc.elements)
    names = ("lbclusterip4", "lbclusterip6", "localpods4", "localpods6")
    if not c.settings.lb_to_clusterip:
        assert not any(el[n] for n in names)
        return
    managed = {service_key(o) for o in c.services if objects.parse_service(o, c.settings, []) is not None}
    first: dict[tuple[str, str], Any] = {}
    for info in sorted(
        (i for i in map(objects.parse_lb_service, c.services) if i is not None),
        key=lambda i: (i.age_key, i.ref.uid, repr(i)),
    ):
        first.setdefault((info.ref.namespace, info.ref.name), info)
    pod_cidrs, node_ips = objects.node_networks(one_per_name(c.nodes), [])
    guard = model.collapse([*c.settings.cluster_cidrs, *pod_cidrs, *c.settings.service_cidrs])
    want: dict[int, dict[Any, str]] = {4: {}, 6: {}}
    for key, info in sorted(first.items(), key=lambda kv: kv[1].age_key, reverse=True):
        if key in managed or info.ref.name == "":
            continue
        for ip in info.lb_ips:
            if model.refusal(ip, cluster=guard, node_ips=frozenset(node_ips)) is not None:
                continue
            cluster_ip = next((str(x) for x in info.cluster_ips if x.version == ip.version), None)
            for proto, port in info.ports if cluster_ip is not None else ():
                want[ip.version][(str(ip), proto, port)] = cluster_ip  # older ones overwrite
    for v in (4, 6):
        assert dict(el[f"lbclusterip{v}"]) == want[v]
        for (lb, proto, port), cluster_ip in el[f"lbclusterip{v}"]:
            assert proto in ("tcp", "udp", "sctp")
            assert 0 < port < 65536
            assert ipaddress.ip_address(lb).version == ipaddress.ip_address(cluster_ip).version == v
    own = {str(net) for net in objects.own_pod_cidrs(one_per_name(c.nodes), c.node_name)}
    assert interval_cover(el["localpods4"] | el["localpods6"]) == interval_cover(own)
    if any(el[n] for n in names[:2]):
        event("lb-to-clusterip redirect")


def _tally(state: ClusterState) -> None:
    event(f"mappings: {min(len(state.mappings), 3)}{'+' if len(state.mappings) >= 3 else ''}")
    if any(m.mode is Mode.PER_PORT for m in state.mappings):
        event("per-port mapping")
    if any(m.external_ip.version == 6 for m in state.mappings):
        event("IPv6 mapping")
    if any(m.source_ranges for m in state.mappings):
        event("source ranges")
    if any(m.closed for m in state.mappings):
        event("source ranges all invalid (closed)")
    for reason in sorted({p.reason for p in state.problems}):
        event(f"problem {reason}")


# --------------------------------------------------------------------------- properties


@props(150)
@given(clusters())
def test_model_and_compiler_never_raise_and_keep_their_invariants(c: Cluster) -> None:
    state = c.state()
    _tally(state)
    check_state(c, state)
    doc = compile_table(state, node_name=c.node_name)
    check_doc(state, doc, c.node_name)
    check_lb(c, doc)


@props(60)
@given(clusters(), st.data())
def test_state_and_table_ignore_input_order(c: Cluster, data: st.DataObject) -> None:
    shuffled = Cluster(
        services=data.draw(st.permutations(c.services)),
        slices=data.draw(st.permutations(c.slices)),
        nodes=data.draw(st.permutations(c.nodes)),
        settings=c.settings,
        node_name=c.node_name,
    )
    a, b = c.state(), shuffled.state()
    assert a.mappings == b.mappings
    assert a.cluster_networks == b.cluster_networks
    assert a.managed_services == b.managed_services
    assert a.problems == b.problems
    assert a == b
    assert json.dumps(render_table(c.doc())) == json.dumps(render_table(shuffled.doc()))


@props(60)
@given(clusters())
def test_fake_backend_accepts_every_table_and_a_second_sync_is_empty(c: Cluster) -> None:
    doc = c.doc()
    backend = FakeBackend()
    engine = Engine(backend=backend)
    assert engine.sync(doc).plan.created
    again = engine.sync(doc, full=True)
    assert again.plan.empty
    assert not again.drift
    # A restarted agent (no memory) finds nothing to do either.
    assert Engine(backend=backend).sync(doc).plan.empty


def _converges(backend: FakeBackend, desired: TableDoc) -> None:
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    current = parse_listing(listing, family="inet", name="wholeip")
    assert diff(desired, current).empty


@props(40)
@given(clusters(), clusters(), st.data())
def test_any_table_converges_to_any_other(a: Cluster, other: Cluster, data: st.DataObject) -> None:
    # B is a neighbour of A (some objects gone, some new: rollouts, deletions, new claims)
    # or, in one case out of three, an unrelated cluster.
    if data.draw(st.integers(0, 2)) == 0:
        b = other
    else:

        def keep(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            mask = data.draw(st.lists(st.booleans(), min_size=len(objs), max_size=len(objs)))
            return [o for o, k in zip(objs, mask, strict=True) if k]

        b = Cluster(
            services=keep(a.services) + other.services[:2],
            slices=keep(a.slices) + other.slices[:3],
            nodes=keep(a.nodes) + other.nodes[:1],
            settings=data.draw(st.sampled_from((a.settings, other.settings))),
            node_name=data.draw(st.sampled_from((a.node_name, other.node_name))),
        )
    doc_a, doc_b = a.doc(), b.doc()
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(doc_a)
    step = engine.sync(doc_b)  # from memory, as the agent's partial syncs do
    event("A->B rebuilt" if step.plan.rebuilt else "A->B elements only")
    _converges(backend, doc_b)
    assert engine.sync(doc_b, full=True).plan.empty
    # And back, through a plan computed against the kernel's listing.
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    plan = diff(doc_a, parse_listing(listing, family="inet", name="wholeip"))
    assert not plan.rebuilt
    Engine(backend=backend).sync(doc_a, full=True)
    _converges(backend, doc_a)


def _slice_keys(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Slices under unique keys (namespace/name, numbered when repeated)."""
    out: dict[str, dict[str, Any]] = {}
    for obj in objs:
        ns, name = service_key(obj)
        n = 0
        while f"{ns}/{name}#{n}" in out:
            n += 1
        out[f"{ns}/{name}#{n}"] = obj
    return out


def _by_key(objs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in objs:
        out.setdefault(service_key(obj), []).append(obj)
    return out


@props(40)
@given(clusters(), clusters(), st.data())
def test_index_updated_from_a_to_b_equals_a_fresh_b(a: Cluster, other: Cluster, data: st.DataObject) -> None:
    """The agent's incremental path, fed garbage too: an index holding A, told only what
    changed, equals an index loaded with B; the touched-only sync leaves the fake holding B."""

    def keep(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        mask = data.draw(st.lists(st.booleans(), min_size=len(objs), max_size=len(objs)))
        return [o for o, k in zip(objs, mask, strict=True) if k]

    b_services = keep(a.services) + other.services[:2]
    b_slices = keep(a.slices) + other.slices[:3]
    was, now = _by_key(a.services), _by_key(b_services)
    was_slices, now_slices = _slice_keys(a.slices), _slice_keys(b_slices)
    index = ClusterIndex(settings=a.settings, node_name=a.node_name, nodes=a.nodes)
    index.update(services=was, slices=was_slices)
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(index.doc())
    touched = index.update(
        services={k: now.get(k, []) for k in was.keys() | now.keys()},
        slices={k: now_slices.get(k) for k in was_slices.keys() | now_slices.keys()},
    )
    fresh = load(
        services=b_services, endpoint_slices=b_slices, nodes=a.nodes, node_name=a.node_name, settings=a.settings
    )
    assert index.state() == fresh.state()
    # Equal but for the generations of front-ends with affinity (history a fresh index
    # has not seen); those only ever send a client to a current endpoint of its front-end.
    assert without_history(index.elements) == without_history(fresh.elements)
    for old, cur in (("svcoldaddr", "svcaddr"), ("npoldaddr", "npaddr")):
        for v in (4, 6):
            live = {(k[:-1], a) for k, a in index.elements[f"{cur}{v}"]}  # type: ignore[index,misc]
            kept = {(k[:-1], a) for k, a in index.elements[f"{old}{v}"]}  # type: ignore[index,misc]
            assert kept <= live
    result = engine.sync(index.doc(), touched=touched)
    assert not result.plan.created
    assert not result.plan.rebuilt
    _converges(backend, compile_table(fresh.state(), node_name=a.node_name))


def test_examples_reach_the_compiler_with_real_mappings() -> None:
    """Garbage is mixed in, but most examples still make mappings of every kind."""
    seen: Counter[str] = Counter()

    @props(200)
    @given(clusters())
    def sample(c: Cluster) -> None:
        state = c.state()
        doc = compile_table(state, node_name=c.node_name)
        seen["examples"] += 1
        seen["mappings"] += bool(state.mappings)
        seen["several mappings"] += len(state.mappings) >= 2
        seen["per-port"] += any(m.mode is Mode.PER_PORT and m.ports for m in state.mappings)
        seen["IPv6"] += any(m.external_ip.version == 6 for m in state.mappings)
        seen["ranges"] += bool(doc.elements["sources4"] or doc.elements["sources6"])
        seen["local egress"] += bool(doc.elements["egress4"] or doc.elements["egress6"])
        seen["conflict"] += any(p.reason == "ExternalIPConflict" for p in state.problems)
        seen["refused"] += any(p.reason == "ExternalIPRefused" for p in state.problems)
        seen["shared pod"] += any(not m.egress for m in state.mappings)
        seen["garbage"] += any(p.reason.startswith("Invalid") for p in state.problems)
        seen["lb-to-clusterip"] += bool(state.lb_redirects)
        seen["delegated"] += any(f.endpoints for f in state.frontends)
        seen["node port"] += any(f.address is None for f in state.frontends)
        seen["twin node"] += len({service_key(n)[1] for n in c.nodes}) < len(c.nodes)

    sample()
    n = seen["examples"]
    assert n >= 100
    assert seen["mappings"] >= 0.5 * n, seen
    for what in ("several mappings", "per-port", "IPv6", "ranges", "local egress", "conflict", "refused"):
        assert seen[what] >= 0.05 * n, (what, seen)
    for what in ("shared pod", "garbage", "lb-to-clusterip", "delegated", "node port", "twin node"):
        assert seen[what] >= 0.02 * n, (what, seen)
