"""Liveness when the API server is gone (issue 15 item 1), in virtual time.

The informers are real :class:`~wholeip.kube.informer.Informer` objects whose clock is
a variable: ``failing_since`` is set the way a failed list or watch sets it, and the
clock is moved instead of waited for.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wholeip.agent.health import Health
from wholeip.kube import informer as informer_module
from wholeip.kube.informer import Informer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Loop:
    age: float = 0.0

    @property
    def first_commit(self) -> object:
        raise AssertionError("liveness does not look at readiness")

    def pending_age(self) -> float:
        return self.age


async def _never(**_: object) -> object:
    raise AssertionError("not called")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(informer_module.time, "monotonic", c)
    return c


def informers() -> list[Informer]:
    return [Informer(resource=r, list_func=_never) for r in ("services", "endpointslices", "nodes")]


def fail_all(infs: list[Informer], since: float) -> None:
    for i in infs:
        i.failing_since = since  # what a failed list or watch records


def test_healthz_fails_once_the_api_server_is_unreachable_longer_than_the_bound(clock: Clock) -> None:
    infs = informers()
    health = Health(informers=infs, loop=Loop(), timeout=60.0, api_timeout=300.0)
    assert health.healthy().ok
    fail_all(infs, clock.now)
    clock.now += 299.0
    assert health.healthy().ok  # a restart of the API server, a short outage: no restart
    clock.now += 2.0
    verdict = health.healthy()
    assert not verdict.ok
    assert "the API server has been unreachable for 301s (limit 300s)" in verdict.detail
    # Back: one successful list or watch per informer clears it.
    for i in infs:
        i.failing_since = None
    assert health.healthy().ok


def test_one_failing_resource_is_not_an_unreachable_api_server(clock: Clock) -> None:
    infs = informers()
    health = Health(informers=infs, loop=Loop(), timeout=60.0, api_timeout=300.0)
    infs[1].failing_since = clock.now  # e.g. a permission lost on one resource: readiness says so
    clock.now += 10_000.0
    assert health.healthy().ok


def test_zero_turns_the_check_off(clock: Clock) -> None:
    infs = informers()
    health = Health(informers=infs, loop=Loop(), timeout=60.0, api_timeout=0.0)
    fail_all(infs, clock.now)
    clock.now += 10_000.0
    assert health.healthy().ok


def test_a_waiting_change_still_fails_first(clock: Clock) -> None:
    infs = informers()
    health = Health(informers=infs, loop=Loop(age=61.0), timeout=60.0, api_timeout=300.0)
    assert "waited 61.0s" in health.healthy().detail
