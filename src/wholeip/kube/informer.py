"""A list+watch informer: a local cache of one resource type, kept current by a watch.

Protocol (the one client-go's reflector speaks, reduced to what the agent needs):

1. **List** the collection, page by page, and replace the cache with the result.
   The list's ``resourceVersion`` is where the watch starts. The very first list
   asks for ``resourceVersion=0`` ("any version"), which a real API server answers
   from its watch cache instead of etcd: with one agent per node, a fleet of
   agents starting at once must not become a thundering herd on etcd. A relist
   after ``410 Gone`` asks for the latest version instead (``""``), because the
   cached one is exactly what turned out to be too old.
2. **Watch** from that version with ``allowWatchBookmarks=true``. Every event
   updates the cache and its version; ``BOOKMARK`` events move the version
   without a change, so a reconnect after a quiet period does not start from a
   version the server has already forgotten.
3. When the watch ends:

   * normally (the server's ``timeoutSeconds`` ran out): watch again from the
     version we hold, right away, without a list;
   * with ``410 Gone`` (an HTTP 410, or an ``ERROR`` event carrying code 410):
     our version fell out of the server's history, so events were lost; relist;
   * with ``504 Too large resource version`` (cause ``ResourceVersionTooLarge``):
     the server has not reached our version; relist from scratch, as client-go's
     reflector does (a store restored from a backup never will reach it);
   * with any other error (connection refused or reset, a 5xx, an ``ERROR``
     event): wait a jittered, exponentially growing delay and watch again from
     the version we hold (no relist: nothing was lost that the server cannot
     replay);
   * when nothing at all (not even a bookmark) arrived for ``idle_timeout``:
     the connection is presumed dead (a half-open TCP connection or a wedged
     server looks exactly like a quiet cluster otherwise); reconnect like an error.

4. **The server went back in time.** After an etcd restore (or a control plane
   that came back on an empty etcd) the server's resourceVersions are lower than
   ours. A real server then accepts our watch and sends nothing, not even a
   bookmark (it has no event after our version), until its revision passes ours,
   when it sends only what comes after: whatever changed in between is never
   seen. So before watching again after an error or an idle watch, one cheap
   consistent read (``limit=1``, no resourceVersion) asks for the server's current
   version; if it is lower than ours, the cache is stale and the informer relists
   from scratch. A list (any list) whose version is lower than ours replaces the
   cache and notifies everything, exactly as every relist does: consumers see
   deletes for what vanished and adds for what appeared.

The cache holds objects as plain dicts, replaced and never mutated once stored,
so a snapshot is a shallow list copy that stays valid while the informer keeps
updating (the reconcile loop builds its state from snapshots in a worker thread).
An optional ``transform`` trims what the agent never reads (``managedFields``,
Node heartbeats): less memory, and, since a change that the transform removes
leaves the cached object equal, no wake-up for it either.

``on_change`` is called after every change to the cache; it carries no payload
on purpose: consumers are level-triggered and read the cache. ``on_key`` says
which key changed (None: a list replaced everything), so that a consumer
keeping an index of the cache re-reads only those keys, still from the cache.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from wholeip.backoff import backoff_delay
from wholeip.core.objects import namespaced_name
from wholeip.kube.api import Gone, Obj, TooLargeResourceVersion, error_from_status, read_json, read_list

log = structlog.get_logger(__name__)

ListFunc = Callable[..., Awaitable[Any]]
"""A generated kubernetes_asyncio list method, e.g. ``CoreV1Api(api).list_node``."""

Transform = Callable[[Obj], Obj]


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchOptions:
    """Timing of one informer. The defaults suit a real API server; tests shrink them."""

    watch_timeout: float = 300.0
    """The server ends a watch after this, jittered up to twice as long (``timeoutSeconds``),
    so that a fleet of agents does not reconnect in lockstep."""

    idle_timeout: float = 150.0
    """A watch on which nothing arrived for this long is reconnected. Must exceed the
    server's bookmark interval (about a minute on a real server)."""

    connect_timeout: float = 10.0
    """Seconds to establish a connection."""

    list_timeout: float = 120.0
    """Seconds one list page may take."""

    backoff_base: float = 0.5
    """First delay after an error; doubles with each consecutive error."""

    backoff_max: float = 30.0
    """Longest delay between two attempts."""

    page_size: int = 500
    """Objects per list page (ignored by a real server for ``resourceVersion=0`` lists)."""

    rediscover_interval: float = 60.0
    """For an optional API (ServiceCIDR, MetalLB's ServiceL2Status): seconds between two
    discovery requests while the server does not serve it (installed later, it is picked
    up), and between two checks that it still exists while its informer fails (removed,
    the agent goes back to the fallback instead of failing its probes)."""


class _Expired(Exception):
    """Our resourceVersion is gone from the server's history: relist."""


class _Idle(Exception):
    """Nothing arrived on the watch for ``idle_timeout``."""


class _TooLarge(Exception):
    """The server has not reached our resourceVersion: relist from scratch."""


def _version_number(version: str) -> int | None:
    """A resourceVersion as a number, to tell that one went backwards (None if it is not one).

    resourceVersions are opaque by the API conventions; every real server uses etcd's
    revision, a growing integer, and comparing is the only way to notice a restore.
    """
    try:
        return int(version)
    except ValueError:
        return None


_HANDED = 500
"""Most objects :attr:`Informer.on_page` is given at once."""

RESTART_REASONS = ("closed", "idle", "error", "expired", "too_large")
"""Why a watch was restarted (``Informer.restarts`` keys; the restarts metric's ``reason`` label)."""


def object_key(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects), the cache key."""
    namespace, name = namespaced_name(obj)
    return f"{namespace}/{name}" if namespace else name


def _resource_version(obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


def without_resource_version(obj: Obj) -> Obj:
    """The object but its ``resourceVersion``, which every write changes: what a reader of
    it sees (equal before and after a write that changed nothing else)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "resourceVersion" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}


def strip_managed_fields(obj: Obj) -> Obj:
    """Drop ``metadata.managedFields``: often half of an object's size, never read by the agent."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


_ZDICT = (
    # Deflate's preset dictionary: what trimmed Services and EndpointSlices have in common,
    # so that even a single small object compresses (most likely strings last).
    b'{"kind":"Node","metadata":{"name":"","uid":"","resourceVersion":"","labels":{}},"spec":{"podCIDR":"","podCIDRs":['
    b'"loadBalancerSourceRanges":["externalIPs":[{"name":"udp","port":53,"protocol":"UDP"}"protocol":"SCTP"'
    b'"networking.cozystack.io/allowICMP":"true""service.kubernetes.io/service-proxy-name":"wholeip"'
    b'{"kind":"EndpointSlice","metadata":{"name":"","namespace":"default","uid":"","resourceVersion":"",'
    b'"creationTimestamp":"20","labels":{"kubernetes.io/service-name":""}},"addressType":"IPv4","addressType":"IPv6",'
    b'"endpoints":[{"addresses":["10.","fd"],"nodeName":"","conditions":{"ready":true}},{"ready":false}}],'
    b'"ports":[{"name":"http","port":80,"protocol":"TCP"},{"name":"https","port":443,"protocol":"TCP"}]}'
    b'{"kind":"Service","metadata":{"name":"","namespace":"default","uid":"","resourceVersion":"","creationTimestamp":"20'
    b'T00:00:00Z","annotations":{"networking.cozystack.io/wholeIP":"true"}},"spec":{"ports":[{"name":"","port":80,'
    b'"protocol":"TCP","targetPort":80}]},"status":{"loadBalancer":{"ingress":[{"ip":"'
)


class PackedCache(MutableMapping[str, Obj]):
    """A cache that holds each object as compressed compact JSON and decodes it on access.

    A parsed Kubernetes object costs Python several times its JSON size (a dict
    per level, a str per key and value); 100,000 Services with their slices are
    hundreds of MiB as dicts and a fraction of that as bytes. The bytes are raw
    deflate with a preset dictionary of what such objects have in common, which
    takes a trimmed object from about 340 bytes of JSON to about 100 (9 µs to
    pack, 2 µs to unpack). The agent reads the whole cache only when it rebuilds
    its index, one object at a time, and otherwise a few objects per change.
    Every read returns a fresh copy. Packing is deterministic: equal objects
    give equal bytes.
    """

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}

    @staticmethod
    def pack(obj: Obj) -> bytes:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=_ZDICT)
        return packer.compress(json.dumps(obj, separators=(",", ":")).encode()) + packer.flush()

    @staticmethod
    def unpack(raw: bytes) -> Obj:
        unpacker = zlib.decompressobj(-15, zdict=_ZDICT)
        value: Obj = json.loads(unpacker.decompress(raw) + unpacker.flush())
        return value

    def __getitem__(self, key: str) -> Obj:
        return self.unpack(self.raw[key])

    def __setitem__(self, key: str, obj: Obj) -> None:
        self.raw[key] = self.pack(obj)

    def __delitem__(self, key: str) -> None:
        del self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, key: object) -> bool:
        return key in self.raw


class Informer:
    """List+watch one collection into a local cache (see the module docstring)."""

    def __init__(
        self,
        *,
        resource: str,
        list_func: ListFunc,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Transform | None = strip_managed_fields,
        on_change: Callable[[], None] | None = None,
        on_key: Callable[[str | None], None] | None = None,
        options: WatchOptions | None = None,
        packed: bool = False,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.resource = resource
        """A short name for logs and metrics, e.g. ``services``."""
        self._list_func = list_func
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._transform = transform
        self.on_change = on_change
        self.on_key = on_key
        """Called before ``on_change`` with the key of the object that changed, or None
        when a list replaced the cache (anything may have changed): for consumers that
        keep their own index of the cache and update only what changed."""
        self.on_page: Callable[[Sequence[tuple[str, Obj, object]]], None] | None = None
        """Called during every list with its objects as they went into the new cache, a page
        or at most 500 at a time (a server answers a first list whole): (key, the object,
        what the cache holds for it, see :meth:`stored`). For a consumer that follows a list
        as it comes (the agent's start-up index); the objects must not be mutated. Before
        ``on_key(None)``, which follows the whole list."""
        self.options = options or WatchOptions()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._packed = packed
        self.cache: MutableMapping[str, Obj] = PackedCache() if packed else {}
        """namespace/name -> object. Replaced, never mutated: hold on to objects freely.
        With ``packed``, objects are stored as JSON bytes and every read decodes a copy."""
        self.resource_version = ""
        """The version the cache is known to be current at (from the list, events, bookmarks)."""
        self.synced = asyncio.Event()
        """Set once the first list is in the cache (and stays set)."""
        self.restarts: collections.Counter[str] = collections.Counter()
        """Watch restarts by reason: ``closed``, ``idle``, ``error``, ``expired``, ``too_large``."""
        self.rewinds = 0
        """How many times the server's resourceVersion was found lower than ours (a restored store)."""
        self.failing_since: float | None = None
        """``time.monotonic()`` of the first of the current run of failures: lists and watches
        that end in an error, or that deliver nothing. None once a list completes or a watch
        delivers an event (bookmarks included)."""
        self.lists = 0
        """How many lists completed (1 + relists)."""
        self.events = 0
        """Watch events applied (bookmarks included)."""

    # --------------------------------------------------------------- reading

    def snapshot(self) -> list[Obj]:
        """The cached objects now (a new list; the objects are shared and must not be mutated)."""
        return list(self.cache.values())

    def stored(self) -> Mapping[str, object]:
        """Key -> what the cache holds for it now (the packed bytes, or the object itself).
        Replaced whenever the object is: equal to what :attr:`on_page` gave for the key
        while the cache still holds the object listed then."""
        return self.cache.raw if isinstance(self.cache, PackedCache) else self.cache

    def iterate(self) -> Iterator[Obj]:
        """The cached objects now, one at a time (a packed cache decodes each as it is reached,
        so a consumer that does not keep them never holds them all)."""
        if isinstance(self.cache, PackedCache):
            raw = list(self.cache.raw.values())  # the bytes as they are now; cheap and consistent
            return (PackedCache.unpack(b) for b in raw)
        return iter(list(self.cache.values()))

    async def list_once(self, *, attempts: int = 3) -> None:
        """One consistent list into the cache and no watch, for tools that need the cluster
        at one moment (``wholeip status``). A list whose ``continue`` token expired halfway
        is started again, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                await self._list(consistent=True)
                return
            except (_Expired, _TooLarge):
                if attempt == attempts - 1:
                    raise RuntimeError(f"listing {self.resource}: the list kept expiring") from None

    # --------------------------------------------------------------- running

    async def run(self) -> None:
        """List, then watch forever; returns only by cancellation."""
        failures = 0
        relist = True
        first = True
        check = False  # before the next watch, ask whether the server is behind our version
        while True:
            reason = ""
            try:
                if not relist and check:
                    relist = await self._server_is_behind()
                    check = False
                if relist:
                    await self._list(consistent=not first)
                    first = False
                    relist = False
                    failures = 0
                delivered = await self._watch()
                # A server-side timeout ends a healthy watch; reconnect at once. A watch
                # that ends before delivering anything counts as a failure, so a server
                # that keeps hanging up immediately is not hammered.
                reason = "closed"
                failures = 0 if delivered else failures + 1
                check = not delivered
            except (_Expired, _TooLarge) as exc:
                reason = "expired" if isinstance(exc, _Expired) else "too_large"
                relist = True
                first = False  # our version (or the watch cache's) is what failed: ask for the newest
                failures += 1
            except _Idle:
                reason = "idle"
                failures += 1
                check = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any error: connection, HTTP status, bad payload
                reason = "error"
                failures += 1
                check = True
                log.warning(
                    "watch failed",
                    resource=self.resource,
                    error=f"{type(exc).__name__}: {exc}",
                    failures=failures,
                )
            self.restarts[reason] += 1
            if not failures:
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = time.monotonic()
            if reason in ("expired", "too_large") and failures == 1:
                log.info("resource version unavailable, relisting", resource=self.resource, reason=reason)
                continue  # the first relist is immediate; repeated ones back off
            if failures:
                delay = self.backoff(failures)
                log.debug("watch backoff", resource=self.resource, reason=reason, delay=round(delay, 3))
                await self._sleep(delay)

    def backoff(self, failures: int) -> float:
        """Delay before attempt ``failures + 1``: exponential, capped, with "equal jitter"."""
        return backoff_delay(
            failures, base=self.options.backoff_base, cap=self.options.backoff_max, random=self._rng.random()
        )

    def failing_for(self) -> float:
        """Seconds since the current run of failures began (0 when the last attempt succeeded)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    # --------------------------------------------------------------- list

    async def _server_is_behind(self) -> bool:
        """Whether the server's current version is lower than ours (its store was restored).

        One consistent read of at most one object: the list's version is the server's
        newest, which can only be lower than one it gave us if it went back in time.
        """
        ours = _version_number(self.resource_version)
        if ours is None:
            return False
        opts = self.options
        page = await read_json(
            await self._list_func(
                **self._selectors,
                limit=1,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=opts.list_timeout, sock_connect=opts.connect_timeout),
            )
        )
        theirs = _version_number(str((page.get("metadata") or {}).get("resourceVersion") or ""))
        if theirs is None or theirs >= ours:
            return False
        log.warning(
            "the API server's resource version went backwards (its store was restored?); relisting",
            resource=self.resource,
            ours=self.resource_version,
            server=theirs,
        )
        return True

    async def _list(self, *, consistent: bool) -> None:
        opts = self.options
        timeout = aiohttp.ClientTimeout(total=opts.list_timeout, sock_connect=opts.connect_timeout)
        items: MutableMapping[str, Obj] = PackedCache() if self._packed else {}
        token = ""
        version = ""
        while True:
            kwargs: dict[str, Any] = {
                **self._selectors,
                "limit": opts.page_size,
                "_preload_content": False,
                "_request_timeout": timeout,
            }
            if token:
                kwargs["_continue"] = token
            elif not consistent:
                kwargs["resource_version"] = "0"
            top: dict[str, Any] = {}
            try:
                page = await read_list(await self._list_func(**kwargs), top)
            except Gone as exc:
                # The continue token outlived the server's history: the whole list must
                # be redone, at the newest version.
                raise _Expired from exc
            except TooLargeResourceVersion as exc:
                raise _TooLarge from exc
            listed: list[tuple[str, Obj, object]] | None = [] if self.on_page is not None else None
            stored: Mapping[str, object] = items.raw if isinstance(items, PackedCache) else items
            for raw in page:  # (decoded one at a time: the first list is the whole cluster at once)
                if isinstance(raw, dict):
                    obj = self._prepare(raw)
                    key = object_key(obj)
                    items[key] = obj
                    if listed is not None:
                        listed.append((key, obj, stored[key]))
                        if len(listed) >= _HANDED:
                            self._hand(listed)
                            listed = []
            if listed:
                self._hand(listed)
            meta = top.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            if not version:
                version = str(meta.get("resourceVersion") or "")
            token = str(meta.get("continue") or "")
            if not token:
                break
        old, new = _version_number(self.resource_version), _version_number(version)
        rewound = old is not None and new is not None and new < old
        if rewound:
            # The server went back in time (a restored store): versions are reused, so
            # equal versions no longer mean equal objects. Everything may have changed.
            self.rewinds += 1
            log.warning(
                "listed at an older resource version than the cache's; replacing the cache",
                resource=self.resource,
                cache=self.resource_version,
                listed=version,
            )
        if isinstance(items, PackedCache) and isinstance(self.cache, PackedCache):
            changed = items.raw != self.cache.raw
        else:
            changed = (
                rewound
                or items.keys() != self.cache.keys()
                or any(_resource_version(obj) != _resource_version(self.cache[key]) for key, obj in items.items())
            )
        self.cache = items
        self.resource_version = version
        self.lists += 1
        self.failing_since = None
        log.info("listed", resource=self.resource, objects=len(items), resource_version=version)
        if changed or not self.synced.is_set():
            self._notify(None)
        self.synced.set()

    # --------------------------------------------------------------- watch

    async def _watch(self) -> bool:
        """One watch connection; True when it delivered at least one event."""
        opts = self.options
        server_timeout = int(opts.watch_timeout * (1 + self._rng.random()))
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=opts.connect_timeout,
            # A read that waits this long means the stream went silent: see _Idle.
            sock_read=opts.idle_timeout,
        )
        response = await self._list_func(
            **self._selectors,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=max(1, server_timeout),
            _preload_content=False,
            _request_timeout=timeout,
        )
        delivered = False
        async with response:
            status = int(response.status)
            if status != 200:
                body: Any = await response.read()
                try:
                    body = json.loads(body)
                except ValueError:
                    body = body.decode(errors="replace")
                if status == 410:
                    raise _Expired
                error = error_from_status(status, body)
                if isinstance(error, TooLargeResourceVersion):
                    raise _TooLarge from error
                raise error
            buf = bytearray()
            try:
                async for chunk in response.content.iter_any():
                    buf += chunk
                    start = 0
                    while (end := buf.find(b"\n", start)) >= 0:
                        line = bytes(buf[start:end])
                        start = end + 1
                        if line.strip():
                            self._handle(json.loads(line))
                            delivered = True
                    del buf[:start]
            except TimeoutError as exc:  # aiohttp's read timeout (sock_read) is a TimeoutError
                raise _Idle from exc
            if buf.strip():
                self._handle(json.loads(bytes(buf)))
                delivered = True
        return delivered

    def _handle(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise ValueError(f"watch event is not an object: {event!r:.200}")
        kind = event.get("type")
        obj = event.get("object")
        self.events += 1
        if kind != "ERROR":
            self.failing_since = None  # the watch gets through (a bookmark at least once a minute)
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Expired
            error = error_from_status(int(code) if isinstance(code, int) else 500, obj)
            if isinstance(error, TooLargeResourceVersion):
                raise _TooLarge from error
            raise error
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {event!r:.200}")
        version = _resource_version(obj)
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        if kind in ("ADDED", "MODIFIED"):
            new = self._prepare(obj)
            key = object_key(new)
            old = self.cache.get(key)
            self.cache[key] = new
            if version:
                self.resource_version = version
            # Level-triggered consumers only need a wake-up when something they could
            # read changed; equality ignores the version, which always changes.
            if old is None or without_resource_version(old) != without_resource_version(new):
                self._notify(key)
        elif kind == "DELETED":
            key = object_key(obj)
            if version:
                self.resource_version = version
            if self.cache.pop(key, None) is not None:
                self._notify(key)
        else:
            log.warning("unknown watch event type ignored", resource=self.resource, type=kind)

    def _hand(self, listed: list[tuple[str, Obj, object]]) -> None:
        if self.on_page is not None:
            self.on_page(listed)

    def _prepare(self, obj: Obj) -> Obj:
        return self._transform(obj) if self._transform is not None else obj

    def _notify(self, key: str | None) -> None:
        if self.on_key is not None:
            self.on_key(key)
        if self.on_change is not None:
            self.on_change()


async def wait_synced(informers: list[Informer], *, within: float | None = None) -> None:
    """Wait until every informer has listed once (optionally with a deadline)."""
    waiters = [i.synced.wait() for i in informers]
    if within is None:
        await asyncio.gather(*waiters)
    else:
        await asyncio.wait_for(asyncio.gather(*waiters), within)
