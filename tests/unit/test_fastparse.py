"""The fast paths of address parsing and UIDs agree with the standard library they skip.

``ipv4_number`` reads dotted decimal without :mod:`ipaddress`; ``special`` rules out most
addresses by their first bits; ``unpack_uid`` formats a UID without :mod:`uuid`. Each must
answer exactly as the slow way on any input, hostile text included.
"""

from __future__ import annotations

import ipaddress
import uuid

from hypothesis import example, given, settings
from hypothesis import strategies as st

from wholeip.core.compact import address_of, ipv4_number, pack_uid, unpack_uid
from wholeip.core.model import special
from wholeip.core.objects import parse_ip


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
