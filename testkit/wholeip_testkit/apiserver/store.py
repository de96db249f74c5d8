"""The object store: etcd plus the watch cache, in memory, with one global revision.

Design
------
* Every committed write (create, update, delete) bumps one global counter, the
  resourceVersion, and appends exactly one :class:`Change` to a bounded
  history.  Revisions in the history are therefore contiguous, so a watcher's
  position is a plain integer and finding "everything after revision N" is an
  index computation, not a search.
* A watcher is a cursor into that history (:class:`Cursor`), not a queue the
  store pushes into: a slow or stalled client costs nothing, and a client that
  falls behind the retained window gets ``410 Expired`` exactly like a real
  watch-cache client.  :meth:`Store.compact` drops the history, which is how
  tests force the relist path.
* The history also keeps each change's *previous* object, which serves three
  purposes: selector transitions in watches (an object leaving a selector is a
  ``DELETED`` for that watcher), consistent paginated lists (``continue``
  re-creates the snapshot at the list's revision by undoing later changes), and
  ``resourceVersionMatch=Exact`` lists.
* Writes that change nothing are not committed (no new revision, no event), as
  on the real server; informers depend on that to settle.

The store is used from a single asyncio event loop; its methods are
synchronous (nothing in them awaits), so a test can mutate it directly and the
watch streams observe the change like any API write.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import copy
import ipaddress
import random
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from . import crd
from .allocation import DEFAULT_SERVICE_CIDRS, Allocator, Network, check_service_cidr
from .errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    details,
    invalid,
)
from .registry import Obj, Registry, ResourceType
from .selectors import Selector

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str]
"""(namespace, name); the namespace is ``""`` for cluster-scoped objects."""

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the real generateName alphabet
SERVICE_CIDRS_KEY = "servicecidrs.networking.k8s.io"
DEFAULT_SERVICE_CIDR_NAME = "kubernetes"


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write: the revision it created and the object before/after."""

    rv: int
    type: EventType
    rtype: ResourceType
    object: Obj
    """The object as written (for ``DELETED``: its last state, at revision ``rv``)."""
    old: Obj | None
    """The object before the write; ``None`` for ``ADDED``."""


@dataclass(frozen=True, slots=True)
class Backup:
    """What :meth:`Store.backup` saved: every object and the revision (treat as opaque)."""

    objects: dict[str, dict[Key, Obj]]
    rv: int
    allocation: tuple[dict[str, int], int]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", ""))


def parse_rv(value: str | None, *, what: str = "resourceVersion") -> int | None:
    """``None`` for an absent/empty RV, else the integer; garbage is a 400."""
    if value is None or value == "":
        return None
    try:
        rv = int(value)
    except ValueError:
        raise BadRequest(f"invalid {what}: {value!r}") from None
    if rv < 0:
        raise BadRequest(f"invalid {what}: {value!r}")
    return rv


class Store:
    """All objects of all types, their history, and the revision counter."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        history: int = 1000,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        service_cidrs: Iterable[str] = DEFAULT_SERVICE_CIDRS,
    ) -> None:
        self.registry = registry or Registry()
        self.allocator = Allocator(tuple(service_cidrs))
        """ClusterIP/NodePort owners; ``configured`` is the server's own Service range, from
        which the default ServiceCIDR ``kubernetes`` is made (and allocated on servers
        without the ServiceCIDR API)."""
        self._ranges: tuple[Network, ...] | None = None
        self.history_size = history
        self.namespace_finalize_delay = 0.5
        """Seconds a deleted non-empty namespace stays Terminating before it is emptied."""
        self.rv = 0
        """The newest committed revision."""
        self.last_remaining = 0
        """Matches a limited :meth:`list` left out."""
        self.compacted_rv = 0
        """Changes at or below this revision are gone; watching from below it is a 410."""
        self._objects: dict[str, dict[Key, Obj]] = {t.key: {} for t in self.registry.types}
        self._sorted_keys: dict[str, builtins.list[Key]] = {}
        """Per type, its current keys in list order; dropped when a key comes or goes (a
        paginated list of 100,000 objects would otherwise sort them for every page)."""
        self._history: deque[Change] = deque()
        self._changed = asyncio.Event()
        self.dry = False
        """Inside :meth:`dry_run`: nothing may be scheduled for later."""
        ns = self.registry.resolve("namespaces")
        for name in namespaces:
            self.create({"metadata": {"name": name}}, rtype=ns)
        self._default_service_cidr()

    def _default_service_cidr(self) -> None:
        """What a 1.33+ API server's default ServiceCIDR controller does at start: the object
        ``kubernetes`` holding ``--service-cluster-ip-range``, with its Ready condition."""
        if not self.registry.has(SERVICE_CIDRS_KEY):
            return
        self.create(
            {
                "metadata": {"name": DEFAULT_SERVICE_CIDR_NAME},
                "spec": {"cidrs": [str(n) for n in self.allocator.configured]},
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "lastTransitionTime": _now(),
                            "reason": "",
                            "message": "Kubernetes default Service CIDR is ready",
                        }
                    ]
                },
            },
            rtype=SERVICE_CIDRS_KEY,
        )

    # --- change notification -------------------------------------------------

    def poke(self) -> None:
        """Wake every waiting watcher (after a commit, or when a fault knob moves)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, at_most: float | None) -> None:
        """Return after the next :meth:`poke`, or after ``at_most`` seconds."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), at_most)

    def _commit(self, type_: EventType, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        bucket = self._objects[rtype.key]
        if rtype.key == "services":
            self.allocator.track(_key(obj), old, None if type_ == "DELETED" else obj)
        elif rtype.key == SERVICE_CIDRS_KEY:
            self._ranges = None
        if type_ == "DELETED":
            bucket.pop(_key(obj), None)
        else:
            bucket[_key(obj)] = obj
        if type_ != "MODIFIED":
            self._sorted_keys.pop(rtype.key, None)
        self._history.append(Change(self.rv, type_, rtype, obj, old))
        while len(self._history) > self.history_size:
            self.compacted_rv = self._history.popleft().rv
        self.poke()
        return copy.deepcopy(obj)

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """Writes inside are checked, defaulted, allocated and answered as usual, then undone
        (``dryRun=All``, what ``kubectl diff`` and ``--dry-run=server`` send): nothing is
        stored, no revision is spent, no watcher hears of them. Synchronous: no other
        request can write in between."""
        objects = {key: dict(bucket) for key, bucket in self._objects.items()}
        kept = (self.rv, self.compacted_rv, deque(self._history), self.registry.types)
        allocation = (dict(self.allocator.ip_owner), dict(self.allocator.port_owner), self.allocator.state())
        self.dry = True
        try:
            yield
        finally:
            self.dry = False
            self._objects = objects
            self.rv, self.compacted_rv, self._history, types = kept
            if types != self.registry.types:
                self.registry.types = types
                self.registry.reindex()
            self.allocator.ip_owner, self.allocator.port_owner = allocation[0], allocation[1]
            self.allocator.set_state(allocation[2])
            self._sorted_keys.clear()
            self._ranges = None

    def compact(self) -> None:
        """Forget all history: any watch or ``continue`` from an older revision gets 410."""
        self._history.clear()
        self.compacted_rv = self.rv
        self.poke()

    def backup(self) -> Backup:
        """A copy of every object and the revision, as an etcd snapshot holds them."""
        return Backup(copy.deepcopy(self._objects), self.rv, self.allocator.state())

    def restore(self, backup: Backup | None = None) -> None:
        """Go back to ``backup`` (``None``: an empty etcd, with only the default namespaces).

        What an etcd restore does to the API: objects and revisions are those of the
        snapshot, so the revision goes *backwards*, and no history before it survives
        (watching from an older revision is a 410). Writes then continue from the
        snapshot's revision, reusing revision numbers clients have already seen.
        """
        self._history.clear()
        self._sorted_keys.clear()
        self._ranges = None
        for t in self.registry.types:
            if t.custom:
                self.registry.remove(t.key)
        if backup is None:
            self._objects = {t.key: {} for t in self.registry.types}
            self.rv = self.compacted_rv = 0
            self.allocator.set_state(None)
            self.allocator.rebuild([])
            ns = self.registry.resolve("namespaces")
            for name in DEFAULT_NAMESPACES:
                self.create({"metadata": {"name": name}}, rtype=ns)
            self._default_service_cidr()
            self._history.clear()
            self.compacted_rv = self.rv
        else:
            self._objects = copy.deepcopy(backup.objects)
            self.rv = self.compacted_rv = backup.rv
            self.allocator.set_state(backup.allocation)
            self.allocator.rebuild(self._objects.get("services", {}).items())
            for definition in self._objects.get(crd.KEY, {}).values():
                self._serve_crd(definition)
        self.poke()

    def changes_since(self, rv: int) -> list[Change]:
        """Every change after ``rv``; :class:`Gone` if some of them were compacted."""
        if rv < self.compacted_rv:
            oldest = self._history[0].rv if self._history else self.rv + 1
            raise Gone(f"too old resource version: {rv} ({oldest - 1})")
        if not self._history or rv >= self.rv:
            return []
        start = max(0, rv + 1 - self._history[0].rv)
        return [self._history[i] for i in range(start, len(self._history))]

    # --- helpers -------------------------------------------------------------

    def _rtype(self, rtype: ResourceType | str | None, obj: Obj | None = None) -> ResourceType:
        if rtype is not None:
            return self.registry.resolve(rtype)
        if obj is None:
            raise ValueError("need a resource type or an object with apiVersion/kind")
        found = self.registry.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if found is None:
            raise BadRequest(f"no kind {obj.get('kind')!r} is registered for version {obj.get('apiVersion')!r}")
        return found

    @staticmethod
    def _scope(rtype: ResourceType, namespace: str | None) -> str:
        if not rtype.namespaced:
            return ""
        return namespace or "default"

    def _not_found(self, rtype: ResourceType, name: str) -> NotFound:
        return NotFound(f'{rtype.key} "{name}" not found', details=details(rtype.plural, name, rtype.group))

    # --- reads ---------------------------------------------------------------

    def get(self, rtype: ResourceType | str, name: str, namespace: str | None = None) -> Obj:
        """The object, or :class:`NotFound`."""
        t = self._rtype(rtype)
        obj = self._objects[t.key].get((self._scope(t, namespace), name))
        if obj is None:
            raise self._not_found(t, name)
        return copy.deepcopy(obj)

    def snapshot(self, rtype: ResourceType | str, rv: int | None = None) -> dict[Key, Obj]:
        """The objects of one type at revision ``rv`` (default: now), by undoing history."""
        t = self._rtype(rtype)
        objects = dict(self._objects[t.key])
        if rv is None or rv >= self.rv:
            return objects
        for change in reversed(self.changes_since(rv)):
            if change.rtype.key != t.key:
                continue
            if change.old is None:
                objects.pop(_key(change.object), None)
            else:
                objects[_key(change.old)] = change.old
        return objects

    def list(
        self,
        rtype: ResourceType | str,
        selector: Selector | None = None,
        *,
        namespace: str | None = None,
        rv: int | None = None,
        after: Key | None = None,
        limit: int = 0,
    ) -> list[Obj]:
        """Matching objects ordered by (namespace, name), as etcd keys sort.

        With ``limit``, only the first ``limit`` are copied; the others are counted in
        :attr:`last_remaining` (a page of a 100,000-object list must not copy them all).
        """
        t = self._rtype(rtype)
        sel = selector or Selector()
        out: builtins.list[Obj] = []
        self.last_remaining = 0
        if rv is None or rv >= self.rv:
            objects = self._objects[t.key]  # read only: what is handed out is copied
            keys = self._sorted_keys.get(t.key)
            if keys is None:
                keys = self._sorted_keys[t.key] = sorted(objects)
        else:
            objects = self.snapshot(t, rv)
            keys = sorted(objects)
        start = bisect.bisect_right(keys, after) if after is not None else 0
        everything = namespace is None and sel == Selector()
        for i in range(start, len(keys)):
            key = keys[i]
            if namespace is not None and key[0] != namespace:
                continue
            if sel.matches(objects[key]):
                if limit and len(out) >= limit:
                    if everything:  # every key matches: the rest is a count
                        self.last_remaining = len(keys) - i
                        break
                    self.last_remaining += 1
                else:
                    out.append(copy.deepcopy(objects[key]))
        return out

    # --- writes --------------------------------------------------------------

    def create(
        self,
        obj: Obj,
        *,
        rtype: ResourceType | str | None = None,
        namespace: str | None = None,
        reset_status: bool = False,
    ) -> Obj:
        """Create ``obj`` (type from ``rtype`` or its apiVersion/kind) and emit ``ADDED``.

        Direct store writes may seed ``status`` (tests set up state in one step);
        the HTTP layer passes ``reset_status=True`` to drop it like the real
        create strategies do for types with a status subresource.
        """
        t = self._rtype(rtype, obj)
        new = copy.deepcopy(obj)
        if reset_status and t.has_status and not t.status_on_create:
            new.pop("status", None)
        new["apiVersion"], new["kind"] = t.api_version, t.kind
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be an object")
        if t.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace or body_ns or "default"
            ns_obj = self._objects["namespaces"].get(("", meta["namespace"]))
            if ns_obj is None:
                raise NotFound(
                    f'namespaces "{meta["namespace"]}" not found',
                    details=details("namespaces", meta["namespace"]),
                )
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise Forbidden(
                    f'{t.key} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: '
                    f"unable to create new content in namespace {meta['namespace']} because it "
                    "is being terminated",
                    details=details(t.plural, meta.get("name", ""), t.group),
                )
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise Invalid(
                    f'{t.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
                    details={
                        "kind": t.kind,
                        "group": t.group,
                        "causes": [
                            {
                                "reason": "FieldValueRequired",
                                "field": "metadata.name",
                                "message": "Required value: name or generateName is required",
                            }
                        ],
                    },
                )
            for _ in range(100):
                suffix = "".join(random.choices(_NAME_SUFFIX_CHARS, k=5))
                meta["name"] = meta["generateName"] + suffix
                if _key(new) not in self._objects[t.key]:
                    break
        if _key(new) in self._objects[t.key]:
            raise AlreadyExists(
                f'{t.key} "{meta["name"]}" already exists',
                details=details(t.plural, meta["name"], t.group),
            )
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if _has_generation(t):
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if t.defaulter is not None:
            t.defaulter(new)
        self._admit(t, new, None)
        created = self._commit("ADDED", t, new, None)
        if t.key == crd.KEY:
            self._serve_crd(new)
        return created

    def update(
        self,
        obj: Obj,
        *,
        rtype: ResourceType | str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        """Replace an object (PUT semantics); emits ``MODIFIED`` unless nothing changed.

        A ``metadata.resourceVersion`` in ``obj`` is a precondition (409 if stale);
        without one the update is unconditional, as the real server allows.  With a
        status subresource, a main-resource write keeps the stored status and a
        ``subresource="status"`` write changes nothing but the status.
        """
        t = self._rtype(rtype, obj)
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        ns = self._scope(t, namespace or meta.get("namespace"))
        old = self._objects[t.key].get((ns, name))
        if old is None:
            raise self._not_found(t, name)
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {t.key} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                details=details(t.plural, name, t.group),
            )
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {t.key} "{name}": Precondition failed: '
                f"UID in precondition: {meta['uid']}, UID in object meta: {old['metadata']['uid']}",
                details=details(t.plural, name, t.group),
            )
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(obj)
            if t.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        new["apiVersion"], new["kind"] = t.api_version, t.kind
        new_meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            if field in old["metadata"]:
                new_meta[field] = old["metadata"][field]
            else:
                new_meta.pop(field, None)
        if t.defaulter is not None and subresource is None:
            t.defaulter(new)
        if subresource is None:
            self._admit(t, new, old)
        if _spec(new) != _spec(old) and _has_generation(t):
            new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return copy.deepcopy(old)
        updated = self._commit("MODIFIED", t, new, old)
        if t.key == crd.KEY:
            self._serve_crd(new)
        return updated

    def delete(
        self,
        rtype: ResourceType | str,
        name: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        """Delete immediately (no finalizers, no grace period) and emit ``DELETED``.

        Deleting a namespace first deletes everything in it, as the namespace
        controller would, so watchers see each object go.
        """
        t = self._rtype(rtype)
        key = (self._scope(t, namespace), name)
        old = self._objects[t.key].get(key)
        if old is None:
            raise self._not_found(t, name)
        current_rv = old["metadata"]["resourceVersion"]
        if (resource_version and resource_version != current_rv) or (uid and uid != old["metadata"]["uid"]):
            raise Conflict(
                f'Operation cannot be fulfilled on {t.key} "{name}": Precondition failed',
                details=details(t.plural, name, t.group),
            )
        if t.key == "namespaces" and self._namespace_content(name):
            return self._terminate_namespace(old)
        if t.key == crd.KEY:
            # The CRD finalizer's work, done at once: every custom object goes first
            # (watchers see each DELETED), then the type stops being served.
            served = [c for c in self.registry.types if c.key == name and c.custom]
            for ns, obj_name in sorted(self._objects.get(name, {})) if served else []:
                self.delete(served[0], obj_name, ns or None)
            deleted = self._commit("DELETED", t, copy.deepcopy(old), old)
            if served:
                self.registry.remove(name)
                self._objects.pop(name, None)
                self._sorted_keys.pop(name, None)
            return deleted
        return self._commit("DELETED", t, copy.deepcopy(old), old)

    # --- namespace lifecycle ---------------------------------------------------

    def _namespace_content(self, namespace: str) -> builtins.list[tuple[ResourceType, Key]]:
        types = {t.key: t for t in reversed(self.registry.types) if t.namespaced}  # first version wins
        return [(t, key) for t in types.values() for key in sorted(self._objects[t.key]) if key[0] == namespace]

    def _terminate_namespace(self, ns: Obj) -> Obj:
        """Mark a non-empty namespace Terminating and empty it a moment later.

        Deletion is otherwise immediate here, but a namespace that vanished with its
        content at once would break ``kubectl delete -f`` of a file that lists the
        namespace before its objects (they would already be gone: 404).  As on a
        real cluster, the namespace lingers in phase Terminating, refuses new
        content, and disappears once a "namespace controller" has deleted the rest.
        """
        if ns["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(ns)
        terminating = copy.deepcopy(ns)
        terminating["metadata"]["deletionTimestamp"] = _now()
        terminating.setdefault("status", {})["phase"] = "Terminating"
        result = self._commit("MODIFIED", self.registry.resolve("namespaces"), terminating, ns)
        name = ns["metadata"]["name"]
        if self.dry:
            return result  # (a dry run schedules nothing)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finalize_namespace(name)
        else:
            loop.call_later(self.namespace_finalize_delay, self._finalize_namespace, name)
        return result

    def _finalize_namespace(self, name: str) -> None:
        for t, (ns, obj_name) in self._namespace_content(name):
            self.delete(t, obj_name, ns)
        current = self._objects["namespaces"].get(("", name))
        if current is not None:
            self._commit("DELETED", self.registry.resolve("namespaces"), copy.deepcopy(current), current)

    # --- server-side defaults that need global knowledge ----------------------

    def service_ranges(self) -> tuple[Network, ...]:
        """Where ClusterIPs come from: every ServiceCIDR's ranges (the default one first),
        or, on a server without the ServiceCIDR API, its configured range."""
        if self._ranges is None:
            if self.registry.has(SERVICE_CIDRS_KEY):
                objects = self._objects.get(SERVICE_CIDRS_KEY, {})
                order = sorted(objects, key=lambda k: (k[1] != DEFAULT_SERVICE_CIDR_NAME, k[1]))
                nets: list[Network] = []
                for key in order:
                    for cidr in (objects[key].get("spec") or {}).get("cidrs") or []:
                        with contextlib.suppress(ValueError):
                            nets.append(ipaddress.ip_network(cidr))
                self._ranges = tuple(nets)
            else:
                self._ranges = self.allocator.configured
        return self._ranges

    def _admit(self, t: ResourceType, new: Obj, old: Obj | None) -> None:
        """Checks and defaults that need more than the object: allocation, CRD acceptance."""
        if t.key == "services":
            self.allocator.allocate(new, old, _key(new), self.service_ranges())
        elif t.key == SERVICE_CIDRS_KEY:
            check_service_cidr(new, old)
        elif t.key == crd.KEY:
            crd.prepare(new, _now())
            name = new["metadata"]["name"]
            builtin = next((b for b in self.registry.types if b.key == name and not b.custom), None)
            if builtin is not None:
                raise invalid(
                    "CustomResourceDefinition",
                    name,
                    [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": is served by a built-in type')],
                    group=crd.GROUP,
                )

    def _serve_crd(self, definition: Obj) -> None:
        """Register (or re-register) the types a stored CRD defines."""
        types = crd.resource_types(definition)
        key = definition["metadata"]["name"]
        if [t for t in self.registry.types if t.key == key] == types:
            return
        self.registry.remove(key)
        for t in types:
            self.registry.add(t)
        self._objects.setdefault(key, {})
        self._sorted_keys.pop(key, None)


GENERATION_KINDS = frozenset({"DaemonSet", "Deployment", "Job", "CustomResourceDefinition", "Pod"})
"""Built-in kinds whose strategy keeps ``metadata.generation`` on a real server (custom
resources do too); Services, ConfigMaps, Nodes, EndpointSlices ... have none."""


def _has_generation(t: ResourceType) -> bool:
    return t.custom or t.kind in GENERATION_KINDS


def _spec(obj: Obj) -> dict[str, Any]:
    """Everything that is neither metadata nor status: a change here bumps generation."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
