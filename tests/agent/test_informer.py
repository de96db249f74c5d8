"""The informer against the API server double: list, watch, bookmarks, and every way a watch ends."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from agentkit import FAST, endpoint_slice, eventually, node, service
from kubernetes_asyncio import client

from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.resources import build_informers, trim_node
from wholeip_testkit.apiserver import ApiServer


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Informer], Informer]]:
    tasks: list[asyncio.Task[None]] = []

    def start(informer: Informer) -> Informer:
        tasks.append(asyncio.create_task(informer.run()))
        return informer

    yield start
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        # An informer must only ever end by cancellation.
        assert isinstance(result, asyncio.CancelledError), result


@pytest.fixture
async def api_client(kube_config: client.Configuration) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(kube_config) as api:
        yield api


def services_informer(api: client.ApiClient, **kwargs: Any) -> Informer:
    return Informer(
        resource="services",
        list_func=client.CoreV1Api(api).list_service_for_all_namespaces,
        options=kwargs.pop("options", FAST),
        **kwargs,
    )


def names(informer: Informer) -> set[str]:
    return set(informer.cache)


# --------------------------------------------------------------------------- list and watch


async def test_list_then_watch_follows_every_change(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    api.store.create(service("a"))
    api.store.create(service("b", namespace="kube-system"))
    changes = Counter()
    inf = running(services_informer(api_client, on_change=changes))
    await asyncio.wait_for(inf.synced.wait(), 5)
    assert names(inf) == {"default/a", "kube-system/b"}
    assert changes.n == 1

    api.store.create(service("c"))
    await eventually(lambda: "default/c" in inf.cache)
    svc = api.store.get("services", "a", "default")
    svc["metadata"]["labels"] = {"x": "y"}
    api.store.update(svc)
    await eventually(lambda: inf.cache["default/a"]["metadata"].get("labels") == {"x": "y"})
    api.store.delete("services", "b", "kube-system")
    await eventually(lambda: names(inf) == {"default/a", "default/c"})
    assert changes.n == 4
    assert inf.resource_version == str(api.store.rv)
    assert inf.lists == 1
    # Objects are kept as plain dicts, trimmed of managedFields.
    assert isinstance(inf.cache["default/a"], dict)
    assert "managedFields" not in inf.cache["default/a"]["metadata"]


async def test_first_list_asks_the_watch_cache_and_watches_request_bookmarks(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    calls: list[dict[str, Any]] = []
    real = client.CoreV1Api(api_client).list_service_for_all_namespaces

    async def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return await real(**kwargs)

    inf = running(Informer(resource="services", list_func=spy, options=FAST))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    first_list, first_watch = calls[0], calls[1]
    assert first_list["resource_version"] == "0"
    assert "watch" not in first_list
    assert first_watch["watch"] is True
    assert first_watch["allow_watch_bookmarks"] is True
    assert first_watch["resource_version"] == inf.resource_version
    assert first_watch["timeout_seconds"] >= FAST.watch_timeout


async def test_endpointslices_are_narrowed_by_the_service_name_label(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    services, slices, nodes = build_informers(api_client, on_change=lambda: None, options=FAST)
    for inf in (services, slices, nodes):
        running(inf)
    orphan = endpoint_slice("x", "10.244.1.99", "n1", suffix="orphan")
    del orphan["metadata"]["labels"]
    api.store.create(orphan)
    api.store.create(endpoint_slice("web", "10.244.1.10", "n1"))
    await eventually(lambda: "default/web-a" in slices.cache)
    assert "default/x-orphan" not in slices.cache


async def test_nodes_are_trimmed_and_heartbeats_do_not_wake_anyone(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    raw = node("n1", "192.0.2.11", "10.244.1.0/24")
    raw["status"]["conditions"][0]["lastHeartbeatTime"] = "2024-01-01T00:00:00Z"
    raw["status"]["images"] = [{"names": ["busybox"], "sizeBytes": 1}]
    api.store.create(raw)
    changes = Counter()
    inf = running(
        Informer(
            resource="nodes",
            list_func=client.CoreV1Api(api_client).list_node,
            transform=trim_node,
            on_change=changes,
            options=FAST,
        )
    )
    await asyncio.wait_for(inf.synced.wait(), 5)
    cached = inf.cache["n1"]
    assert "images" not in cached["status"]
    assert cached["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert cached["spec"]["podCIDRs"] == ["10.244.1.0/24"]
    before = changes.n

    beat = api.store.get("nodes", "n1")
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2024-01-01T00:00:10Z"
    api.store.update(beat, subresource="status")
    await eventually(lambda: inf.resource_version == str(api.store.rv))
    assert changes.n == before  # a heartbeat changes nothing the agent reads

    down = api.store.get("nodes", "n1")
    down["status"]["conditions"][0]["status"] = "False"
    api.store.update(down, subresource="status")
    await eventually(lambda: inf.cache["n1"]["status"]["conditions"][0]["status"] == "False")
    assert changes.n == before + 1


# --------------------------------------------------------------------------- how watches end


async def test_bookmarks_keep_a_quiet_watch_resumable_after_compaction(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    inf = running(services_informer(api_client))
    await asyncio.wait_for(inf.synced.wait(), 5)
    listed_at = inf.resource_version
    for i in range(5):  # other resources move the global revision
        api.store.create(node(f"n{i}", f"192.0.2.{i + 1}", f"10.244.{i}.0/24"))
    await eventually(lambda: inf.resource_version == str(api.store.rv), what="a bookmark")
    assert inf.resource_version != listed_at
    api.compact()
    api.drop_watches()
    api.store.create(service("late"))
    await eventually(lambda: "default/late" in inf.cache)
    assert inf.lists == 1  # resumed from the bookmark's version, no relist
    assert inf.restarts["expired"] == 0


async def test_a_dropped_watch_resumes_without_losing_events(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    api.store.create(service("a"))
    inf = running(services_informer(api_client))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    api.stall_watches()  # hold events back so that they pile up while the watch is cut
    api.store.create(service("b"))
    api.store.delete("services", "a", "default")
    api.drop_watches()
    api.release_watches()
    await eventually(lambda: names(inf) == {"default/b"})
    assert inf.lists == 1
    assert inf.restarts["error"] + inf.restarts["closed"] >= 1


async def test_gone_error_event_relists(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    api.store.create(service("a"))
    changes = Counter()
    inf = running(services_informer(api_client, on_change=changes))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    api.stall_watches()
    api.store.delete("services", "a", "default")
    api.store.create(service("b"))
    api.compact()  # the deletion of "a" is no longer in the history
    api.fail_next_watches(1)
    api.drop_watches()
    api.release_watches()
    await eventually(lambda: names(inf) == {"default/b"})
    assert inf.lists == 2
    assert inf.restarts["expired"] >= 1
    assert changes.n >= 2


async def test_a_stalled_watch_is_abandoned_after_the_idle_timeout(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    inf = running(services_informer(api_client, options=FAST))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    api.stall_watches()
    api.store.create(service("during-stall"))
    await eventually(lambda: inf.restarts["idle"] >= 1, within=FAST.idle_timeout * 5, what="idle restart")
    assert "default/during-stall" not in inf.cache
    api.release_watches()
    await eventually(lambda: "default/during-stall" in inf.cache)


async def test_api_server_restart_is_survived(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    api.store.create(service("a"))
    inf = running(services_informer(api_client))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.stop()
    api.store.create(service("b"))  # written while the server is away (etcd kept it)
    await eventually(lambda: inf.restarts["error"] >= 2, what="reconnect attempts while the server is down")
    await api.start()
    await eventually(lambda: names(inf) == {"default/a", "default/b"})


# --------------------------------------------------------------------------- HTTP 410 and backoff (scripted server)


class _Content:
    def __init__(self, lines: list[dict[str, Any]], hang: bool) -> None:
        self._lines = lines
        self._hang = hang

    async def iter_any(self) -> AsyncIterator[bytes]:
        for line in self._lines:
            yield json.dumps(line).encode() + b"\n"
        if self._hang:
            await asyncio.Event().wait()


class _Response:
    """Just enough of aiohttp.ClientResponse for the informer."""

    def __init__(self, status: int, body: Any = None, *, events: list[dict[str, Any]] | None = None) -> None:
        self.status = status
        self._body = body
        self.content = _Content(events or [], hang=events is not None and status == 200)

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return json.dumps(self._body).encode()


def _svc(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": rv}}


async def test_http_410_on_watch_relists_at_the_newest_version(running: Callable[[Informer], Informer]) -> None:
    calls: list[dict[str, Any]] = []
    script = [
        _Response(200, {"metadata": {"resourceVersion": "10"}, "items": [_svc("a", "5")]}),
        _Response(410, {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}),
        _Response(200, {"metadata": {"resourceVersion": "20"}, "items": [_svc("b", "15")]}),
        _Response(200, events=[{"type": "ADDED", "object": _svc("c", "21")}]),
    ]

    async def scripted(**kwargs: Any) -> _Response:
        calls.append(kwargs)
        return script.pop(0)

    inf = running(Informer(resource="services", list_func=scripted, options=FAST))
    await eventually(lambda: names(inf) == {"default/b", "default/c"})
    assert [c.get("watch", False) for c in calls] == [False, True, False, True]
    assert calls[0]["resource_version"] == "0"  # first list: any version (watch cache)
    assert "resource_version" not in calls[2]  # relist after 410: the newest version
    assert calls[3]["resource_version"] == "20"
    assert inf.resource_version == "21"
    assert inf.restarts["expired"] == 1


async def test_errors_back_off_exponentially_with_jitter(running: Callable[[Informer], Informer]) -> None:
    delays: list[float] = []
    attempts = 0

    async def failing(**kwargs: Any) -> _Response:
        nonlocal attempts
        attempts += 1
        return _Response(500, {"kind": "Status", "code": 500, "message": "etcd is sad"})

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    options = WatchOptions(backoff_base=1.0, backoff_max=8.0)
    inf = running(
        Informer(resource="services", list_func=failing, options=options, rng=random.Random(7), sleep=fake_sleep)
    )
    await eventually(lambda: len(delays) >= 8)
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=False):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) > 1  # jittered
    assert not inf.synced.is_set()


async def test_an_expired_continue_token_restarts_the_list_from_scratch(
    running: Callable[[Informer], Informer],
) -> None:
    calls: list[dict[str, Any]] = []
    script = [
        _Response(200, {"metadata": {"resourceVersion": "10", "continue": "tok"}, "items": [_svc("a", "5")]}),
        _Response(410, {"kind": "Status", "code": 410, "reason": "Expired", "message": "continue too old"}),
        _Response(200, {"metadata": {"resourceVersion": "30"}, "items": [_svc("b", "25")]}),
        _Response(200, events=[]),
    ]

    async def scripted(**kwargs: Any) -> _Response:
        calls.append(kwargs)
        return script.pop(0)

    inf = running(Informer(resource="services", list_func=scripted, options=FAST))
    await asyncio.wait_for(inf.synced.wait(), 5)
    assert names(inf) == {"default/b"}  # nothing of the abandoned first page survives
    assert calls[1]["_continue"] == "tok"
    assert "_continue" not in calls[2]
    assert "resource_version" not in calls[2]
    assert inf.resource_version == "30"


def test_packed_cache_holds_bytes_and_reads_copies() -> None:
    from wholeip.kube.informer import PackedCache

    cache = PackedCache()
    obj = {"metadata": {"name": "a", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}
    cache["default/a"] = obj
    assert isinstance(cache.raw["default/a"], bytes)
    assert len(cache.raw["default/a"]) < len(json.dumps(obj, separators=(",", ":")))  # compressed
    first = cache["default/a"]
    assert first == obj
    first["spec"]["ports"].append({"port": 443})  # a reader's copy cannot change the cache
    assert cache["default/a"] == obj
    assert cache.get("default/b") is None
    assert "default/a" in cache
    assert len(cache) == 1
    assert cache.pop("default/a") == obj
    assert not cache


# --------------------------------------------------------------------------- a store restored to an older state


class Diff:
    """A level-triggered consumer: on each notification, what appeared and what vanished."""

    def __init__(self) -> None:
        self.informer: Informer | None = None
        self.seen: set[str] = set()
        self.log: list[tuple[str, str]] = []

    def __call__(self) -> None:
        assert self.informer is not None
        now = set(self.informer.cache)
        self.log += [("deleted", k) for k in sorted(self.seen - now)]
        self.log += [("added", k) for k in sorted(now - self.seen)]
        self.seen = now


async def test_a_restored_store_is_caught_up_with_after_the_restart(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    api.store.create(service("a"))
    api.store.create(service("b"))
    backup = api.backup()
    for name in ("c", "d", "f"):  # after the backup: the restore loses them
        api.store.create(service(name))
    diff = Diff()
    inf = diff.informer = running(services_informer(api_client, on_change=diff))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    ours = int(inf.resource_version)

    await api.restore(backup)  # the control plane comes back on an older etcd
    api.store.delete("services", "b", "default")  # deleted since the restore
    api.store.create(service("e"))  # created since the restore
    assert api.store.rv < ours  # the watch's version is one the server has not reached

    await eventually(lambda: names(inf) == {"default/a", "default/e"}, within=10, what="caught up")
    assert {("deleted", "default/b"), ("deleted", "default/c"), ("added", "default/e")} <= set(diff.log)
    assert inf.rewinds == 1
    assert inf.resource_version == str(api.store.rv)
    api.store.create(service("g"))  # and the watch follows the restored store from there
    await eventually(lambda: "default/g" in inf.cache)


async def test_a_store_restored_empty_under_an_open_watch_is_noticed_when_the_watch_goes_quiet(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    for name in ("a", "b", "c", "d", "f"):
        api.store.create(service(name))
    diff = Diff()
    inf = diff.informer = running(services_informer(api_client, on_change=diff))
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)

    api.store.restore()  # an empty etcd, no restart: the open watch just goes silent
    api.store.create(service("new"))

    await eventually(lambda: names(inf) == {"default/new"}, within=FAST.idle_timeout * 6, what="caught up")
    assert ("deleted", "default/a") in diff.log
    assert ("added", "default/new") in diff.log
    assert inf.restarts["idle"] >= 1
    assert inf.rewinds == 1


async def test_too_large_resource_version_relists_from_scratch(running: Callable[[Informer], Informer]) -> None:
    calls: list[dict[str, Any]] = []
    too_large = {
        "kind": "Status",
        "code": 504,
        "reason": "Timeout",
        "message": "Timeout: Too large resource version: 10, current: 4",
        "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
    }
    script = [
        _Response(200, {"metadata": {"resourceVersion": "10"}, "items": [_svc("a", "5"), _svc("b", "7")]}),
        _Response(504, too_large),  # the watch, as an HTTP status
        _Response(200, {"metadata": {"resourceVersion": "4"}, "items": [_svc("a", "5")]}),
        _Response(200, events=[{"type": "ERROR", "object": too_large}]),  # the watch, as an ERROR event
        _Response(200, {"metadata": {"resourceVersion": "4"}, "items": [_svc("c", "3")]}),
        _Response(200, events=[]),
    ]

    async def scripted(**kwargs: Any) -> _Response:
        calls.append(kwargs)
        return script.pop(0)

    changes = Counter()
    inf = running(Informer(resource="services", list_func=scripted, options=FAST, on_change=changes))
    await eventually(lambda: not script, what="the whole script")
    await eventually(lambda: names(inf) == {"default/c"})
    assert [c.get("watch", False) for c in calls] == [False, True, False, True, False, True]
    assert "resource_version" not in calls[2]  # from scratch: the newest version, not ours
    assert "resource_version" not in calls[4]
    assert calls[5]["resource_version"] == "4"
    assert inf.restarts["too_large"] == 2
    assert inf.rewinds == 1  # 10 -> 4; the second list (4 -> 4) is not a rewind
    assert changes.n == 3  # every list that changed something notified, including the rewound one


async def test_readiness_fails_while_an_informer_cannot_get_through(
    api: ApiServer, api_client: client.ApiClient, running: Callable[[Informer], Informer]
) -> None:
    from wholeip.agent.health import Health

    class Loop:
        first_commit = asyncio.Event()

        def pending_age(self) -> float:
            return 0.0

    Loop.first_commit.set()
    inf = running(services_informer(api_client))
    health = Health(informers=[inf], loop=Loop(), timeout=0.5)
    await asyncio.wait_for(inf.synced.wait(), 5)
    await api.wait_for_watches(1)
    assert health.ready().ok
    await api.stop()
    await eventually(lambda: not health.ready().ok, what="unready")
    assert health.ready().detail.startswith("informers failing: services")
    assert health.healthy().ok  # liveness is another matter (nothing waits for a commit)
    await api.start()
    await eventually(lambda: health.ready().ok, what="ready again")
