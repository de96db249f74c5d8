"""kubernetes_asyncio against the double: list, watch semantics, bookmarks, 410 and fault knobs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from wholeip_testkit.apiserver import ApiServer


def svc(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    }


async def test_list_with_selectors_and_pagination(api: ApiServer, k8s: client.ApiClient) -> None:
    for i in range(5):
        api.store.create(svc(f"s{i}", wholeip="yes" if i % 2 == 0 else "no", idx=str(i)))
    api.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    api.store.create(svc("x", "other", wholeip="yes"))
    v1 = client.CoreV1Api(k8s)

    everything = await v1.list_service_for_all_namespaces()
    assert [s.metadata.name for s in everything.items] == ["s0", "s1", "s2", "s3", "s4", "x"]
    assert everything.metadata.resource_version == str(api.store.rv)

    async def names(**kwargs: Any) -> list[str]:
        result = await v1.list_service_for_all_namespaces(**kwargs)
        return [s.metadata.name for s in result.items]

    assert await names(label_selector="wholeip=yes") == ["s0", "s2", "s4", "x"]
    assert await names(label_selector="wholeip==yes,idx") == ["s0", "s2", "s4"]
    assert await names(label_selector="wholeip!=yes") == ["s1", "s3"]
    assert await names(label_selector="idx in (1, 2),wholeip notin (no)") == ["s2"]
    assert await names(label_selector="!idx") == ["x"]
    assert await names(label_selector="idx>2") == ["s3", "s4"]
    assert await names(field_selector="metadata.namespace=other") == ["x"]
    assert await names(field_selector="metadata.name!=s0,metadata.namespace==default") == [
        "s1",
        "s2",
        "s3",
        "s4",
    ]
    with pytest.raises(ApiException) as bad:
        await v1.list_service_for_all_namespaces(field_selector="spec.nope=1")
    assert bad.value.status == 400

    # Pages are a consistent snapshot at the first page's revision.
    page = await v1.list_namespaced_service("default", limit=2)
    assert [s.metadata.name for s in page.items] == ["s0", "s1"]
    assert page.metadata.remaining_item_count == 3
    api.store.delete("services", "s2", "default")
    rest = await v1.list_namespaced_service("default", limit=10, _continue=page.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["s2", "s3", "s4"]
    assert rest.metadata.resource_version == page.metadata.resource_version
    # Across namespaces, unfiltered (the informers' list): the same, counted without a scan.
    page = await v1.list_service_for_all_namespaces(limit=2)
    assert [s.metadata.name for s in page.items] == ["s0", "s1"]
    assert page.metadata.remaining_item_count == 3  # s3, s4, x (s2 is gone)
    api.store.create(svc("s9"))
    rest = await v1.list_service_for_all_namespaces(limit=2, _continue=page.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["s3", "s4"]
    assert rest.metadata.remaining_item_count == 1
    now = await v1.list_service_for_all_namespaces(limit=10)
    assert [s.metadata.name for s in now.items] == ["s0", "s1", "s3", "s4", "s9", "x"]
    # resourceVersion=0 (what informers ask for first) comes from a real server's watch
    # cache, whole: the limit is ignored, there is no continue token.
    whole = await v1.list_service_for_all_namespaces(limit=2, resource_version="0")
    assert [s.metadata.name for s in whole.items] == ["s0", "s1", "s3", "s4", "s9", "x"]
    assert not whole.metadata._continue
    api.compact()
    with pytest.raises(ApiException) as gone:
        await v1.list_namespaced_service("default", limit=10, _continue=page.metadata._continue)
    assert gone.value.status == 410


async def test_watch_from_resource_version_sees_changes_in_order(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    api.store.create(svc("before"))
    listed = await v1.list_namespaced_service("default")
    rv = listed.metadata.resource_version

    a = api.store.create(svc("a", app="x"))
    a["spec"]["sessionAffinity"] = "ClientIP"
    api.store.update(a)
    api.store.delete("services", "a", "default")

    seen: list[tuple[str, str, str]] = []
    async with watch.Watch().stream(
        v1.list_namespaced_service, "default", resource_version=rv, timeout_seconds=2
    ) as stream:
        async for event in stream:
            obj = event["object"]
            seen.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
            if event["type"] == "DELETED":
                break
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    rvs = [int(r) for _, _, r in seen]
    assert rvs == sorted(rvs)
    assert rvs[-1] == api.store.rv


async def test_watch_without_resource_version_starts_with_synthetic_adds(api: ApiServer, k8s: client.ApiClient) -> None:
    api.store.create(svc("one"))
    v1 = client.CoreV1Api(k8s)
    async with watch.Watch().stream(v1.list_namespaced_service, "default", timeout_seconds=2) as stream:
        first = await stream.__anext__()
        assert (first["type"], first["object"].metadata.name) == ("ADDED", "one")
        api.store.create(svc("two"))
        second = await stream.__anext__()
        assert (second["type"], second["object"].metadata.name) == ("ADDED", "two")


async def test_selector_transitions_are_adds_and_deletes(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    rv = str(api.store.rv)
    s = api.store.create(svc("s", proxy="other"))
    s["metadata"]["labels"]["proxy"] = "wholeip"
    s = api.store.update(s)
    s["metadata"]["labels"]["proxy"] = "gone"
    api.store.update(s)
    async with watch.Watch().stream(
        v1.list_namespaced_service,
        "default",
        resource_version=rv,
        label_selector="proxy=wholeip",
        timeout_seconds=2,
    ) as stream:
        events = [(e["type"], e["object"].metadata.labels["proxy"]) async for e in _take(stream, 2)]
    assert events == [("ADDED", "wholeip"), ("DELETED", "gone")]


async def _take(stream: Any, n: int) -> Any:
    async for event in stream:
        yield event
        n -= 1
        if n == 0:
            return


async def test_bookmarks_advance_the_resource_version(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    rv = api.store.rv
    api.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}})
    async with watch.Watch().stream(
        v1.list_namespaced_service,
        "default",
        resource_version=str(rv),
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ) as stream:
        event = await asyncio.wait_for(stream.__anext__(), 5)
    assert event["type"] == "BOOKMARK"
    # The bookmark moves the client past the unrelated write it was not shown.
    assert int(event["raw_object"]["metadata"]["resourceVersion"]) == api.store.rv > rv
    assert event["raw_object"]["kind"] == "Service"


async def test_watch_from_compacted_revision_is_410(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    old = str(api.store.rv)
    api.store.create(svc("a"))
    api.compact()
    with pytest.raises(ApiException) as gone:
        async with watch.Watch().stream(
            v1.list_namespaced_service, "default", resource_version=old, timeout_seconds=2
        ) as stream:
            await stream.__anext__()
    assert gone.value.status == 410
    # The history window is bounded too: 50 writes later, the old revision is gone.
    rv = str(api.store.rv)
    for i in range(60):
        api.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})
    with pytest.raises(ApiException) as gone:
        async with watch.Watch().stream(
            v1.list_namespaced_service, "default", resource_version=rv, timeout_seconds=2
        ) as stream:
            await stream.__anext__()
    assert gone.value.status == 410
    assert "too old resource version" in str(gone.value.reason)


async def test_fail_next_watches(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    api.fail_next_watches(1)
    api.store.create(svc("s"))
    rv = str(api.store.rv - 1)

    async def first_event() -> Any:
        async with watch.Watch().stream(
            v1.list_namespaced_service, "default", resource_version=rv, timeout_seconds=2
        ) as stream:
            return await stream.__anext__()

    with pytest.raises(ApiException) as gone:
        await first_event()
    assert gone.value.status == 410
    # Only the next one: the watch after it works.
    event = await first_event()
    assert (event["type"], event["object"].metadata.name) == ("ADDED", "s")


async def test_timeout_seconds_ends_the_stream(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with watch.Watch().stream(
        v1.list_namespaced_service, "default", resource_version=str(api.store.rv), timeout_seconds=1
    ) as stream:
        events = [e async for e in stream]
    assert events == []
    assert 0.9 <= loop.time() - start < 5


async def test_drop_watches_ends_streams(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    rv = str(api.store.rv)

    async def consume() -> list[str]:
        out = []
        async with watch.Watch().stream(
            v1.list_namespaced_service, "default", resource_version=rv, timeout_seconds=30
        ) as stream:
            async for event in stream:
                out.append(event["type"])
        return out

    graceful = asyncio.create_task(consume())
    await api.wait_for_watches(1)
    assert api.drop_watches(graceful=True) == 1
    assert await asyncio.wait_for(graceful, 5) == []

    abrupt = asyncio.create_task(consume())
    await api.wait_for_watches(1)
    api.drop_watches()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(abrupt, 5)
    assert api.open_watches == 0


async def test_stall_and_release(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    async with watch.Watch().stream(
        v1.list_namespaced_service,
        "default",
        resource_version=str(api.store.rv),
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    ) as stream:
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first["type"] == "BOOKMARK"
        api.stall_watches()
        api.store.create(svc("during-stall"))
        # Nothing at all arrives while stalled: no event, and no bookmark although
        # three bookmark intervals (0.2 s each) pass.  Absence needs a time window.
        pending = asyncio.ensure_future(stream.__anext__())
        done, _ = await asyncio.wait([pending], timeout=0.6)
        assert not done
        assert api.open_watches == 1
        api.release_watches()
        event = await asyncio.wait_for(pending, 5)
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "during-stall")


async def test_stop_and_start_on_the_same_port(api: ApiServer, k8s: client.ApiClient) -> None:
    v1 = client.CoreV1Api(k8s)
    api.store.create(svc("kept"))
    port = api.port
    await api.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await v1.list_namespaced_service("default", _request_timeout=2)
    await api.start()
    assert api.port == port
    listed = await v1.list_namespaced_service("default")
    assert [s.metadata.name for s in listed.items] == ["kept"]
    assert listed.metadata.resource_version == str(api.store.rv)
