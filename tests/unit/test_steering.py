"""Egress steering's pure part: masks, slot marks, and stable slot assignment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wholeip.core.steering import (
    DEFAULT_MARK_MASK,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE_BASE,
    MaskError,
    SteeringConfig,
    assign,
    assign_slots,
    check_mask,
    parse_mask,
    slot_capacity,
    slot_mark,
)
from wholeip.settings import EgressSettings

# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("mask", "capacity"),
    [(0x1, 1), (0x7F, 127), (0xFF, 255), (0x00F00000, 15), (0x3000, 3), (0x80000000, 1), (0xFFFFFFFF, 2**32 - 1)],
)
def test_capacity_is_every_value_of_the_bits_but_zero(mask: int, capacity: int) -> None:
    assert slot_capacity(mask) == capacity


@pytest.mark.parametrize(
    ("slot", "mask", "mark"),
    [(0, 0x7F, 0), (1, 0x7F, 1), (127, 0x7F, 0x7F), (1, 0x00F00000, 0x00100000), (15, 0x00F00000, 0x00F00000)],
)
def test_slot_mark_shifts_the_slot_into_the_mask(slot: int, mask: int, mark: int) -> None:
    assert slot_mark(slot, mask) == mark


@pytest.mark.parametrize("slot", [-1, 16, 1000])
def test_slot_mark_refuses_a_slot_the_mask_cannot_hold(slot: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.15"):
        slot_mark(slot, 0x00F00000)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (0, "non-zero"),
        (-1, "non-zero"),
        (1 << 32, "32 bits"),
        (0x5, "contiguous"),
        (0x00F0F000, "contiguous"),
        (0x80000001, "contiguous"),
    ],
)
def test_a_bad_mask_is_refused_with_a_reason(mask: int, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        check_mask(mask)
    with pytest.raises(MaskError, match=message):
        SteeringConfig(mark_mask=mask)


@pytest.mark.parametrize(("text", "mask"), [("0x7f", 0x7F), ("127", 127), (" 0x00f00000 ", 0x00F00000), ("0o17", 15)])
def test_parse_mask(text: str, mask: int) -> None:
    assert parse_mask(text) == mask


@pytest.mark.parametrize(("text", "message"), [("seven", "not an integer"), ("0x5", "contiguous"), ("", "integer")])
def test_parse_mask_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        parse_mask(text)


@given(st.integers(0, 31), st.integers(1, 32))
def test_every_contiguous_run_is_a_mask_and_its_marks_stay_inside(low: int, width: int) -> None:
    width = min(width, 32 - low)
    mask = ((1 << width) - 1) << low
    capacity = slot_capacity(mask)
    assert capacity == (1 << width) - 1
    for slot in {1, capacity // 2 or 1, capacity}:
        mark = slot_mark(slot, mask)
        assert mark & ~mask == 0
        assert mark != 0


def test_marks_of_different_slots_differ_under_the_mask() -> None:
    marks = [slot_mark(s, DEFAULT_MARK_MASK) for s in range(1, slot_capacity(DEFAULT_MARK_MASK) + 1)]
    assert len({m & DEFAULT_MARK_MASK for m in marks}) == len(marks)


# --------------------------------------------------------------------------- the configuration


KNOWN_MARKS = {
    "kube-proxy masquerade and drop": 0x0000C000,
    "Calico (iptablesMarkMask default)": 0xFFFF0000,
    "Cilium magic": 0x00000F00,
    "CNI portmap masquerade": 0x00002000,
    "AWS VPC CNI connmark": 0x00000080,
    "Weave Net": 0x00060000,
    "Tailscale": 0x000C0000,
    "MetalEG default mask": 0x00F00000,
}


@pytest.mark.parametrize("user", sorted(KNOWN_MARKS))
def test_the_default_mask_shares_no_bit_with_known_users(user: str) -> None:
    assert DEFAULT_MARK_MASK & KNOWN_MARKS[user] == 0


def test_defaults_come_from_the_settings_and_fit_together() -> None:
    config = SteeringConfig()
    assert config == SteeringConfig.from_settings(EgressSettings())
    assert (config.mark_mask, config.priority, config.table_base) == (
        DEFAULT_MARK_MASK,
        DEFAULT_RULE_PRIORITY,
        DEFAULT_TABLE_BASE,
    )
    assert 100 < config.priority < 32766  # after Cilium's moved local table, before main
    assert config.capacity == 127
    assert config.table(1) == 300001
    assert config.table(127) == 300127
    assert config.slot_of_table(300001) == 1
    assert config.slot_of_table(300000) is None
    assert config.slot_of_table(300128) is None
    assert config.mark(3) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": 0}, "1-32765"),
        ({"priority": 32766}, "1-32765"),
        ({"table_base": 200}, "at least 255"),
        ({"table_base": 0xFFFFFFFF - 10}, "below 2\\*\\*32-1"),
    ],
)
def test_a_bad_configuration_is_refused_with_a_reason(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SteeringConfig(**kwargs)


def test_table_of_a_slot_outside_the_mask_is_refused() -> None:
    config = SteeringConfig(mark_mask=0x3)
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        config.table(4)
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        config.table(0)


# --------------------------------------------------------------------------- slots


def test_new_holders_take_the_lowest_free_slots_in_name_order() -> None:
    assert assign_slots(["c", "a", "b"], {}, 127) == {"a": 1, "b": 2, "c": 3}


def test_a_holder_keeps_its_slot_when_others_come_and_go() -> None:
    first = assign_slots(["a", "b", "c"], {}, 127)
    second = assign_slots(["c", "aa", "b"], first, 127)
    assert second == {"b": 2, "c": 3, "aa": 1}  # a's slot freed and reused by the newcomer
    third = assign_slots(["c", "d"], second, 127)
    assert third == {"c": 3, "d": 1}


def test_holders_beyond_the_capacity_get_slot_zero_deterministically() -> None:
    slots = assign_slots(["e", "d", "c", "b", "a"], {}, 3)
    assert slots == {"a": 1, "b": 2, "c": 3, "d": 0, "e": 0}
    result = assign(["e", "d", "c", "b", "a"], {}, 3)
    assert result.slots == {"a": 1, "b": 2, "c": 3}
    assert result.left_out == {"d", "e"}


def test_a_holder_with_a_slot_keeps_it_over_a_newcomer_that_sorts_first() -> None:
    slots = assign_slots(["z", "a"], {"z": 1}, 1)
    assert slots == {"z": 1, "a": 0}


def test_a_freed_slot_goes_to_a_holder_left_out_before() -> None:
    before = assign_slots(["a", "b", "c"], {}, 2)
    assert before["c"] == 0
    after = assign_slots(["b", "c"], before, 2)
    assert after == {"b": 2, "c": 1}


def test_bad_previous_slots_are_treated_as_new() -> None:
    previous = {"a": 5, "b": 0, "c": -1, "d": 2, "e": 2}
    assert assign_slots(["a", "b", "c", "d", "e"], previous, 3) == {"d": 2, "a": 1, "b": 3, "c": 0, "e": 0}


names = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sets(names, max_size=12), min_size=1, max_size=8), st.integers(1, 10))
def test_assignment_is_stable_unique_and_complete(rounds: list[set[str]], capacity: int) -> None:
    previous: dict[str, int] = {}
    for holders in rounds:
        slots = assign_slots(holders, previous, capacity)
        assert set(slots) == holders
        used = [s for s in slots.values() if s]
        assert len(used) == len(set(used))
        assert all(1 <= s <= capacity for s in used)
        # As many holders steered as there is room for.
        assert len(used) == min(len(holders), capacity)
        # Stable: a holder that had a slot and is still there keeps it.
        for name, slot in previous.items():
            if slot and name in holders:
                assert slots[name] == slot
        # Deterministic: the same input gives the same answer, in any order.
        assert assign_slots(sorted(holders, reverse=True), previous, capacity) == slots
        previous = slots


@settings(max_examples=200, deadline=None)
@given(st.sets(names, max_size=12), st.sets(names, max_size=12), st.integers(1, 10))
def test_new_holders_fill_the_lowest_free_slots(old: set[str], new: set[str], capacity: int) -> None:
    previous = assign_slots(old, {}, capacity)
    slots = assign_slots(old | new, previous, capacity)
    kept = {slots[n] for n in old if previous[n]}
    free = [s for s in range(1, capacity + 1) if s not in kept]
    newcomers = sorted(n for n in (old | new) if not (n in old and previous[n]))
    expected = dict(zip(newcomers, free, strict=False))
    for name in newcomers:
        assert slots[name] == expected.get(name, 0)
