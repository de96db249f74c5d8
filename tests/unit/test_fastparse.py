"""The fast paths of address parsing and UIDs agree with the standard library they skip.

``ipv4_number`` reads dotted decimal without :mod:`ipaddress`; ``special`` rules out most
addresses by their first bits; ``unpack_uid`` formats a UID without :mod:`uuid`. Each must
answer exactly as the slow way on any input, hostile text included.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from tests.unit.test_properties import corrupt, endpoint_slice, model_settings, service

from wholeip.core.compact import address_of, ipv4_number, pack_uid, unpack_uid
from wholeip.core.elements import entry_elements
from wholeip.core.model import Mode, Problem, special
from wholeip.core.objects import parse_ip, parse_service, read_service, read_slice
from wholeip.names import PROXY_NAME_LABEL, SERVICE_NAME_LABEL
from wholeip.settings import ModelSettings
from wholeip_testkit import synth


def _slow(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


octet = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(256, 9999).map(str),
    st.sampled_from(
        ["", "00", "01", "007", "0x1", "+1", "-1", " 1", "1 ", "1_0", "\u0661", "\u06f2\u06f5", "\u00b2", "a"]
    ),
)
dotted = st.lists(octet, min_size=1, max_size=6).map(".".join)
anything = st.text(alphabet="0123456789.:abcdefABCDEF% x_-+\n\u0661\u00b2", max_size=24)


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.one_of(dotted, anything))
@example("1.2.3.4")
@example("255.255.255.255")
@example("256.1.1.1")
@example("01.2.3.4")
@example("1.2.3.4 ")
@example("1.2.3")
@example("1.2.3.4.5")
@example("\u0661.2.3.4")
@example("::ffff:1.2.3.4")
@example("0.0.0.0")
def test_the_ipv4_fast_path_reads_what_ipaddress_reads(text: str) -> None:
    slow = _slow(text)
    number = ipv4_number(text)
    if number is not None:
        assert slow == ipaddress.IPv4Address(number)
    else:
        assert slow is None or slow.version == 6
    assert parse_ip(text) == (slow if "%" not in text else None)
    if slow is not None:
        assert address_of(text) == slow


def _special_slowly(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    nets = [
        "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::ffff:0:0/96", "::/96", "64:ff9b::/96", "64:ff9b:1::/48",
        "fec0::/10", "fe80::/10", "ff00::/8",
    ]  # fmt: skip
    return any(ip in ipaddress.ip_network(n) for n in nets if ipaddress.ip_network(n).version == ip.version)


v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**48 - 1),  # ::/96 and around
    st.integers(0, 2**32 - 1).map(lambda n: 0xFFFF << 32 | n),
    st.integers(0, 2**80 - 1).map(lambda n: 0x64FF9B << 96 | n),
    st.integers(0, 2**118 - 1).map(lambda n: 0xFE80 << 112 | n),
).map(ipaddress.IPv6Address)


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.one_of(v4, v6))
@example(ipaddress.IPv4Address("169.253.255.255"))
@example(ipaddress.IPv4Address("223.255.255.255"))
@example(ipaddress.IPv6Address("fe7f:ffff::"))
@example(ipaddress.IPv6Address("64:ff9a::1"))
def test_the_special_fast_reject_misses_no_special_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert (special(ip) is not None) == _special_slowly(ip)


@given(st.uuids())
def test_a_packed_uid_unpacks_as_uuid_prints_it(uid: uuid.UUID) -> None:
    packed = pack_uid(str(uid))
    assert isinstance(packed, bytes)
    assert unpack_uid(packed) == str(uid)


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40)))
@example("12345678-1234-1234-1234-1234567890ab")
@example("12345678-1234-1234-1234-1234567890AB")
@example("{12345678-1234-1234-1234-1234567890ab}")
@example("12345678123412341234-1234567890ab----")
@example("12345678-1234-1234-1234-1234567890a ")
@example("12345678-1234-1234-1234- 1234567890a")
@example("uid-1")
def test_pack_uid_packs_exactly_what_uuid_prints_back(text: str) -> None:
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        canonical = False
    packed = pack_uid(text)
    assert packed == (uuid.UUID(text).bytes if canonical else text)
    assert unpack_uid(packed) == text


# --------------------------------------------------------------------------- objects


@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data(), model_settings)
def test_read_service_answers_as_parse_service_wherever_it_answers(data: st.DataObject, s: ModelSettings) -> None:
    """The index reads a Service with :func:`read_service` and falls back to
    :func:`parse_service` where it gives up: where it answers, it must answer the same, and
    only where the long way would report nothing."""
    obj = data.draw(service().flatmap(corrupt))
    fast = read_service(obj, s)
    problems: list[Problem] = []
    slow = parse_service(obj, s, problems)
    event(f"read_service: {'gave up' if fast is False else 'unmanaged' if fast is None else 'read'}")
    if fast is False:
        return
    assert problems == []
    if fast is None:
        assert slow is None
        return
    assert slow is not None
    assert (fast.namespace, fast.name, fast.uid) == (slow.ref.namespace, slow.ref.name, slow.ref.uid)
    assert (fast.created, fast.mode, fast.allow_icmp, fast.ports) == (
        slow.created,
        slow.mode,
        slow.allow_icmp,
        slow.ports,
    )
    assert fast.external_ips == tuple(map(str, slow.external_ips))
    assert slow.source_ranges == ()
    assert not slow.closed


def test_read_service_reads_the_usual_services() -> None:
    """The fast path is taken for what clusters are made of (whole-IP and per-port)."""
    whole = synth.service(7)[0]
    per_port = {
        **whole,
        "metadata": {**whole["metadata"], "annotations": {}, "labels": {PROXY_NAME_LABEL: "wholeip"}},
    }
    for obj in (whole, per_port):
        read = read_service(obj, ModelSettings())
        assert read, obj
        assert read.external_ips == ("100.64.0.8",)


def _endpoint_refusal_slowly(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return special(ip) is not None and ip not in ipaddress.ip_network("240.0.0.0/4")


def _slice_slowly(eps: dict[str, Any]) -> tuple[Any, ...] | None:
    """What parse_slice and parse_endpoints returned when each walked the slice on its own
    with :mod:`ipaddress` (before the index read a slice once, as text)."""
    meta = eps.get("metadata") if isinstance(eps.get("metadata"), dict) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    service = labels.get(SERVICE_NAME_LABEL)
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    if not isinstance(service, str) or not service or eps.get("addressType") not in ("IPv4", "IPv6"):
        return None
    family = 4 if eps["addressType"] == "IPv4" else 6
    ports, valid = {}, {}
    for entry in eps.get("ports") if isinstance(eps.get("ports"), list) else []:
        entry = entry if isinstance(entry, dict) else {}
        number = entry.get("port")
        name = entry.get("name") if isinstance(entry.get("name"), str) else ""
        protocol = entry.get("protocol") or "TCP"
        key = (name, (protocol if isinstance(protocol, str) else "").lower())
        if isinstance(number, int) and not isinstance(number, bool):
            ports[key] = number
            if type(number) is int and 0 < number < 65536:
                valid[key] = number
    ready, every, problems = {}, {}, []
    for endpoint in eps.get("endpoints") if isinstance(eps.get("endpoints"), list) else []:
        endpoint = endpoint if isinstance(endpoint, dict) else {}
        conditions = endpoint.get("conditions") if isinstance(endpoint.get("conditions"), dict) else {}
        addresses = endpoint.get("addresses") if isinstance(endpoint.get("addresses"), list) else []
        ip = _slow(addresses[0]) if addresses and isinstance(addresses[0], str) and "%" not in addresses[0] else None
        usable = ip is not None and ip.version == family and not _endpoint_refusal_slowly(ip)
        node = endpoint.get("nodeName") if isinstance(endpoint.get("nodeName"), str) else None
        if conditions.get("ready") is not False:
            if usable:
                ready[str(ip)] = node or None
            else:
                problems.append("EndpointWithoutAddress" if not addresses else "InvalidEndpointAddress")
        if usable:
            every[str(ip)] = (
                str(ip),
                node or None,
                conditions.get("ready") is not False,
                conditions.get("serving", conditions.get("ready")) is not False,
                conditions.get("terminating") is True,
            )
    key = (namespace, service)
    return (key, family, ready, ports, problems), (key, family, tuple(every.values()), tuple(sorted(valid.items())))


@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_slice_read_once_reads_as_each_reader_did_alone(data: st.DataObject) -> None:
    eps = data.draw(endpoint_slice().flatmap(corrupt))
    both = read_slice(eps)
    slow = _slice_slowly(eps)
    if slow is None:
        assert both is None
        return
    assert both is not None
    info, every = both
    assert (info.service, info.family, info.ready, info.ports) == slow[0][:4]
    assert [p.reason for p in info.problems] == slow[0][4]
    assert tuple(every) == slow[1]


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.one_of(v4, v6), st.one_of(v4, v6), st.booleans(), st.sampled_from(("n1", "n2", None)))
@example(ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("0.0.0.0"), True, "n1")
@example(ipaddress.IPv4Address("255.255.255.255"), ipaddress.IPv4Address("0.0.0.0"), True, "n1")
@example(ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("255.255.255.255"), True, "n1")
def test_elements_from_text_are_the_elements_from_address_objects(
    ext: ipaddress.IPv4Address | ipaddress.IPv6Address,
    pod: ipaddress.IPv4Address | ipaddress.IPv6Address,
    egress: bool,
    pod_node: str | None,
) -> None:
    """entry_elements reads two dotted IPv4 addresses by their numbers (the ICMP checksum
    word without the bytes); given the address objects it takes the long way."""
    if ext.version != pod.version:
        return
    common: dict[str, Any] = {
        "egress": egress,
        "pod_node": pod_node,
        "node_name": "n1",
        "mode": Mode.WHOLE_IP,
        "allow_icmp": False,
        "ports": (),
        "source_ranges": (),
    }
    fast = entry_elements(str(ext), str(pod), **common)
    assert fast == entry_elements(str(ext), str(pod), addresses=(ext, pod), **common)
