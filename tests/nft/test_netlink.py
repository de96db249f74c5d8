"""The netlink element reader against libnftables' own listing.

A full sync reads our table with :meth:`LibnftBackend.read_table`: declarations,
chains and rules from libnftables, elements straight over netlink
(:mod:`wholeip.nft.netlink`). Whatever it returns must equal what ``nft -j list
table`` shows, parsed: these tests fill every set of the compiled table with
every shape of element the compiler makes, in a fresh network namespace, and
compare both readings set by set.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from wholeip.core import index, model
from wholeip.core.elements import compile_table
from wholeip.engine import Engine, apply_plan
from wholeip.names import ALLOW_ICMP_ANNOTATION, EGRESS_IP_ANNOTATION, SERVICE_NAME_LABEL, WHOLE_IP_ANNOTATION
from wholeip.nft import netlink
from wholeip.nft.backend import Backend
from wholeip.nft.diff import diff
from wholeip.nft.doc import SetDecl, TableDoc
from wholeip.nft.libnft import LibnftBackend
from wholeip.nft.listing import parse_listing
from wholeip.settings import ModelSettings, PodNatSettings
from wholeip_testkit import synth
from wholeip_testkit.netns import Netns, NetnsBackend

NETLINK_SETS = {
    f"{kind}{v}"
    for v in (4, 6)
    for kind in (
        "ingress",
        "egress",
        "selfhairpin",
        "lbclusterip",
        "dispatch",
        "away",
        "arrive",
        "filtered",
        "ports",
        "icmp",
        "ranged",
        "podnat",
        "podnatport",
        "podnatself",
        "svc",
        "svcaddr",
        "svcport",
        "nodeport",
        "npaddr",
        "npport",
        "npmasq",
        "svcrefuse",
        "nprefuse",
        "svcself",
        "egresssnat",
        "egresssteer",
    )
} | {"icmpfix4", "icmpguard6", "svcuport6"}
NETLINK_SETS |= {
    f"{kind}{v}"
    for v in (4, 6)
    for kind in (
        "svcgenb",
        "npgenb",
        "svcafftime",
        "svcafftimeold",
        "npafftime",
        "npafftimeold",
        "svcoldaddr",
        "svcoldport",
        "npoldaddr",
        "npoldport",
    )
}
"""The sets a full sync reads over netlink (the others are interval or dynamic sets)."""


def _state_of(n: int) -> model.ClusterState:
    return index.build_state_from_objects(synth.cluster(n), node_name="n1", settings=ModelSettings())


def _varied_index() -> index.ClusterIndex:
    """Dual-stack Services in every mode: whole IP, per port (TCP, UDP, SCTP; some with
    ICMP echo), with source ranges (networks and single hosts, both families)."""
    objects = synth.cluster(24, dual_stack=True)
    for k, svc in enumerate(o for o in objects if o["kind"] == "Service"):
        meta, spec = svc["metadata"], svc["spec"]
        if k % 4 in (1, 3):
            meta["annotations"] = {ALLOW_ICMP_ANNOTATION: "true"} if k % 8 == 1 else {}
            meta["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
            spec["ports"] = [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "diameter", "port": 3868, "protocol": "SCTP"},
                {"name": "high", "port": 65535, "protocol": "TCP"},
            ]
        else:
            meta["annotations"] = {WHOLE_IP_ANNOTATION: "true"}
        if k % 4 in (2, 3):
            spec["loadBalancerSourceRanges"] = [
                "198.51.100.0/24",
                "192.0.2.7/32",
                "2001:db8:5::/48",
                "2001:db8:9::1/128",
            ]
    # Pods publishing ports on n1's address (podnat): TCP, UDP, SCTP, both families, the
    # highest port (the ``inet_service`` data of ``podnatport``).
    entries = [
        {"srcPort": 2525, "dstPort": 25},
        {"srcPort": 5353, "dstPort": 5353, "proto": "udp"},
        {"srcPort": 65535, "dstPort": 65535, "proto": "sctp"},
    ]
    objects += [
        {
            "kind": "Pod",
            "metadata": {"namespace": "ns", "name": f"pod{k}", "annotations": {"bln.space/podnat": json.dumps(
                {"entries": [{**e, "srcPort": e["srcPort"] - k} for e in entries]})}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIPs": [{"ip": f"10.128.200.{k}"}, {"ip": f"fd00:10:128::c8:{k}"}]},
        }
        for k in range(1, 4)
    ]  # fmt: skip
    settings = ModelSettings(
        service_cidrs=(ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:10:96::/112")),
        podnat=PodNatSettings(
            default_sources=(ipaddress.ip_address("192.0.2.11"), ipaddress.ip_address("2001:db8:2::11"))
        ),
    )
    # LoadBalancer Services nobody manages, for --lb-to-clusterip's maps.
    objects += [
        {
            "kind": "Service",
            "metadata": {"namespace": "other", "name": f"lb{k}"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": [f"10.96.1.{k}", f"fd00:10:96::1:{k}"],
                "ports": [{"port": 65535 - k, "protocol": proto} for proto in ("TCP", "UDP", "SCTP")],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": f"198.18.0.{k}"}, {"ip": f"2001:db8:18::{k}"}]}},
        }
        for k in range(1, 4)
    ]
    objects += delegated_objects()
    objects = egress_objects(objects)
    settings = dataclasses.replace(settings, lb_to_clusterip=True)
    return index.load_objects(objects, node_name="n1", settings=settings)


def _varied_doc() -> TableDoc:
    """The table of :func:`_varied_index` after the affinity Service ``dlg/d3`` got a third
    endpoint: its front-ends in their second generation (the previous slot tables)."""
    idx = _varied_index()
    idx.update(slices={f"dlg/{s['metadata']['name']}": s for s in delegated_slices(3, extra=True)})
    assert idx.elements["svcgenb4"]
    assert idx.elements["npoldaddr6"]
    return idx.doc()


def egress_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Egress IP Services (both families): one whose IP n1 holds (its members SNATed here),
    one whose IP n2 holds (n1's member steered there; n2 given an IPv6 address for that)."""
    out = [dict(o) for o in objects]
    for o in out:
        if o["kind"] == "Node" and o["metadata"]["name"] == "n2":
            o["status"] = {
                "addresses": [*o["status"]["addresses"], {"type": "InternalIP", "address": "2001:db8:2::12"}]
            }
    for k, (holder, pods) in enumerate(
        (("n1", (("n1", "10.128.250.1", "fd00:10:244::fa:1"), ("n2", "10.129.250.1", "fd00:10:244:1::fa:1"))),
         ("n2", (("n1", "10.128.250.2", "fd00:10:244::fa:2"),))),
    ):  # fmt: skip
        name = f"egress{k}"
        out.append(
            {
                "kind": "Service",
                "metadata": {"namespace": "eg", "name": name, "annotations": {EGRESS_IP_ANNOTATION: "true"}},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"ip": f"198.18.9.{k + 1}"}, {"ip": f"2001:db8:19::{k + 1}"}]}},
            }
        )
        for v in (4, 6):
            out.append(
                {
                    "kind": "EndpointSlice",
                    "metadata": {"namespace": "eg", "name": f"{name}-{v}", "labels": {SERVICE_NAME_LABEL: name}},
                    "addressType": f"IPv{v}",
                    "endpoints": [
                        {"addresses": [p[1 if v == 4 else 2]], "nodeName": p[0], "conditions": {"ready": True}}
                        for p in pods
                    ],
                }
            )
        out.append(
            {
                "kind": "ServiceL2Status",
                "metadata": {"namespace": "metallb-system", "name": f"l2-{name}"},
                "status": {"node": holder, "serviceName": name, "serviceNamespace": "eg"},
            }
        )
    return out


def delegated_slices(k: int, *, extra: bool = False) -> list[dict[str, Any]]:
    """The slices of Service ``dlg/d<k>``: endpoints on n1 and n2 (``extra``: one more on n1)."""
    out = []
    for family, pods in (
        ("IPv4", ("10.244.1.5", "10.244.2.5", "10.244.2.6", *(("10.244.1.7",) if extra else ()))),
        ("IPv6", ("fd00:10:244:1::5", "fd00:10:244:2::5", *(("fd00:10:244:1::7",) if extra else ()))),
    ):
        out.append(
            {
                "kind": "EndpointSlice",
                "metadata": {
                    "namespace": "dlg",
                    "name": f"d{k}-{family}",
                    "labels": {"kubernetes.io/service-name": f"d{k}"},
                },
                "addressType": family,
                "ports": [
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"name": "dns", "port": 5353, "protocol": "UDP"},
                    {"name": "sctp", "port": 3868, "protocol": "SCTP"},
                ],
                "endpoints": [
                    {"addresses": [a], "nodeName": "n1" if ":1::" in a or ".1." in a else "n2"} for a in pods
                ],
            }
        )
    return out


def delegated_objects() -> list[dict[str, Any]]:
    """Delegated Services (labelled for us): one with endpoints on n1 and n2 behind its
    ClusterIPs and NodePorts (TCP, UDP, SCTP, a named targetPort), one with none, and one
    with endpoints and sessionAffinity ClientIP (Maglev slots, ``svcuport6``)."""
    out: list[dict[str, Any]] = []
    for k, with_endpoints in ((1, True), (2, False), (3, True)):
        out.append(
            {
                "kind": "Service",
                "metadata": {
                    "namespace": "dlg",
                    "name": f"d{k}",
                    "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
                },
                "spec": {
                    "type": "NodePort",
                    "clusterIPs": [f"10.96.2.{k}", f"fd00:10:96::2:{k}"],
                    "sessionAffinity": "ClientIP" if k != 1 else "None",
                    "externalTrafficPolicy": "Cluster" if with_endpoints else "Local",
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP", "nodePort": 30080 + k},
                        {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP", "nodePort": 30053 + k},
                        {"name": "sctp", "port": 3868, "protocol": "SCTP"},
                    ],
                },
            }
        )
        if not with_endpoints:
            continue
        out += delegated_slices(k)
    return out


@pytest.fixture
def kernel(kernel_ok: None) -> Iterator[tuple[Netns, NetnsBackend]]:
    with Netns() as ns:
        yield ns, NetnsBackend(ns)


def _mapping(doc: TableDoc, k: int) -> tuple[str, str]:
    """The ``k``-th (external IP, pod IP) of ``ingress4``, in sorted order."""
    ext, pod = sorted(doc.elements["ingress4"], key=str)[k]  # type: ignore[misc,str-unpack]
    return str(ext), str(pod)


def _listed(backend: Backend) -> TableDoc:
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    return parse_listing(listing, family="inet", name="wholeip")


def test_every_set_reads_as_libnftables_lists_it(kernel: tuple[Netns, NetnsBackend]) -> None:
    ns, backend = kernel
    desired = _varied_doc()
    apply_plan(backend, diff(desired, None))
    read = backend.read_table("inet", "wholeip")
    listed = _listed(backend)
    assert read is not None
    assert read.skeleton == listed.skeleton
    for decl in listed.skeleton.sets:
        assert read.elements[decl.name] == listed.elements[decl.name], decl.name
        if not decl.dynamic:
            assert len(desired.elements[decl.name]) > 0, f"the test leaves {decl.name} empty"
    assert diff(desired, read).empty

    # And the elements really came over netlink, decoded here: the same sets decode.
    def decodable() -> set[str]:
        with netlink.Socket() as sock:
            layouts = sock.layouts("inet", "wholeip")
        return {d.name for d in listed.skeleton.sets if netlink.decoder(d, layouts[d.name]) is not None}

    assert ns.call(decodable) == NETLINK_SETS


def test_reading_sees_what_someone_else_changed(kernel: tuple[Netns, NetnsBackend]) -> None:
    """Drift in elements, over netlink, is seen by the engine's full sync and repaired."""
    _ns, backend = kernel
    desired = _varied_doc()
    engine = Engine(backend=backend)
    engine.sync(desired)
    T = {"family": "inet", "table": "wholeip"}
    ext, _pod = _mapping(desired, 0)
    backend.transact(
        [
            {"delete": {"element": {**T, "name": "ingress4", "elem": [ext]}}},
            {"add": {"element": {**T, "name": "ingress4", "elem": [[ext, "10.128.99.99"]]}}},
            {"add": {"element": {**T, "name": "ports6", "elem": [{"concat": ["2001:db8::77", "udp", 7]}]}}},
            {
                "add": {
                    "element": {**T, "name": "dispatch4", "elem": [["192.0.2.200", {"goto": {"target": "per_port4"}}]]}
                }
            },
        ]
    )
    read = backend.read_table("inet", "wholeip")
    assert read is not None
    assert (ext, "10.128.99.99") in read.elements["ingress4"]
    assert ("2001:db8::77", "udp", 7) in read.elements["ports6"]
    assert ("192.0.2.200", "goto per_port4") in read.elements["dispatch4"]
    assert read.elements == _listed(backend).elements
    result = engine.sync(desired, full=True)
    assert result.drift
    assert (result.plan.added, result.plan.deleted) == (1, 3)
    assert engine.sync(desired, full=True).plan.empty
    assert backend.read_table("inet", "wholeip") == _listed(backend)


def test_sets_held_exactly_come_back_as_the_known_objects(kernel: tuple[Netns, NetnsBackend]) -> None:
    """A full sync passes its memory: a set the kernel holds exactly is that very object
    (no second copy of 100,000 elements); a set that differs is read as it is."""
    _ns, backend = kernel
    desired = _varied_doc()
    apply_plan(backend, diff(desired, None))
    known = {name: set(elems) for name, elems in desired.elements.items()}
    read = backend.read_table("inet", "wholeip", known=known)
    assert read is not None
    assert {name for name, elems in read.elements.items() if elems is known.get(name)} == NETLINK_SETS
    assert read == _listed(backend)

    ext, pod = _mapping(desired, 0)
    known["ingress4"] = (known["ingress4"] - {(ext, pod)}) | {(ext, "10.128.99.99")}
    known["egress4"] = set(list(known["egress4"])[1:])  # one fewer than the kernel holds
    read = backend.read_table("inet", "wholeip", known=known)
    assert read is not None
    assert read.elements["ingress4"] is not known["ingress4"]
    assert read.elements["egress4"] is not known["egress4"]
    assert read.elements["ports4"] is known["ports4"]
    assert read == _listed(backend)


def test_an_element_that_does_not_decode_falls_back_for_its_set_only(
    kernel: tuple[Netns, NetnsBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dump where one element fails is read to its end (a socket runs one dump at a time), the set
    is listed through libnftables, and the sets after it still come over netlink."""
    _ns, backend = kernel
    desired = _varied_doc()
    apply_plan(backend, diff(desired, None))
    real = netlink.decoder
    bad = ipaddress.ip_address(_mapping(desired, 7)[0]).packed
    listed_sets: list[str] = []
    real_list_set = LibnftBackend._list_set

    def picky(decl: SetDecl, layout: netlink.Layout) -> Any:
        decode = real(decl, layout)
        if decode is None or decl.name != "ingress4":
            return decode

        def fails_on_one(raw: netlink.RawElem) -> Any:
            if raw[0] == bad:
                raise netlink.Undecodable(0, "test")
            return decode(raw)

        return fails_on_one

    def list_set(self: LibnftBackend, family: str, table: str, decl: SetDecl) -> Any:
        listed_sets.append(decl.name)
        return real_list_set(self, family, table, decl)

    monkeypatch.setattr(netlink, "decoder", picky)
    monkeypatch.setattr(LibnftBackend, "_list_set", list_set)
    for known in (None, desired.elements):
        listed_sets.clear()
        assert backend.read_table("inet", "wholeip", known=known) == _listed(backend)
        assert "ingress4" in listed_sets
        assert not NETLINK_SETS - {"ingress4"} & set(listed_sets)


def test_missing_table_reads_as_none(kernel: tuple[Netns, NetnsBackend]) -> None:
    _ns, backend = kernel
    assert backend.read_table("inet", "wholeip") is None


def test_a_commit_during_a_dump_interrupts_it_and_the_socket_stays_usable(
    kernel: tuple[Netns, NetnsBackend],
) -> None:
    """The kernel flags a dump that a commit (to any table) overlapped; the reader drains
    it, says so, and the same socket serves the next dump."""
    ns, backend = kernel
    apply_plan(backend, diff(compile_table(_state_of(40_000), node_name="n1"), None))

    def overlapped(strict: bool) -> tuple[bool, int, int]:
        with netlink.Socket() as sock:
            # The dump by hand (elements() receives it whole before decoding): take its
            # first message, commit to another table, then read on.
            attrs = netlink._attr(netlink.NFTA_SET_ELEM_LIST_TABLE, b"wholeip\0") + netlink._attr(
                netlink.NFTA_SET_ELEM_LIST_SET, b"ingress4\0"
            )
            seq = sock._send(netlink.NFT_MSG_GETSETELEM, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, "inet", attrs)
            replies = sock._replies(seq, strict=strict)
            next(replies)
            LibnftBackend().transact([{"add": {"table": {"family": "ip", "name": f"someone_else_{strict}"}}}])
            messages = 1
            try:
                for _reply in replies:
                    messages += 1
                interrupted = False
            except netlink.Interrupted:
                interrupted = True
            again = sum(len(b) for b in sock.elements("inet", "wholeip", "ingress4"))
            return interrupted, messages, again

    interrupted, messages, again = ns.call(overlapped, True)
    assert interrupted
    assert again == 40_000  # the socket serves the next dump
    interrupted, messages, again = ns.call(overlapped, False)
    assert not interrupted
    assert messages > 10  # the overlapped dump, yielded whole
    assert again == 40_000


def test_an_interrupted_set_is_read_again_alone(
    kernel: tuple[Netns, NetnsBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ns, backend = kernel
    desired = _varied_doc()
    apply_plan(backend, diff(desired, None))
    real_elements, real_list_set = netlink.Socket.elements, LibnftBackend._list_set
    dumps: list[str] = []
    listed: list[str] = []
    interruptions = {"n": 0}

    def elements(self: netlink.Socket, family: str, table: str, name: str, *, strict: bool = True) -> Any:
        dumps.append(name)
        if name == "ingress4" and interruptions["n"] > 0 and strict:
            interruptions["n"] -= 1
            raise netlink.Interrupted()
        return real_elements(self, family, table, name, strict=strict)

    def list_set(self: LibnftBackend, family: str, table: str, decl: SetDecl) -> Any:
        listed.append(decl.name)
        return real_list_set(self, family, table, decl)

    monkeypatch.setattr(netlink.Socket, "elements", elements)
    monkeypatch.setattr(LibnftBackend, "_list_set", list_set)
    # Interrupted once: dumped again. Every time: the third dump is taken as it is.
    for times, ingress_dumps, ingress_listed in ((1, 2, False), (5, 3, False)):
        dumps.clear()
        listed.clear()
        interruptions["n"] = times
        assert backend.read_table("inet", "wholeip", known=desired.elements) == _listed(backend)
        assert dumps.count("ingress4") == ingress_dumps
        assert ("ingress4" in listed) is ingress_listed
        assert all(dumps.count(name) == 1 for name in NETLINK_SETS - {"ingress4"})


# --------------------------------------------------------------------------- decoding (pure)


def _layout(key_len: int, data_len: int = 0, *, flags: int = 0, fields: tuple[int, ...] = ()) -> netlink.Layout:
    return netlink.Layout("s", flags, key_len, data_len, fields)


def test_decoder_fields_and_widths() -> None:
    v4 = bytes([192, 0, 2, 1])
    v6 = ipaddress.IPv6Address("2001:db8::1").packed
    addr_map = SetDecl("m", ("ipv4_addr",), data="ipv4_addr")
    decode = netlink.decoder(addr_map, _layout(4, 4))
    assert decode is not None
    assert decode((v4, bytes([10, 0, 0, 9]))) == ("192.0.2.1", "10.0.0.9")
    six = netlink.decoder(SetDecl("m", ("ipv6_addr",), data="ipv6_addr"), _layout(16, 16))
    assert six is not None
    assert six((v6, v6)) == ("2001:db8::1", "2001:db8::1")
    ports = netlink.decoder(SetDecl("p", ("ipv4_addr", "inet_proto", "inet_service")), _layout(12))
    assert ports is not None
    assert ports((v4 + b"\x11\0\0\0" + b"\x00\x35\0\0", None)) == ("192.0.2.1", "udp", 53)
    assert ports((v4 + b"\x2f\0\0\0" + b"\xff\xff\0\0", None)) == ("192.0.2.1", 47, 65535)
    fix = netlink.decoder(SetDecl("f", ("ipv4_addr", "integer"), data="integer"), _layout(8, 2))
    assert fix is not None
    assert fix((v4 + v4, b"\xd9\xb6")) == (("192.0.2.1", 0xC0000201), 0xD9B6)
    verdicts = netlink.decoder(SetDecl("d", ("ipv4_addr",), data="verdict"), _layout(4, 16))
    assert verdicts is not None
    assert verdicts((v4, (-3, "per_port4"))) == ("192.0.2.1", "jump per_port4")
    assert verdicts((v4, (1, ""))) == ("192.0.2.1", "accept")
    with pytest.raises(netlink.Undecodable):
        verdicts((v4, (-99, "")))
    with pytest.raises(netlink.Undecodable):
        verdicts((v4, b"\0\0\0\0"))


def test_decoder_declines_what_it_does_not_know() -> None:
    assert netlink.decoder(SetDecl("c", ("ipv4_addr",), flags=("interval",)), _layout(4, flags=4)) is None
    assert netlink.decoder(SetDecl("t", ("ipv4_addr",), flags=("timeout",), timeout=60), _layout(4, flags=16)) is None
    assert netlink.decoder(SetDecl("x", ("ether_addr",)), _layout(6)) is None
    assert netlink.decoder(SetDecl("w", ("ipv4_addr",)), _layout(16)) is None  # width disagrees
    assert netlink.decoder(SetDecl("w", ("ipv4_addr", "ipv4_addr")), _layout(12)) is None
    assert netlink.decoder(SetDecl("i", ("integer", "integer")), _layout(8)) is None  # two unknown widths
    assert netlink.decoder(SetDecl("m", ("ipv4_addr",), data="ipv6_addr"), _layout(4, 4)) is None
