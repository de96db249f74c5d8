"""Objects the index failed on, left out until they change.

The index reads every object defensively: bad input is a Problem, never an exception. An
exception is therefore a defect of wholeip's, met at run time on some object's shape (a
``RecursionError`` on a deeply nested annotation was one). Without this module such an
object stopped every sync of the node: the incremental update raised, the rebuild that
follows raised again on the same object, and no change of any other Service reached the
kernel until the object changed.

Now, when a rebuild raises, :meth:`Quarantine.scan` feeds the snapshot's objects one at a
time into a fresh index and takes out those whose update raises; the rebuild is tried
again without them. A quarantined object is left out of the index as if it were deleted
(its own rules go: what the index cannot read it cannot program), gets an ``InternalError``
Problem (a Warning Event on it, or on an EndpointSlice's Service) and a log line with the
exception, and stays out while it reads the same (its ``resourceVersion`` aside); a
changed object is tried again. A Node the index fails on is found by building an index of
it alone (the networks are all Nodes together, so Nodes are not fed one by one); its
problem is logged and counted, not written as an Event (Events go to Services and Pods).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from wholeip.core.gcpause import gc_paused
from wholeip.core.model import ObjectRef, Problem
from wholeip.core.objects import namespaced_name, split_key
from wholeip.kube.informer import object_key, without_resource_version
from wholeip.names import L2_STATUS_KIND, L2_STATUS_RESOURCE, SERVICE_NAME_LABEL

if TYPE_CHECKING:
    from wholeip.core.index import ClusterIndex

log = structlog.get_logger("wholeip.quarantine")

Obj = dict[str, Any]

KINDS: Mapping[str, str] = {
    "nodes": "Node",
    "services": "Service",
    "endpointslices": "EndpointSlice",
    "pods": "Pod",
    L2_STATUS_RESOURCE: L2_STATUS_KIND,
}
"""The resources whose objects can be quarantined, and their kinds."""

LIMIT = 100
"""More offenders than this is no odd object but a defect every object meets: the sync
fails (and says so) rather than leaving out most of the cluster."""


@dataclass(frozen=True, slots=True)
class Offender:
    resource: str
    key: str
    content: Obj
    """The object that raised, but its ``resourceVersion``: while it reads the same, it stays out."""
    ref: ObjectRef
    """Whom the problem is told to: the object, or the Service an EndpointSlice names (Events
    are written for Services and Pods)."""
    what: str
    """The object itself, as a log line names it."""
    error: str


class Quarantine:
    def __init__(self, *, limit: int = LIMIT) -> None:
        self.limit = limit
        self._held: dict[tuple[str, str], Offender] = {}

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, resource: str, key: str, obj: Obj | None) -> bool:
        """Whether this object (None: gone) is held out. One that is gone, or changed, is
        released: a new version is read again."""
        held = self._held.get((resource, key))
        if held is None:
            return False
        if obj is not None and without_resource_version(obj) == held.content:
            return True
        del self._held[(resource, key)]
        log.info("a quarantined object changed or went; it is read again", object=held.what)
        return False

    def lookup(self, resource: str, key: str, obj: Obj | None) -> Obj | None:
        """The object as the index is to see it: None while it is held out."""
        return None if self.holds(resource, key, obj) else obj

    def without(self, resource: str, objs: Iterable[Obj]) -> Iterable[Obj]:
        """All of a resource's cached ``objs`` but those held out; once all are read, one
        held that was not among them (deleted) is released."""
        return self._without(resource, objs) if self._held else objs

    def _without(self, resource: str, objs: Iterable[Obj]) -> Iterator[Obj]:
        seen = set()
        for obj in objs:
            key = object_key(obj)
            if self.holds(resource, key, obj):
                seen.add(key)
            else:
                yield obj
        for gone in [k for k in self._held if k[0] == resource and k[1] not in seen]:
            del self._held[gone]

    def problems(self) -> list[Problem]:
        return [
            Problem(
                o.ref,
                "InternalError",
                f"wholeip failed on {o.what} ({o.error}) and leaves it out until it changes; every other"
                " object is served. This is a defect of wholeip's: please report it with the object",
            )
            for o in sorted(self._held.values(), key=lambda o: (o.resource, o.key))
        ]

    def scan(
        self,
        caches: Mapping[str, Iterable[Obj]],
        nodes: Iterable[Obj],
        fresh: Callable[[Sequence[Obj]], ClusterIndex],
    ) -> list[Offender]:
        """Hold out what the index fails on; returns it. ``fresh(nodes)``: a new index of
        those Nodes. If the index of every Node (those not held out) raises, each Node that
        raises alone is held. Then the cached objects (resource -> its objects) are fed
        one at a time into that index, and each whose update raises is held; after a raise
        the object is taken out of the index again (or, if that raises too, the scan goes
        on with a fresh index), so that what it left behind does not blame the next ones."""
        with gc_paused(long_lived=True):  # (as a rebuild: the index is long-lived and acyclic)
            return self._scan(caches, list(self.without("nodes", nodes)), fresh)

    def _scan(
        self, caches: Mapping[str, Iterable[Obj]], nodes: list[Obj], fresh: Callable[[Sequence[Obj]], ClusterIndex]
    ) -> list[Offender]:
        found: list[Offender] = []
        try:
            index = fresh(nodes)
        except Exception as exc:
            for node in nodes:
                try:
                    fresh([node])
                except Exception as alone:
                    found.append(self._hold("nodes", object_key(node), node, alone))
            if not found:
                raise
            self._check_limit(exc)
            nodes = [node for node in nodes if not self.holds("nodes", object_key(node), node)]
            index = fresh(nodes)
        for resource, objs in caches.items():
            for obj in self.without(resource, objs):
                key = object_key(obj)
                try:
                    _feed(index, resource, key, obj)
                except Exception as exc:
                    found.append(self._hold(resource, key, obj, exc))
                    self._check_limit(exc)
                    try:
                        _feed(index, resource, key, None)
                    except Exception:
                        index = fresh(nodes)
        return found

    def _check_limit(self, exc: Exception) -> None:
        if len(self._held) > self.limit:
            raise RuntimeError(f"the index failed on more than {self.limit} objects; not leaving them all out") from exc

    def _hold(self, resource: str, key: str, obj: Obj, exc: Exception) -> Offender:
        ns, name = namespaced_name(obj)
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        uid = meta.get("uid")
        ref = ObjectRef(KINDS[resource], ns, name, uid if isinstance(uid, str) else "")
        what = str(ref)
        labels = meta.get("labels")
        service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
        if resource == "endpointslices" and isinstance(service, str) and service:
            ref = ObjectRef("Service", ns, service)
        offender = Offender(
            resource, key, without_resource_version(obj), ref, what, f"{type(exc).__name__}: {exc}"[:300]
        )
        self._held[(resource, key)] = offender
        log.error(
            "the index failed on an object; it is left out until it changes",
            object=what,
            error=offender.error,
            traceback="".join(traceback.format_exception(exc))[-4000:],
        )
        return offender


def _feed(index: ClusterIndex, resource: str, key: str, obj: Obj | None) -> None:
    """One object's update (None: its deletion)."""
    if resource == "services":
        index.update(services={split_key(key): [obj] if obj is not None else []})
    elif resource == "endpointslices":
        index.update(slices={key: obj})
    elif resource == "pods":
        index.update(pod_objects={split_key(key): obj})
    else:
        index.update(l2_statuses={key: obj})
