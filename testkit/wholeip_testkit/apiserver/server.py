"""The HTTP face of the double: routing, list/watch, writes, faults and audit.

Routing is done by hand from the path segments (``/api/v1/namespaces/ns/pods/x/status``)
rather than by aiohttp route patterns, because the Kubernetes URL grammar is
ambiguous without the resource table (``/api/v1/namespaces/x/status`` is the
namespace's status, ``/api/v1/namespaces/x/pods`` a collection).

Watches are long-lived handlers that own a cursor into the store's history
(see :mod:`.store`).  Each loop iteration sends whatever happened since the
cursor, then sleeps until the store pokes it, a bookmark is due, or the
request's ``timeoutSeconds`` runs out.  Fault knobs only flip flags and poke
the store; every watch loop checks the flags at the top of the iteration, so
faults take effect within one wake-up and need no per-connection plumbing.

The server is rebuilt from scratch on :meth:`ApiServer.start` (a fresh aiohttp
application and runner); all state lives in :class:`ApiServer` and its
:class:`~.store.Store`, so ``stop()``/``start()`` models an API server restart
that keeps etcd: clients see connection errors, then the same data and
revisions on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml
from aiohttp import web

from . import discovery, protobuf, tables
from .allocation import DEFAULT_SERVICE_CIDRS
from .errors import (
    ApiError,
    BadRequest,
    Forbidden,
    Gone,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
    too_large_resource_version,
)
from .patch import APPLY_PATCH, PATCH_TYPES, apply_patch
from .registry import Obj, Registry, ResourceType
from .selectors import Selector
from .store import Backup, Change, Store, parse_rv

log = logging.getLogger(__name__)

Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
_WRITES = ("create", "update", "patch", "delete", "deletecollection")
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One request, in the terms of an RBAC rule (verb, apiGroup, resource ...).

    Non-resource requests (discovery, ``/version``, OpenAPI) have
    ``resource == ""`` and the URL path in ``path``, like RBAC's ``nonResourceURLs``.
    """

    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    path: str
    user_agent: str = ""
    api_version: str = ""

    @property
    def is_resource_request(self) -> bool:
        return bool(self.resource)


@dataclass(slots=True)
class _Target:
    """A parsed resource URL."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass(eq=False, slots=True)
class _OpenWatch:
    request: web.Request
    dropped: bool = False
    abrupt: bool = True


@dataclass(slots=True)
class _Faults:
    fail_next_watches: int = 0
    stalled: bool = False
    watches: set[_OpenWatch] = field(default_factory=set)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


def _truthy(value: str | None) -> bool:
    return value in ("1", "true", "True")


class ApiServer:
    """A Kubernetes API server double on ``http://127.0.0.1:<port>``.

    ``async with ApiServer() as api:`` starts it on a free port; ``api.store``
    is the object store (writes through it are seen by watches like any API
    write), ``api.audit`` the request log, and the methods below the fault knobs.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 60.0,
        history: int = 1000,
        registry: Registry | None = None,
        store: Store | None = None,
        service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
        service_cidr_api: bool = True,
    ) -> None:
        """``service_cidrs``: the Service range(s) (``--service-cluster-ip-range``, primary
        family first) from which ClusterIPs come and the default ServiceCIDR ``kubernetes``
        is made; ``service_cidr_api=False`` serves no ServiceCIDR API at all, like a
        server older than 1.33 (``registry``/``store``, when given, decide instead)."""
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        """Seconds between BOOKMARK events on watches that allow them (real servers: ~60)."""
        self.too_large_wait = 3.0
        """Seconds a list (or a ``sendInitialEvents`` watch) for a resourceVersion newer than
        the store's waits for it before the 504 "Too large resource version" (real servers: 3)."""
        if store is None:
            registry = registry or Registry(service_cidrs=service_cidr_api)
            store = Store(registry, history=history, service_cidrs=service_cidrs)
        self.store = store
        self.registry = self.store.registry
        self.audit: list[AuditRecord] = []
        self._faults = _Faults()
        self._runner: web.AppRunner | None = None
        self.restarting: asyncio.Task[None] | None = None
        """The stop-wait-start task started by ``POST /_double/stop`` (tests await it)."""
        self._backup: Backup | None = None
        self._resume: asyncio.Event | None = None
        """Set by :meth:`resume`: ends a ``stop`` outage before its time."""

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again) on ``port``; after the first start the port is fixed."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/_double/{op}", self._control)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        sockets = list(getattr(site._server, "sockets", None) or [])
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and cut every connection (watches end abruptly)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.drop_watches()
        await runner.cleanup()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def kubeconfig(self, *, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {}}],
            "contexts": [
                {
                    "name": "double",
                    "context": {"cluster": "double", "user": "double", "namespace": namespace},
                }
            ],
            "current-context": "double",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (no auth) and return its path."""
        out = Path(path)
        out.write_text(yaml.safe_dump(self.kubeconfig(namespace=namespace), sort_keys=False))
        return out

    # --- fault knobs ------------------------------------------------------------

    def drop_watches(self, *, graceful: bool = False) -> int:
        """End every open watch now; returns how many there were.

        By default the TCP connection is cut (what a crashed server or a broken
        network looks like); ``graceful=True`` ends the HTTP response cleanly,
        like a server-side watch timeout.
        """
        watches = list(self._faults.watches)
        for w in watches:
            w.dropped = True
            w.abrupt = not graceful
        self.store.poke()
        return len(watches)

    def fail_next_watches(self, count: int = 1) -> None:
        """Answer the next ``count`` watch requests with a 410 Gone ERROR event."""
        self._faults.fail_next_watches += count

    def stall_watches(self) -> None:
        """Keep watch connections open but send nothing (no events, no bookmarks)."""
        self._faults.stalled = True
        self.store.poke()

    def release_watches(self) -> None:
        """Undo :meth:`stall_watches`; stalled watches then catch up from their cursor."""
        self._faults.stalled = False
        self.store.poke()

    def compact(self) -> None:
        """Drop the store's history: watches or ``continue`` from older revisions get 410."""
        self.store.compact()

    def backup(self) -> Backup:
        """Snapshot the store (objects and revision), for :meth:`restore`."""
        return self.store.backup()

    async def restore(self, backup: Backup | None = None) -> None:
        """Restart on a restored store: ``backup``, or an empty one (``None``).

        Models an etcd restore (or a control plane that came back on an empty etcd): every
        connection is cut, and the server comes back with older objects and *lower*
        resourceVersions than its clients have seen. A watch from a version the store has
        not reached yet is accepted and stays silent, as on a real server (its watch
        cache has no event after that version, and sends no bookmark at or below it).
        """
        running = self.running
        await self.stop()
        self.store.restore(backup)
        if running:
            await self.start()

    @property
    def open_watches(self) -> int:
        return len(self._faults.watches)

    def audit_resource_requests(self) -> list[AuditRecord]:
        return [r for r in self.audit if r.is_resource_request]

    def clear_audit(self) -> None:
        self.audit.clear()

    async def wait_for_watches(self, count: int, *, within: float = 10.0) -> None:
        """Wait until at least ``count`` watches are open (tests use this instead of sleeps)."""
        deadline = time.monotonic() + within
        while self.open_watches < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_watches} watches open, wanted {count}")
            await asyncio.sleep(0.01)

    # --- control endpoint ---------------------------------------------------------

    async def _control(self, request: web.Request) -> web.StreamResponse:
        """``/_double/<op>``: the fault knobs and the audit log over HTTP (for the demo)."""
        op = request.match_info["op"]
        query = request.query
        if op == "audit":
            if request.method == "DELETE":
                self.clear_audit()
                return _json({"cleared": True})
            # ``?since=N``: only the records after the first N (a poller's cursor),
            # so sampling a long run does not resend the whole log each time.
            try:
                since = parse_rv(query.get("since"), what="since") or 0
            except ApiError as exc:
                return _error(exc)
            return _json([_audit_json(r) for r in self.audit[since:]])
        if request.method != "POST":
            return _error(MethodNotAllowed(f"use POST for /_double/{op}"))
        if op == "drop-watches":
            return _json({"dropped": self.drop_watches(graceful=_truthy(query.get("graceful")))})
        if op == "fail-watches":
            self.fail_next_watches(int(query.get("count", "1")))
        elif op == "stall-watches":
            self.stall_watches()
        elif op == "release-watches":
            self.release_watches()
        elif op == "compact":
            self.compact()
        elif op == "backup":
            self._backup = self.backup()
        elif op == "restore":
            # Answer first, then restart on the last backup (or an empty store) on a separate task.
            backup = None if _truthy(query.get("empty")) else self._backup
            self.restarting = asyncio.get_running_loop().create_task(self._restore_later(backup))
        elif op == "stop":
            # Answer first, then go away for the requested time on a separate task.
            self._resume = asyncio.Event()
            self.restarting = asyncio.get_running_loop().create_task(
                self._bounce(float(query.get("seconds", "1")), self._resume)
            )
        else:
            return _error(NotFound(f"no control operation {op!r}"))
        return _json({"ok": True, "resourceVersion": str(self.store.rv)})

    async def _restore_later(self, backup: Backup | None) -> None:
        await asyncio.sleep(0.05)
        await self.restore(backup)

    async def _bounce(self, seconds: float, resume: asyncio.Event) -> None:
        # Give the control request's response time to leave before cutting connections.
        await asyncio.sleep(0.05)
        await self.stop()
        try:
            await asyncio.wait_for(resume.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self._resume = None
        await self.start()

    def resume(self) -> None:
        """End an outage begun by ``POST /_double/stop`` now, before its ``seconds`` are up
        (``python -m wholeip_testkit.apiserver``: on SIGUSR1). A test can then ask for an
        outage as long as its checks may ever take, and end it when they are done."""
        if self._resume is not None:
            self._resume.set()

    # --- dispatch ---------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        try:
            target = self._parse_target(parts)
            if target is None:
                self._record(request, "get", None)
                return self._non_resource(request, parts)
            verb = self._verb(request, target)
            self._record(request, verb, target)
            return await self._resource(request, verb, target)
        except ApiError as exc:
            return _error(exc)

    def _parse_target(self, parts: list[str]) -> _Target | None:
        """Resource URL -> target; ``None`` for a non-resource URL (discovery etc.)."""
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespaced = self.registry.by_url(group, version, rest[2])
            if namespaced is not None and namespaced.namespaced:
                namespace, rest = rest[1], rest[2:]
        rtype = self.registry.by_url(group, version, rest[0])
        if rtype is None or len(rest) > 3:
            raise NotFound("the server could not find the requested resource")
        if namespace is None and rtype.namespaced and len(rest) > 1:
            raise NotFound("the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rtype.subresources:
            raise NotFound("the server could not find the requested resource")
        return _Target(rtype, namespace, name, sub)

    @staticmethod
    def _verb(request: web.Request, target: _Target) -> Verb:
        method = request.method
        if target.name is None:
            if method == "GET":
                return "watch" if _truthy(request.query.get("watch")) else "list"
            if method == "POST":
                return "create"
            if method == "DELETE":
                return "deletecollection"
        else:
            verbs: dict[str, Verb] = {
                "GET": "get",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete",
            }
            if method in verbs:
                return verbs[method]
        raise MethodNotAllowed("the server does not allow this method on the requested resource")

    def _record(self, request: web.Request, verb: str, target: _Target | None) -> None:
        ua = request.headers.get("User-Agent", "")
        if target is None:
            self.audit.append(AuditRecord(verb, "", "", "", "", "", request.path, ua))
            return
        self.audit.append(
            AuditRecord(
                verb=verb,
                api_group=target.rtype.group,
                resource=target.rtype.plural,
                subresource=target.subresource or "",
                namespace=target.namespace or "",
                name=target.name or "",
                path=request.path,
                user_agent=ua,
                api_version=target.rtype.version,
            )
        )

    def _non_resource(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if request.method != "GET":
            raise MethodNotAllowed("the server does not allow this method on the requested resource")
        reg = self.registry
        doc: dict[str, Any] | None = None
        if parts == ["api"]:
            doc = discovery.api_versions(f"{self.host}:{self.port}")
        elif parts == ["apis"]:
            doc = discovery.api_group_list(reg)
        elif len(parts) == 2 and parts[0] == "api":
            doc = discovery.api_resource_list(reg, "", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            doc = discovery.api_group(reg, parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = discovery.api_resource_list(reg, parts[1], parts[2])
        elif parts == ["version"]:
            return _json(discovery.version_info())
        elif parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok")
        elif parts == ["openapi", "v3"]:
            doc = discovery.openapi_v3_root(reg)
        elif parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
            group, version = ("", parts[3]) if parts[2] == "api" else (parts[3], parts[-1])
            if parts[2] == "api" or len(parts) == 5:
                doc = discovery.openapi_v3_doc(reg, group, version)
        if doc is None:
            raise NotFound("the server could not find the requested resource")
        return _json(doc)

    async def _resource(self, request: web.Request, verb: Verb, target: _Target) -> web.StreamResponse:
        dry = request.query.get("dryRun")
        if verb in ("delete", "deletecollection") and request.can_read_body:
            # kubectl sends a deletion's options (dryRun among them) in the body.
            options = await self._body(request)
            if isinstance(options, dict) and isinstance(options.get("dryRun"), list) and options["dryRun"]:
                dry = ",".join(map(str, options["dryRun"]))
        if dry is not None and verb in _WRITES:
            if dry != "All":
                raise BadRequest(f'Invalid value: "{dry}": supported values: "All"')
            return await self._dry_run(request, verb, target)
        return await self._handle(request, verb, target)

    async def _handle(self, request: web.Request, verb: Verb, target: _Target) -> web.StreamResponse:
        if target.rtype.review:
            if verb != "create":
                raise MethodNotAllowed(f"the server does not allow this method on the requested resource ({verb})")
            return _json(_review(await self._body(request), target.rtype), 201)
        handlers: dict[Verb, Callable[[web.Request, _Target], Awaitable[web.StreamResponse]]] = {
            "get": self._get,
            "list": self._list,
            "watch": self._watch,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
            "delete": self._delete,
            "deletecollection": self._delete_collection,
        }
        return await handlers[verb](request, target)

    async def _dry_run(self, request: web.Request, verb: Verb, target: _Target) -> web.StreamResponse:
        """``dryRun=All``: the write's answer, nothing written (:meth:`Store.dry_run`). The
        object answered keeps the stored one's resourceVersion (none for a create), as a
        real server's dry-run storage leaves it."""
        await request.read()  # (now: the write below must not wait for the network)
        before: Obj | None = None
        if target.name is not None:
            with contextlib.suppress(NotFound):
                before = self.store.get(target.rtype, target.name, target.namespace)
        with self.store.dry_run():
            response = await self._handle(request, verb, target)
        if not isinstance(response, web.Response) or response.body is None or response.status >= 300:
            return response
        answer = json.loads(bytes(response.body))  # type: ignore[arg-type]
        meta = answer.get("metadata") if isinstance(answer, dict) and answer.get("kind") != "Status" else None
        if isinstance(meta, dict):
            meta.pop("resourceVersion", None)
            if before is not None:
                meta["resourceVersion"] = before["metadata"]["resourceVersion"]
        return _json(answer, response.status)

    # --- reads -------------------------------------------------------------------

    async def _get(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        obj = _in_version(self.store.get(t.rtype, t.name, t.namespace), t.rtype)
        version = _table_version(request)
        if version is not None:
            meta = {"resourceVersion": str(obj.get("metadata", {}).get("resourceVersion", ""))}
            return _json(self._table(request, t.rtype, [obj], meta, version))
        return _json(obj)

    def _table(
        self,
        request: web.Request,
        rtype: ResourceType,
        objs: list[Obj],
        meta: Obj,
        version: str,
        *,
        headers: bool = True,
    ) -> Obj:
        """The Table a ``kubectl get`` asked for (see :mod:`.tables`)."""
        return tables.table(rtype, objs, meta=meta, version=version, include=_include(request), headers=headers)

    def _selector(self, request: web.Request, t: _Target) -> Selector:
        return Selector.parse(
            t.rtype,
            label_selector=request.query.get("labelSelector"),
            field_selector=request.query.get("fieldSelector"),
        )

    async def _list(self, request: web.Request, t: _Target) -> web.StreamResponse:
        q = request.query
        selector = self._selector(request, t)
        limit = parse_rv(q.get("limit"), what="limit") or 0
        after: tuple[str, str] | None = None
        rv: int | None = None
        token = q.get("continue")
        if token:
            rv, after = _decode_continue(token)
            if rv < self.store.compacted_rv:
                raise Gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
        elif q.get("resourceVersionMatch") == "Exact":
            rv = parse_rv(q.get("resourceVersion"))
            if rv is None:
                raise BadRequest("resourceVersionMatch=Exact needs a resourceVersion")
            if rv < self.store.compacted_rv:
                raise Gone(f"too old resource version: {rv} ({self.store.compacted_rv})")
            await self._wait_for_rv(rv)
        else:
            # "Not older than": any state at or after the version will do, so one the store
            # has not reached yet is waited for, briefly, then refused with a 504 (a store
            # restored to an older revision never reaches it; clients must relist with "").
            minimum = parse_rv(q.get("resourceVersion"))
            if minimum:
                await self._wait_for_rv(minimum)
            elif q.get("resourceVersion") == "0":
                # A real server answers resourceVersion=0 from its watch cache, whole: it
                # ignores the limit (kube-apiserver since 1.13), so the client gets one page.
                limit = 0
        list_rv = rv if rv is not None else self.store.rv
        items = self.store.list(t.rtype, selector, namespace=t.namespace, rv=rv, after=after, limit=limit)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        remaining = self.store.last_remaining
        if limit and remaining:
            last = items[-1]["metadata"]
            meta["continue"] = _encode_continue(list_rv, (last.get("namespace", ""), last["name"]))
            meta["remainingItemCount"] = remaining
        version = _table_version(request)
        if version is not None:
            return _json(self._table(request, t.rtype, items, meta, version))
        for item in items:
            if t.rtype.custom:  # unstructured lists keep them, in the version asked for
                item["apiVersion"] = t.rtype.api_version
                continue
            # Typed lists on a real server carry apiVersion/kind only on the list.
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return _json({"kind": t.rtype.list_kind, "apiVersion": t.rtype.api_version, "metadata": meta, "items": items})

    async def _wait_for_rv(self, rv: int) -> None:
        """Return once the store has reached ``rv``; the 504 "Too large" after ``too_large_wait``."""
        deadline = time.monotonic() + self.too_large_wait
        while self.store.rv < rv:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_large_resource_version(rv, self.store.rv)
            await self.store.wait_changed(left)

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        q = request.query
        selector = self._selector(request, t)
        rv = parse_rv(q.get("resourceVersion"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        initial_events = _truthy(q.get("sendInitialEvents"))
        if initial_events and q.get("resourceVersionMatch") != "NotOlderThan":
            raise BadRequest(
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan"
            )
        if _table_version(request) is not None:
            _include(request)  # (a bad value is refused before the stream starts)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watch = _OpenWatch(request)
        self._faults.watches.add(watch)
        try:
            await self._stream(response, watch, t, selector, rv, timeout, bookmarks, initial_events)
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; nothing to clean up beyond the finally
        finally:
            self._faults.watches.discard(watch)
        if watch.dropped and watch.abrupt and request.transport is not None:
            request.transport.abort()
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watch: _OpenWatch,
        t: _Target,
        selector: Selector,
        rv: int | None,
        timeout_seconds: float | None,
        bookmarks: bool,
        initial_events: bool,
    ) -> None:
        rtype = t.rtype
        store = self.store
        now = time.monotonic()
        deadline = now + timeout_seconds if timeout_seconds is not None else None
        as_table = _table_version(watch.request)
        headers = [True]  # (a Table's column definitions go with the first event only)

        async def send(type_: str, obj: Obj) -> None:
            if rtype.custom and obj.get("apiVersion") not in (None, rtype.api_version):
                obj = {**obj, "apiVersion": rtype.api_version}
            if as_table is not None and type_ in ("ADDED", "MODIFIED", "DELETED"):
                obj = self._table(watch.request, rtype, [obj], {}, as_table, headers=headers[0])
                headers[0] = False
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        if self._faults.fail_next_watches > 0:
            self._faults.fail_next_watches -= 1
            await send("ERROR", Gone(f"too old resource version: {rv or 0} ({store.rv})").status())
            return

        if initial_events and rv:
            # A watch-list "not older than" a version waits for it like a list does.
            try:
                await self._wait_for_rv(rv)
            except ApiError as exc:
                await send("ERROR", exc.status())
                return

        pending: list[tuple[str, Obj]] = []
        if rv is None or rv == 0 or initial_events:
            # "Start at most recent"/"any": synthetic ADDED for the current state.
            cursor = store.rv
            pending = [("ADDED", o) for o in store.list(rtype, selector, namespace=t.namespace)]
        else:
            cursor = rv
        initial_end_due = initial_events
        next_bookmark = now + self.bookmark_interval
        while True:
            if watch.dropped:
                return
            if not self._faults.stalled:
                for type_, obj in pending:
                    await send(type_, obj)
                pending = []
                if initial_end_due:
                    initial_end_due = False
                    await send("BOOKMARK", self._bookmark(rtype, cursor, initial_end=True))
                try:
                    changes = store.changes_since(cursor)
                except Gone as exc:
                    await send("ERROR", exc.status())
                    return
                cursor = max(cursor, store.rv)
                for change in changes:
                    event = _translate(change, rtype, selector, t.namespace)
                    if event is not None:
                        await send(*event)
                if rtype.custom and not self.registry.has(rtype.key):
                    return  # its CRD is gone (after the DELETED of its objects): so is the watch
                if bookmarks and time.monotonic() >= next_bookmark:
                    # Never a bookmark below the version the watch started from: a watch
                    # from a version the store has not reached (it was restored to an older
                    # one) hears nothing at all, as from a real server's watch cache.
                    if store.rv >= cursor:
                        await send("BOOKMARK", self._bookmark(rtype, cursor))
                    next_bookmark = time.monotonic() + self.bookmark_interval
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = None if deadline is None else deadline - now
            if bookmarks and not self._faults.stalled:
                to_bookmark = max(0.0, next_bookmark - now)
                wait = to_bookmark if wait is None else min(wait, to_bookmark)
            await store.wait_changed(wait)

    @staticmethod
    def _bookmark(rtype: ResourceType, rv: int, *, initial_end: bool = False) -> Obj:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}

    # --- writes ------------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        media = request.content_type
        if media == protobuf.MEDIA_TYPE:
            # Typed clients (``kubectl create namespace`` ...) send protobuf and never retry
            # in JSON after a 415; a real server decodes the body and, since they also accept
            # JSON, the double answers in JSON. Kinds it has no schema for are still a 415.
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as exc:
                raise UnsupportedMediaType(
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json, application/yaml ({exc})"
                ) from None
        if media.startswith("application/cbor"):
            raise UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json, application/yaml (got {media})"
            )
        try:
            if media == APPLY_PATCH or media.endswith("yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise BadRequest(f"the body of the request could not be decoded: {exc}") from None

    async def _create(self, request: web.Request, t: _Target) -> web.StreamResponse:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body of the request must be an object")
        _check_kind(body, t.rtype)
        return _json(self.store.create(body, rtype=t.rtype, namespace=t.namespace, reset_status=True), 201)

    async def _update(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        body = await self._body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body of the request must be an object")
        _check_kind(body, t.rtype)
        meta = body.setdefault("metadata", {})
        if meta.get("name", t.name) != t.name:
            raise BadRequest(f"the name of the object ({meta['name']}) does not match the name on the URL ({t.name})")
        meta["name"] = t.name
        if t.rtype.namespaced:
            if meta.get("namespace", t.namespace) != t.namespace:
                raise BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = t.namespace
        return _json(self.store.update(body, rtype=t.rtype, namespace=t.namespace, subresource=t.subresource))

    async def _patch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        media = request.content_type
        if media not in PATCH_TYPES:
            raise UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(PATCH_TYPES)}"
            )
        body = await self._body(request)
        try:
            current = self.store.get(t.rtype, t.name, t.namespace)
        except NotFound:
            if media != APPLY_PATCH:
                raise
            # Server-side apply creates what does not exist yet.
            if not isinstance(body, dict):
                raise BadRequest("the body of the request must be an object") from None
            body.setdefault("metadata", {})["name"] = t.name
            return _json(self.store.create(body, rtype=t.rtype, namespace=t.namespace, reset_status=True), 201)
        patched = apply_patch(media, current, body, kind=t.rtype.kind)
        if not isinstance(patched, dict):
            raise BadRequest("the patch did not produce an object")
        meta = patched.setdefault("metadata", {})
        meta["name"] = t.name
        if t.rtype.namespaced:
            meta["namespace"] = t.namespace
        return _json(self.store.update(patched, rtype=t.rtype, namespace=t.namespace, subresource=t.subresource))

    async def _delete(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        if t.rtype.key == "namespaces" and t.name in IMMORTAL_NAMESPACES:
            # (kube-apiserver's NamespaceLifecycle admission)
            raise Forbidden(f'namespaces "{t.name}" is forbidden: this namespace may not be deleted')
        preconditions: dict[str, Any] = {}
        if request.can_read_body:
            body = await self._body(request)
            if isinstance(body, dict):
                preconditions = body.get("preconditions") or {}
        deleted = self.store.delete(
            t.rtype,
            t.name,
            t.namespace,
            resource_version=preconditions.get("resourceVersion"),
            uid=preconditions.get("uid"),
        )
        if t.rtype.kind in ("Pod", "Namespace"):
            # These are gracefully deleted on a real server, which returns the object.
            return _json(deleted)
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": t.name,
                    "group": t.rtype.group,
                    "kind": t.rtype.plural,
                    "uid": deleted["metadata"]["uid"],
                },
            }
        )

    async def _delete_collection(self, request: web.Request, t: _Target) -> web.StreamResponse:
        selector = self._selector(request, t)
        items = self.store.list(t.rtype, selector, namespace=t.namespace)
        deleted = [self.store.delete(t.rtype, o["metadata"]["name"], o["metadata"].get("namespace")) for o in items]
        return _json(
            {
                "kind": t.rtype.list_kind,
                "apiVersion": t.rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": deleted,
            }
        )


def _table_version(request: web.Request) -> str | None:
    """The ``meta.k8s.io`` version of the Table the request asks for first, if it does."""
    return tables.wanted(request.headers.get("Accept", ""))


def _include(request: web.Request) -> str | None:
    """The request's ``includeObject`` (None: the default), refused when it is no such value."""
    include = request.query.get("includeObject")
    if include not in (None, "None", "Metadata", "Object"):
        raise BadRequest(f"unrecognized includeObject value: {include!r}")
    return include


ALLOWED = "the API server double authorizes every request (as --authorization-mode=AlwaysAllow does)"


def _review(body: Any, rtype: ResourceType) -> Obj:
    """A SelfSubjectAccessReview or SelfSubjectRulesReview answered as a server without
    authorization answers it: everything is allowed."""
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise BadRequest(f"a {rtype.kind} needs a spec")
    _check_kind(body, rtype)
    status: Obj = {"allowed": True, "reason": ALLOWED}
    if rtype.kind == "SelfSubjectRulesReview":
        status = {
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": False,
        }
    return {
        "kind": rtype.kind,
        "apiVersion": rtype.api_version,
        "metadata": {"creationTimestamp": None},
        "spec": body["spec"],
        "status": status,
    }


def _in_version(obj: Obj, rtype: ResourceType) -> Obj:
    """A custom object as read through one of its CRD's versions (no conversion: same fields)."""
    if rtype.custom:
        obj["apiVersion"] = rtype.api_version
    return obj


def _check_kind(body: Obj, rtype: ResourceType) -> None:
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if (kind and kind != rtype.kind) or (api_version and api_version != rtype.api_version):
        raise BadRequest(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rtype.api_version}) or kind {kind!r} is not {rtype.kind!r}"
        )


def _translate(
    change: Change, rtype: ResourceType, selector: Selector, namespace: str | None
) -> tuple[str, Obj] | None:
    """One history entry as this watcher sees it, or ``None`` if it does not concern it.

    Like the watch cache: an object that stops matching the selector is a
    ``DELETED`` (carrying its new state), one that starts matching an ``ADDED``.
    """
    if change.rtype.key != rtype.key:
        return None
    scoped = Selector(selector.labels, selector.fields, namespace)
    new_match = scoped.matches(change.object)
    if change.type == "ADDED":
        return ("ADDED", change.object) if new_match else None
    if change.type == "DELETED":
        return ("DELETED", change.object) if new_match else None
    old_match = change.old is not None and scoped.matches(change.old)
    if new_match and old_match:
        return ("MODIFIED", change.object)
    if new_match:
        return ("ADDED", change.object)
    if old_match:
        return ("DELETED", change.object)
    return None


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        ns, name = data["start"]
        return int(data["rv"]), (str(ns), str(name))
    except (ValueError, KeyError, TypeError):
        raise BadRequest(f"continue key is not valid: {token!r}") from None


def _audit_json(record: AuditRecord) -> dict[str, str]:
    return {
        "verb": record.verb,
        "apiGroup": record.api_group,
        "apiVersion": record.api_version,
        "resource": record.resource,
        "subresource": record.subresource,
        "namespace": record.namespace,
        "name": record.name,
        "path": record.path,
        "userAgent": record.user_agent,
    }
