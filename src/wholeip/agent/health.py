"""Readiness and liveness, as kube-proxy defines them for a dataplane agent.

* **ready**: every informer has listed once *and* the first sync has committed,
  and no informer has been failing (no list or watch getting through) for longer
  than ``timeout``. Before that the node's table may be missing or stale (it is
  whatever the previous agent left), and while an informer cannot make progress
  it is stale again, so the pod must not count as available in a rolling update:
  ``maxUnavailable`` then waits for this node before moving on.
* **healthy**: no change has waited longer than ``timeout`` for a commit, and
  the API server has not been unreachable (every informer failing) for longer
  than ``api_timeout``. "The process is alive" says nothing; a loop stuck
  behind a wedged kernel call, or failing every sync, is what a restart may
  fix. An agent that merely has nothing to do stays healthy. One that cannot
  reach the API server does not know whether it has nothing to do: changes may
  be waiting that it cannot see, and what cut it off may be its own state (a
  connection pool, a resolver, a route it holds) or, as in issue 15, its own
  table. After ``api_timeout`` (generous: an API server restart or a short
  outage must not restart every agent of the cluster) the kubelet restarts
  it; the table stays in the kernel meanwhile, so traffic keeps flowing, and a
  restarted agent that still cannot reach the API server simply stays unready
  (its rules untouched) until it can. ``api_timeout`` 0 turns this off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class _Synced(Protocol):
    resource: str

    @property
    def synced(self) -> _Flag: ...

    def failing_for(self) -> float: ...


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class _Loop(Protocol):
    @property
    def first_commit(self) -> _Flag: ...

    def pending_age(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    detail: str


class Health:
    """Answers the two probes from the informers' and the reconcile loop's state."""

    def __init__(
        self,
        *,
        informers: Sequence[_Synced],
        loop: _Loop,
        timeout: float,
        api_timeout: float = 0.0,
        api_informers: Sequence[_Synced] | None = None,
    ) -> None:
        self._informers = informers
        self._loop = loop
        self.timeout = timeout
        self.api_timeout = api_timeout
        self._api_informers = informers if api_informers is None else api_informers
        """Those whose failing all together means the API server is out of reach (not one
        that may sit idle, such as a source whose API the server does not have)."""

    def ready(self) -> Verdict:
        waiting = [i.resource for i in self._informers if not i.synced.is_set()]
        if waiting:
            return Verdict(False, "informers not synced: " + ", ".join(waiting))
        if not self._loop.first_commit.is_set():
            return Verdict(False, "first sync not committed yet")
        failing = [f"{i.resource} ({i.failing_for():.0f}s)" for i in self._informers if i.failing_for() > self.timeout]
        if failing:
            return Verdict(False, "informers failing: " + ", ".join(failing))
        return Verdict(True, "ok")

    def healthy(self) -> Verdict:
        age = self._loop.pending_age()
        if age > self.timeout:
            return Verdict(False, f"a change has waited {age:.1f}s for a commit (limit {self.timeout:g}s)")
        if self.api_timeout > 0 and self._api_informers:
            # Every informer failing: the API server (or the way to it) is gone, not one resource.
            unreachable = min(i.failing_for() for i in self._api_informers)
            if unreachable > self.api_timeout:
                return Verdict(
                    False,
                    f"the API server has been unreachable for {unreachable:.0f}s (limit {self.api_timeout:g}s):"
                    " changes may be waiting unseen",
                )
        return Verdict(True, "ok")
