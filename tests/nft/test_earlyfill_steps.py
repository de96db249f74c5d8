"""A table filled before its rules (``Engine.stage``/``send``, then a sync that sends the rest
and the rules), on the in-memory kernel and on nf_tables in a fresh namespace (the
``backend`` fixture): the agent's early fill (:mod:`wholeip.agent.earlyfill`) at the level
of the transactions.
"""

from __future__ import annotations

import pytest

from wholeip.core import index
from wholeip.core.elements import compile_table
from wholeip.engine import Engine
from wholeip.nft.backend import Backend, Exists
from wholeip.nft.diff import diff
from wholeip.nft.doc import TableDoc
from wholeip.settings import ModelSettings
from wholeip_testkit import synth


def _desired(n: int, *, pod_offset: int = 0) -> TableDoc:
    objs = synth.cluster(n, dual_stack=True, pod_offset=pod_offset)
    return compile_table(index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings()), node_name="n1")


def _rules(backend: Backend) -> list[str]:
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    return [o["rule"]["comment"] for o in listing if "rule" in o]


def test_steps_then_one_sync_leave_the_whole_table(backend: Backend) -> None:
    engine = Engine(backend=backend, table="wholeip")
    # The index grows, and then its pods move (every mapping's value changes: the steps must
    # delete the old entries before they add the new ones).
    for desired in (_desired(0), _desired(10), _desired(40), _desired(60), _desired(60, pod_offset=7)):
        engine.send(engine.stage(desired, most=25))
        assert engine.staged
        assert _rules(backend) == []  # no packet sees the table yet
        current = backend.read_table("inet", "wholeip")
        assert current is not None
        assert engine.last is not None
        assert diff(engine.last, current).empty  # the memory is the kernel's table
    held = engine.held()
    final = _desired(60, pod_offset=7)
    total = sum(len(e) for e in final.elements.values())
    assert 0 < held < total  # (25 at most a step: some are left for the sync)
    result = engine.sync(final, full=False, touched=engine.unsent(final))
    assert result.plan.added == total - held
    assert result.plan.chains_rebuilt
    current = backend.read_table("inet", "wholeip")
    assert current is not None
    assert diff(final, current).empty
    assert _rules(backend) == [r.tag for c in final.skeleton.chains for r in final.skeleton.rules if r.chain == c.name]
    assert not engine.staged
    assert engine.sync(final, full=False, touched=engine.unsent(final)).plan.empty


def test_the_first_step_leaves_a_table_that_exists_alone(backend: Backend) -> None:
    old = _desired(5)
    Engine(backend=backend, table="wholeip").sync(old)
    engine = Engine(backend=backend, table="wholeip")
    with pytest.raises(Exists):
        engine.send(engine.stage(_desired(9), most=100))
    assert not engine.staged
    assert engine.last is None
    current = backend.read_table("inet", "wholeip")
    assert current is not None
    assert diff(old, current).empty
    assert len(_rules(backend)) == len(old.skeleton.rules)
