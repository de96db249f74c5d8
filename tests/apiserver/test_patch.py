"""Patch semantics, checked against what the real server does for the same input."""

from __future__ import annotations

from typing import Any

import pytest

from wholeip_testkit.apiserver.errors import Invalid
from wholeip_testkit.apiserver.patch import json_merge_patch, json_patch, strategic_merge_patch

POD: dict[str, Any] = {
    "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
    "spec": {
        "containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}], "ports": [
                {"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "side:1"},
        ],
        "tolerations": [{"key": "k1"}, {"key": "k2"}],
    },
}  # fmt: skip


def test_merge_patch_merges_maps_deletes_nulls_replaces_lists() -> None:
    out = json_merge_patch(POD, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"containers": []}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"]["containers"] == []
    assert POD["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_smp_merges_lists_by_patch_merge_key() -> None:
    patch = {"spec": {"containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
                                     {"name": "new", "image": "new:1"}]}}  # fmt: skip
    out = strategic_merge_patch(POD, patch, kind="Pod")
    app, side, new = out["spec"]["containers"]
    assert app["image"] == "app:2"
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert app["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert side["name"] == "side"
    assert new["name"] == "new"


def test_smp_atomic_lists_are_replaced_and_primitive_merge_lists_unioned() -> None:
    out = strategic_merge_patch(
        POD, {"metadata": {"finalizers": ["y"]}, "spec": {"tolerations": [{"key": "k3"}]}}, kind="Pod"
    )
    assert out["spec"]["tolerations"] == [{"key": "k3"}]
    assert out["metadata"]["finalizers"] == ["x", "y"]


def test_smp_directives() -> None:
    patch = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "labels": {"$patch": "replace", "z": "9"}},
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "$patch": "delete"}, {"name": "side", "image": "side:2"}],
            "$retainKeys": ["containers"],
        },
    }
    out = strategic_merge_patch(POD, patch, kind="Pod")
    assert out["metadata"]["finalizers"] == []
    assert out["metadata"]["labels"] == {"z": "9"}
    assert out["spec"] == {"containers": [{"name": "side", "image": "side:2"}]}

    replaced = strategic_merge_patch(
        POD, {"spec": {"containers": [{"$patch": "replace"}, {"name": "only"}]}}, kind="Pod"
    )
    assert replaced["spec"]["containers"] == [{"name": "only"}]
    assert strategic_merge_patch(POD, {"spec": {"$patch": "delete"}}, kind="Pod").get("spec") is None


def test_smp_service_ports_merge_by_port_but_endpointslice_ports_are_atomic() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443, "name": "tls"}]}}, kind="Service")
    assert out["spec"]["ports"] == [{"port": 80, "name": "http"}, {"port": 443, "name": "tls"}]
    eps = {"ports": [{"port": 80}], "endpoints": [{"addresses": ["10.0.0.1"]}]}
    out = strategic_merge_patch(eps, {"ports": [{"port": 81}]}, kind="EndpointSlice")
    assert out["ports"] == [{"port": 81}]


def test_json_patch_operations_and_atomicity() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e~1f"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/e~1f", "value": "y"},
        ],
    )
    assert out == {"a": {"b": [0, 2, 3]}, "c": "y", "e/f": "y"}
    with pytest.raises(Invalid):
        json_patch(doc, [{"op": "replace", "path": "/c", "value": "z"}, {"op": "test", "path": "/c", "value": "q"}])
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}
    with pytest.raises(Invalid):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
