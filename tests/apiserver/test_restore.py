"""resourceVersions newer than the store's, and a store restored to an older state (an etcd restore).

What a real kube-apiserver answers (staging/src/k8s.io/apiserver/pkg/storage/cacher): a list
"not older than" a version its watch cache has not reached waits 3 s, then a 504 Timeout
``Too large resource version`` with the cause ``ResourceVersionTooLarge``; a plain watch from
such a version is accepted and silent (no event after it, no bookmark at or below it); a
watch-list (``sendInitialEvents``) ends with that 504 as an ERROR event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from wholeip_testkit.apiserver import ApiServer
from wholeip_testkit.apiserver.protobuf import ProtobufError, decode

SVC = "/api/v1/namespaces/default/services"


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}}


def assert_too_large(status: dict[str, Any], requested: int, current: int) -> None:
    assert status["code"] == 504
    assert status["reason"] == "Timeout"
    assert status["message"] == f"Timeout: Too large resource version: {requested}, current: {current}"
    assert status["details"]["causes"] == [
        {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
    ]


async def read_events(resp: aiohttp.ClientResponse, count: int, *, within: float = 5.0) -> list[dict[str, Any]]:
    events = []
    for _ in range(count):
        line = await asyncio.wait_for(resp.content.readline(), within)
        events.append(json.loads(line))
    return events


async def test_a_list_newer_than_the_store_waits_then_is_too_large(api: ApiServer) -> None:
    api.too_large_wait = 0.2
    future = api.store.rv + 5
    async with aiohttp.ClientSession(api.url) as s:
        for query in (f"resourceVersion={future}", f"resourceVersion={future}&resourceVersionMatch=Exact"):
            async with s.get(f"{SVC}?{query}") as resp:
                assert resp.status == 504
                assert_too_large(await resp.json(), future, api.store.rv)

        # Reached while waiting: answered at the store's version, not refused.
        api.too_large_wait = 5.0
        request = asyncio.create_task(s.get(f"{SVC}?resourceVersion={api.store.rv + 1}"))
        await asyncio.sleep(0.05)
        api.store.create(service("a"))
        async with await request as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [i["metadata"]["name"] for i in body["items"]] == ["a"]
        assert body["metadata"]["resourceVersion"] == str(api.store.rv)


async def test_a_watch_newer_than_the_store_is_silent_until_the_store_passes_it(api: ApiServer) -> None:
    future = api.store.rv + 2
    async with (
        aiohttp.ClientSession(api.url) as s,
        s.get(f"{SVC}?watch=1&allowWatchBookmarks=true&resourceVersion={future}") as resp,
    ):
        assert resp.status == 200
        await api.wait_for_watches(1)
        api.store.create(service("before"))  # at future - 1: not after the watch's version
        with pytest.raises(TimeoutError):  # several bookmark intervals: nothing, not even a bookmark
            await read_events(resp, 1, within=api.bookmark_interval * 4)
        api.store.create(service("at"))  # at future
        api.store.create(service("after"))
        (event,) = await read_events(resp, 1)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "after")
        (event,) = await read_events(resp, 1)
        assert event["type"] == "BOOKMARK"
        assert event["object"]["metadata"]["resourceVersion"] == str(api.store.rv)


async def test_a_watch_list_newer_than_the_store_ends_with_a_too_large_error(api: ApiServer) -> None:
    api.too_large_wait = 0.2
    future = api.store.rv + 5
    query = f"watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion={future}"
    async with aiohttp.ClientSession(api.url) as s, s.get(f"{SVC}?{query}") as resp:
        assert resp.status == 200
        (event,) = await read_events(resp, 1)
        assert event["type"] == "ERROR"
        assert_too_large(event["object"], future, api.store.rv)


async def test_restore_goes_back_to_the_backup_with_lower_resource_versions(api: ApiServer) -> None:
    api.store.create(service("kept"))
    backup = api.backup()
    at_backup = api.store.rv
    api.store.create(service("lost"))
    api.store.delete("services", "kept", "default")
    before = api.store.rv
    async with aiohttp.ClientSession(api.url) as s:
        async with s.get(f"{SVC}?watch=1&resourceVersion={before}") as watch:
            await api.wait_for_watches(1)
            await api.restore(backup)
            with pytest.raises(aiohttp.ClientError):  # the restart cut the watch
                await watch.content.read()
        assert api.store.rv == at_backup
        async with s.get(SVC) as resp:
            body = await resp.json()
        assert [i["metadata"]["name"] for i in body["items"]] == ["kept"]
        assert int(body["metadata"]["resourceVersion"]) == at_backup < before
        # No history before the snapshot survives it.
        async with s.get(f"{SVC}?watch=1&resourceVersion={at_backup - 1}") as resp:
            (event,) = await read_events(resp, 1)
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410)
        # Writes reuse revisions that clients have already seen.
        created = api.store.create(service("new"))
        assert int(created["metadata"]["resourceVersion"]) == at_backup + 1 <= before

        await api.restore()  # an empty etcd: the default namespaces, nothing else
        async with s.get(SVC) as resp:
            body = await resp.json()
        assert body["items"] == []
        assert int(body["metadata"]["resourceVersion"]) == api.store.rv < at_backup


async def test_restore_over_the_control_endpoint(api: ApiServer) -> None:
    api.store.create(service("a"))
    async with aiohttp.ClientSession(api.url) as s:
        async with s.post("/_double/backup") as resp:
            assert resp.status == 200
        api.store.create(service("b"))
        async with s.post("/_double/restore") as resp:
            assert resp.status == 200
        assert api.restarting is not None
        await api.restarting
        assert [o["metadata"]["name"] for o in api.store.list("services")] == ["a"]
        async with s.post("/_double/restore?empty=1") as resp:
            assert resp.status == 200
        await api.restarting
        assert api.store.list("services") == []


def test_protobuf_bodies_decode_known_kinds_only() -> None:
    # What `kubectl create namespace x` sends (captured from kubectl v1.37).
    namespace = (
        b'k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x19\n\x11\n\x01x\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00'
        b'\x12\x00\x1a\x02\n\x00\x1a\x00"\x00'
    )
    assert decode(namespace) == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    with pytest.raises(ProtobufError, match="magic"):
        decode(b'{"kind": "Namespace"}')
    pod_body = b"k8s\x00\n\t\n\x02v1\x12\x03Pod\x12\x00"
    with pytest.raises(ProtobufError, match="Pod"):
        decode(pod_body)
