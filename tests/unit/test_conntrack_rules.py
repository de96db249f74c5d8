"""Stale conntrack entries, without a kernel: which pairs a plan makes stale, which entries
they match, how plans merge, and the cleaner's behaviour over a fake ctnetlink."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import AsyncIterator, Iterable, Mapping

import pytest
from structlog.testing import capture_logs

from wholeip.agent.conntrack import (
    ConntrackCleaner,
    Entry,
    Pair,
    Query,
    Stale,
    Tuples,
    stale_pairs,
    whole_is_cheaper,
)
from wholeip.core.ruleset import skeleton
from wholeip.nft.diff import Plan, diff, rebuild
from wholeip.nft.doc import Elem, TableDoc

A = ipaddress.ip_address
E, E2, E6 = A("203.0.113.10"), A("203.0.113.20"), A("2001:db8:100::10")
P1, P2, Q = A("10.244.1.10"), A("10.244.2.20"), A("10.244.3.30")
P6 = A("fd00:10:244:1::10")
C = A("10.244.9.9")  # a client pod
NODE = A("192.0.2.11")


def table(
    ingress: Mapping[str, str] | None = None, egress: Mapping[str, str] | None = None, **more: Iterable[Elem]
) -> TableDoc:
    elements: dict[str, frozenset[Elem]] = {}
    for name, pairs in (("ingress", ingress or {}), ("egress", egress or {})):
        for v in (4, 6):
            elements[f"{name}{v}"] = frozenset((k, val) for k, val in pairs.items() if (":" in k) == (v == 6))
    elements |= {name: frozenset(elems) for name, elems in more.items()}
    return TableDoc("inet", "wholeip", skeleton(), elements)


def plan(before: TableDoc | None, after: TableDoc) -> Plan:
    return diff(after, before)


# --------------------------------------------------------------------------- stale_pairs


def test_stale_pairs_from_ingress_and_egress_removals() -> None:
    removed: dict[str, frozenset[Elem]] = {
        "ingress4": frozenset({(str(E), str(P1))}),
        "ingress6": frozenset({("2001:db8:100:0::10", "fd00:10:244:1:0::10")}),  # not canonical
        "egress4": frozenset({(str(P1), str(E))}),
        "cluster4": frozenset({"10.244.0.0/16"}),  # not a mapping
        "ports4": frozenset({(str(E), "tcp", 80)}),
    }
    assert stale_pairs(removed) == {Pair(E, P1), Pair(E6, P6), Pair(E, P1, egress=True)}


def test_stale_pairs_ignores_what_is_not_an_address_pair() -> None:
    removed: dict[str, frozenset[Elem]] = {
        "ingress4": frozenset({("nonsense", str(P1)), str(E), (str(E), str(P6))}),
    }
    assert stale_pairs(removed) == frozenset()


# --------------------------------------------------------------------------- Stale.of


def test_a_moved_mapping_is_stale_with_its_old_pod_and_mapped_to_the_new() -> None:
    stale = Stale.of(plan(table({str(E): str(P1)}), table({str(E): str(P2)})))
    assert stale.pairs == {Pair(E, P1)}
    assert stale.mapped == {E: P2}


def test_a_removed_mapping_leaves_no_current_pod() -> None:
    stale = Stale.of(plan(table({str(E): str(P1), str(E2): str(Q)}), table({str(E2): str(Q)})))
    assert stale.pairs == {Pair(E, P1)}
    assert stale.mapped == {}


def test_a_new_mapping_makes_untranslated_flows_stale() -> None:
    stale = Stale.of(plan(table({str(E2): str(Q)}), table({str(E): str(P1), str(E2): str(Q)})))
    assert stale.pairs == frozenset()
    assert stale.mapped == {E: P1}
    assert not stale.empty


def test_egress_removal_is_a_pair_of_its_own() -> None:
    before = table({str(E): str(P1)}, {str(P1): str(E)})
    after = table({str(E): str(P1)}, {str(P1): str(E2)})
    stale = Stale.of(plan(before, after))
    assert stale.pairs == {Pair(E, P1, egress=True)}
    assert stale.mapped == {}
    assert stale.egress_now == {P1: E2}


def test_other_changes_make_nothing_stale() -> None:
    before = table({str(E): str(P1)}, ports4={(str(E), "tcp", 80)})
    after = table({str(E): str(P1)}, ports4={(str(E), "udp", 53)})
    assert Stale.of(plan(before, after)).empty


def test_a_created_table_makes_nothing_stale() -> None:
    assert Stale.of(plan(None, table({str(E): str(P1)}))).empty


def test_a_rebuilt_table_counts_only_what_it_changed() -> None:
    before = table({str(E): str(P1), str(E2): str(Q)})
    after = table({str(E): str(P2), str(E2): str(Q), "203.0.113.30": str(P1)})
    p = rebuild(after, before)
    assert p.rebuilt
    stale = Stale.of(p)
    assert stale.pairs == {Pair(E, P1)}
    assert stale.mapped == {}  # a rebuild writes every element: which are new, it cannot tell


# --------------------------------------------------------------------------- matches


def ct(orig: tuple[str, str], reply: tuple[str, str]) -> Tuples:
    return Tuples(A(orig[0]), A(orig[1]), A(reply[0]), A(reply[1]))


MOVED = Stale(frozenset({Pair(E, P1)}), {E: P2})
GONE = Stale(frozenset({Pair(E, P1)}))
EGRESS_GONE = Stale(frozenset({Pair(E, P1, egress=True)}))


@pytest.mark.parametrize(
    ("stale", "entry", "expected"),
    [
        # hairpin from a pod to E, DNATed to the old pod
        (MOVED, ct((str(C), str(E)), (str(P1), str(C))), True),
        (GONE, ct((str(C), str(E)), (str(P1), str(C))), True),
        # from the node itself (hairpin_output)
        (GONE, ct((str(NODE), str(E)), (str(P1), str(NODE))), True),
        # already DNATed to the new pod: right as it is
        (MOVED, ct((str(C), str(E)), (str(P2), str(C))), False),
        # untranslated (began while E was not mapped): stale once E is mapped ...
        (MOVED, ct((str(C), str(E)), (str(E), str(C))), True),
        # ... but not when E is mapped to nothing now
        (GONE, ct((str(C), str(E)), (str(E), str(C))), False),
        # the old pod's self-hairpin: DNATed back to itself, SNATed to E
        (GONE, ct((str(P1), str(E)), (str(P1), str(E))), True),
        # a direct flow to the old pod's own address never involved E
        (GONE, ct((str(C), str(P1)), (str(P1), str(C))), False),
        (MOVED, ct((str(C), str(P1)), (str(P1), str(C))), False),
        # another external IP, even on the same old pod
        (GONE, ct((str(C), str(E2)), (str(P1), str(C))), False),
        # the old pod's own east-west flows
        (GONE, ct((str(P1), str(C)), (str(C), str(P1))), False),
        # egress pair: P1's self-hairpin through another of its IPs, SNATed to the old egress E
        (EGRESS_GONE, ct((str(P1), str(E2)), (str(P1), str(E))), True),
        # ... but not P1's hairpin flows to E from others (E still maps to P1)
        (EGRESS_GONE, ct((str(C), str(E)), (str(P1), str(C))), False),
        (EGRESS_GONE, ct((str(P1), str(C)), (str(C), str(P1))), False),
        # IPv6
        (Stale(frozenset({Pair(E6, P6)})), ct(("fd00:10:244:2::20", str(E6)), (str(P6), "fd00:10:244:2::20")), True),
    ],
)
def test_matches(stale: Stale, entry: Tuples, expected: bool) -> None:
    assert stale.matches(entry) is expected


def test_every_match_is_found_by_one_of_the_queries() -> None:
    stale = Stale(frozenset({Pair(E, P1), Pair(E2, Q, egress=True), Pair(E6, P6)}), {A("203.0.113.30"): P2})
    assert set(stale.queries()) == {
        Query(orig_dst=E),
        Query(orig_dst=A("203.0.113.30")),
        Query(orig_dst=E6),
        Query(orig_src=Q, reply_src=Q),
    }
    entries = [
        ct((str(C), str(E)), (str(P1), str(C))),
        ct((str(Q), "203.0.113.99"), (str(Q), str(E2))),
        ct((str(C), "203.0.113.30"), ("203.0.113.30", str(C))),
        ct(("fd00::1", str(E6)), (str(P6), "fd00::1")),
    ]
    for entry in entries:
        assert stale.matches(entry)
        assert any(q.accepts(entry) for q in stale.queries()), entry


# --------------------------------------------------------------------------- then


def test_then_a_flip_back_keeps_the_entries_of_the_pod_that_is_current_again() -> None:
    there = Stale(frozenset({Pair(E, P1)}), {E: P2})
    back = Stale(frozenset({Pair(E, P2)}), {E: P1})
    merged = there.then(back)
    assert merged.pairs == {Pair(E, P2)}
    assert merged.mapped == {E: P1}
    assert not merged.matches(ct((str(C), str(E)), (str(P1), str(C))))
    assert merged.matches(ct((str(C), str(E)), (str(P2), str(C))))


def test_then_a_removal_after_a_move_forgets_the_move() -> None:
    merged = Stale(frozenset({Pair(E, P1)}), {E: P2}).then(Stale(frozenset({Pair(E, P2)})))
    assert merged.pairs == {Pair(E, P1), Pair(E, P2)}
    assert merged.mapped == {}
    assert not merged.matches(ct((str(C), str(E)), (str(E), str(C))))  # E is nobody's now


def test_then_a_new_pod_after_a_removal() -> None:
    merged = Stale(frozenset({Pair(E, P1)})).then(Stale(mapped={E: P2}))
    assert merged.mapped == {E: P2}
    assert merged.matches(ct((str(C), str(E)), (str(E), str(C))))  # began in the gap
    assert merged.matches(ct((str(C), str(E)), (str(P1), str(C))))
    assert not merged.matches(ct((str(C), str(E)), (str(P2), str(C))))


def test_then_egress_given_back() -> None:
    gone = Stale(frozenset({Pair(E, P1, egress=True)}), egress_now={P1: E2})
    back = Stale(frozenset({Pair(E2, P1, egress=True)}), egress_now={P1: E})
    assert gone.then(back).pairs == {Pair(E2, P1, egress=True)}


def test_then_keeps_unrelated_ips() -> None:
    merged = Stale(frozenset({Pair(E, P1)}), {E: P2}).then(Stale(frozenset({Pair(E2, Q)})))
    assert merged.pairs == {Pair(E, P1), Pair(E2, Q)}
    assert merged.mapped == {E: P2}


# --------------------------------------------------------------------------- the cleaner, on a fake ctnetlink


class FakeKernel:
    """A conntrack table; ``filters`` says which IP versions it filters dumps for."""

    def __init__(self, entries: Iterable[Tuples], *, filters: Iterable[int] = (4, 6)) -> None:
        self.entries = [Entry(t, ident=(i,)) for i, t in enumerate(entries)]
        self.filters = set(filters)
        self.dumps: list[tuple[int, Query | None]] = []
        self.count: int | None = None
        """The size of the table it reports (None: it cannot say)."""
        self.fail: Exception | None = None
        self.vanish: set[int] = set()  # entries that expire between dump and delete
        self.closed = 0
        self.made = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self) -> FakeNetlink:
        self.made += 1
        return FakeNetlink(self)

    def left(self) -> list[Tuples]:
        return [e.tuples for e in self.entries]


class FakeNetlink:
    def __init__(self, kernel: FakeKernel) -> None:
        self.k = kernel

    async def dump(self, version: int, query: Query | None) -> AsyncIterator[Entry]:
        self.k.entered.set()
        if self.k.gate is not None:
            self.k.gate.wait(10)
        self.k.dumps.append((version, query))
        if self.k.fail is not None:
            raise self.k.fail
        for e in list(self.k.entries):
            if e.tuples.orig_src.version != version:
                continue
            if query is None or version not in self.k.filters or query.accepts(e.tuples):
                yield e

    async def delete(self, entry: Entry) -> bool:
        if entry.ident[0] in self.k.vanish:
            self.k.entries.remove(entry)
            return False
        if entry in self.k.entries:
            self.k.entries.remove(entry)
            return True
        return False

    def count(self) -> int | None:
        return self.k.count

    async def aclose(self) -> None:
        self.k.closed += 1


HAIRPIN_OLD = ct((str(C), str(E)), (str(P1), str(C)))
HAIRPIN_NEW = ct((str(C), str(E)), (str(P2), str(C)))
DIRECT_OLD = ct((str(C), str(P1)), (str(P1), str(C)))
OTHER_IP = ct((str(C), str(E2)), (str(Q), str(C)))
HAIRPIN_V6 = ct(("fd00:10:244:2::20", str(E6)), (str(P6), "fd00:10:244:2::20"))
UNRELATED_V6 = ct(("fd00:10:244:2::20", "2001:db8:100::99"), ("fd00:10:244:9::9", "fd00:10:244:2::20"))
EVERYTHING = [HAIRPIN_OLD, HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, HAIRPIN_V6, UNRELATED_V6]
STALE = Stale(frozenset({Pair(E, P1), Pair(E6, P6)}), {E: P2})


def test_cleaner_deletes_the_stale_entries_and_nothing_else() -> None:
    kernel = FakeKernel(EVERYTHING)
    counted: list[int] = []
    cleaner = ConntrackCleaner(background=False, netlink=kernel, on_deleted=counted.append)
    assert cleaner.clean(STALE) == 2
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, UNRELATED_V6]
    assert counted == [2]
    assert kernel.closed == 1
    # IPv4 filtered by the kernel, one query per external IP; IPv6 dumped whole (the kernel's
    # IPv6 filter is inverted), once.
    assert kernel.dumps == [(4, Query(orig_dst=E)), (6, None)]


def test_cleaner_counts_only_what_it_deleted() -> None:
    kernel = FakeKernel(EVERYTHING)
    kernel.vanish = {0}  # HAIRPIN_OLD times out between the dump and the delete
    cleaner = ConntrackCleaner(background=False, netlink=kernel)
    assert cleaner.clean(STALE) == 1
    assert cleaner.deleted_total == 1


def test_cleaner_falls_back_to_whole_dumps_when_the_kernel_does_not_filter() -> None:
    kernel = FakeKernel(EVERYTHING, filters=())
    with capture_logs() as logs:
        cleaner = ConntrackCleaner(background=False, netlink=kernel)
        assert cleaner.clean(STALE) == 2
        assert cleaner.clean(STALE) == 0
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, UNRELATED_V6]
    # The first answer gave it away; from then on IPv4 is dumped whole too, once a run.
    assert kernel.dumps == [(4, Query(orig_dst=E)), (4, None), (6, None), (4, None), (6, None)]
    assert sum("ignores conntrack dump filters" in e["event"] for e in logs) == 1


def test_cleaner_dumps_a_family_whole_once_when_a_run_has_many_queries() -> None:
    """A mass removal: more filtered IPv4 dumps than ``whole_after`` become one whole dump,
    for that run only; the same entries go."""
    many = [A(f"203.0.113.{i}") for i in range(100, 106)]
    stale = Stale(frozenset(Pair(e, P1) for e in many) | {Pair(E, P1)}, {E: P2})
    entries = [ct((str(C), str(e)), (str(P1), str(C))) for e in many]
    kernel = FakeKernel([*EVERYTHING, *entries])
    cleaner = ConntrackCleaner(background=False, netlink=kernel, whole_after=5)
    assert cleaner.clean(stale) == 1 + len(many)  # HAIRPIN_OLD and the six
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, HAIRPIN_V6, UNRELATED_V6]
    assert kernel.dumps == [(4, None)]

    kernel.dumps.clear()
    assert cleaner.clean(Stale(frozenset({Pair(E, P1)}), {E: P2})) == 0
    assert kernel.dumps == [(4, Query(orig_dst=E))]  # a small run is filtered again


def test_cleaner_takes_the_cheaper_way_for_the_tables_size() -> None:
    """A small table is dumped whole once rather than once per query, a big one is asked
    with kernel-filtered dumps; the same entries go either way."""
    many = [A(f"203.0.113.{i}") for i in range(100, 103)]
    stale = Stale(frozenset(Pair(e, P1) for e in many) | {Pair(E, P1)}, {E: P2})
    entries = [ct((str(C), str(e)), (str(P1), str(C))) for e in many]
    for size, dumps4 in ((len(EVERYTHING) + len(entries), [(4, None)]), (1_000_000, None)):
        kernel = FakeKernel([*EVERYTHING, *entries])
        kernel.count = size
        cleaner = ConntrackCleaner(background=False, netlink=kernel)
        assert cleaner.clean(stale) == 1 + len(many)
        assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, HAIRPIN_V6, UNRELATED_V6]
        ipv4 = [d for d in kernel.dumps if d[0] == 4]
        assert ipv4 == (dumps4 or [(4, q) for q in stale.queries() if q.version == 4]), size
        assert len(ipv4) == (1 if size < 1000 else 4)


def test_whole_is_cheaper_by_the_measured_costs() -> None:
    # One whole dump decodes every entry (0.18 ms each); a filtered one costs 4 ms and the
    # kernel's walk. Unknown size: more than ``whole_after`` queries.
    cases = [(1, 20), (1, 30), (100, 2_000), (100, 5_000), (10_000, 100_000), (1_000, 100_000), (1_000, None)]
    assert [whole_is_cheaper(q, n) for q, n in cases] == [True, False, True, False, True, False, False]
    assert whole_is_cheaper(1_001, None)
    assert whole_is_cheaper(6, None, whole_after=5)


def test_cleaner_never_raises_and_logs_a_failure_once() -> None:
    kernel = FakeKernel(EVERYTHING)
    kernel.fail = OSError(93, "Protocol not supported")
    cleaner = ConntrackCleaner(background=False, netlink=kernel)
    moved = plan(table({str(E): str(P1)}), table({str(E): str(P2)}))
    with capture_logs() as logs:
        cleaner(moved)
        cleaner(moved)
        kernel.fail = None
        cleaner(moved)
    levels = [(e["log_level"], e["event"]) for e in logs]
    assert levels[0] == ("warning", "conntrack cleanup failed; stale entries are left to time out")
    assert levels[1][0] == "debug"
    assert ("info", "conntrack cleanup works again") in levels
    assert cleaner.failures == 2
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, HAIRPIN_V6, UNRELATED_V6]


def test_cleaner_ignores_plans_that_make_nothing_stale() -> None:
    kernel = FakeKernel(EVERYTHING)
    cleaner = ConntrackCleaner(background=False, netlink=kernel)
    cleaner(plan(None, table({str(E): str(P1)})))
    cleaner(Plan(commands=()))
    assert kernel.dumps == []


def test_background_cleaner_merges_what_arrives_while_it_works() -> None:
    kernel = FakeKernel(EVERYTHING)
    kernel.gate = threading.Event()
    cleaner = ConntrackCleaner(netlink=kernel)
    cleaner(plan(table(), table({"203.0.113.77": str(P1)})))  # blocks in its first dump until the gate opens
    assert kernel.entered.wait(10)
    # Meanwhile: E moves from P1 to P2, then E6 goes away.
    t1 = table({str(E): str(P1), str(E6): str(P6)})
    t2 = table({str(E): str(P2), str(E6): str(P6)})
    t3 = table({str(E): str(P2)})
    cleaner(plan(t1, t2))
    cleaner(plan(t2, t3))
    kernel.gate.set()
    assert cleaner.wait_idle(10)
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, UNRELATED_V6]
    # One run for the first plan, one for the two merged ones: one client for both, kept
    # open (a fresh socket and loop per run cost each change of the agent ~10 ms of CPU).
    assert kernel.dumps == [(4, Query(orig_dst=A("203.0.113.77"))), (4, Query(orig_dst=E)), (6, None)]
    assert (kernel.made, kernel.closed) == (1, 0)
    assert cleaner.deleted_total == 2


def test_background_cleaner_opens_another_client_after_a_failure() -> None:
    kernel = FakeKernel(EVERYTHING)
    kernel.fail = OSError("netlink socket went away")
    cleaner = ConntrackCleaner(netlink=kernel)
    cleaner(plan(table({str(E): str(P1)}), table({str(E): str(P2)})))
    assert cleaner.wait_idle(10)
    assert (cleaner.failures, kernel.made, kernel.closed) == (1, 1, 1)  # the failed client closed
    kernel.fail = None
    cleaner(plan(table({str(E): str(P1), str(E6): str(P6)}), table({str(E): str(P2)})))
    assert cleaner.wait_idle(10)
    assert (cleaner.failures, kernel.made, kernel.closed) == (1, 2, 1)
    assert kernel.left() == [HAIRPIN_NEW, DIRECT_OLD, OTHER_IP, UNRELATED_V6]


# --------------------------------------------------------------------------- delegated slots


def _slots(front: tuple[str, str, int], endpoints: list[str]) -> set[Elem]:
    return {((*front, i), e) for i, e in enumerate(endpoints)}


def test_an_endpoint_that_keeps_other_slots_is_not_stale() -> None:
    """Maglev gives a newcomer slots of endpoints that stay: only an endpoint that no slot of
    the front-end holds any more is stale (its UDP entries deleted), also after a rebuild,
    which lists nothing as inserted."""
    udp = ("10.96.0.10", "udp", 53)
    a, b, c = "10.244.1.10", "10.244.2.20", "10.244.3.30"
    before = table(svcaddr4=_slots(udp, [a, b, a, b]))
    joined = table(svcaddr4=_slots(udp, [a, b, c, b]))  # slot 2: a -> c; a keeps slot 0
    assert Stale.of(plan(before, joined)).endpoints == frozenset()
    left = table(svcaddr4=_slots(udp, [c, c, c, c]))  # a and b gone
    assert Stale.of(plan(before, left)).endpoints == {(A("10.96.0.10"), 17, A(a)), (A("10.96.0.10"), 17, A(b))}
    assert Stale.of(rebuild(joined, before)).endpoints == frozenset()
    node_port = ("udp", 30053)
    np_before = table(npaddr4=_slots(node_port, [a, b, a, b]))
    np_joined = table(npaddr4=_slots(node_port, [a, b, c, b]))
    assert Stale.of(plan(np_before, np_joined)).node_ports == frozenset()
    np_left = table(npaddr4=_slots(node_port, [b, b, c, b]))
    assert Stale.of(plan(np_before, np_left)).node_ports == {(17, 30053, A(a))}
