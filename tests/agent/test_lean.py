"""wholeip.kube.lean: kubernetes_asyncio imported by name, not all at once.

Each check runs in a fresh interpreter: whether the shim applies depends on what
the process imported before, which pytest's own process has long decided.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from wholeip.kube.lean import Unexpected, exports


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


PROBE = """
    import json, sys
    def loaded():
        return sorted(m for m in sys.modules if m.startswith("kubernetes_asyncio"))
    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
"""


def test_the_agent_imports_a_few_modules_of_the_library_and_every_name_still_resolves() -> None:
    result = _run(
        PROBE
        + """
    import wholeip.agent.app  # the agent, as `wholeip run` imports it
    from wholeip.kube.k8s import client, config
    after_import = loaded()
    import asyncio
    async def use():
        api = client.ApiClient(client.Configuration())
        client.CoreV1Api(api), client.DiscoveryV1Api(api)
        in_use = loaded()  # what the agent has once its clients exist
        response = type("R", (), {"data": '{"metadata": {"name": "x"}}'})()
        name = api.deserialize(response, "V1Pod").metadata.name  # models still load on use
        await api.close()
        return in_use, name
    in_use, deserialized = asyncio.run(use())
    import kubernetes_asyncio
    import kubernetes_asyncio.client.models as models
    from kubernetes_asyncio.client import V1ObjectMeta
    from kubernetes_asyncio.client.rest import RESTClientObject
    from kubernetes_asyncio.watch import Watch
    names = {
        "pod": models.V1Pod.__module__,
        "meta": V1ObjectMeta.__module__,
        "apps": client.AppsV1Api.__module__,
        "exception": client.ApiException.__name__,
        "version": kubernetes_asyncio.client.__version__,
        "config": config.load_kube_config.__module__,
        "rest": RESTClientObject.__name__,
        "watch": Watch.__name__,
        "deserialized": deserialized,
    }
    try:
        client.NoSuchThing
        missing = "resolved"
    except AttributeError as exc:
        missing = str(exc)
    print(json.dumps({"after_import": after_import, "in_use": in_use, "names": names, "missing": missing,
                      "lean": getattr(kubernetes_asyncio, "__lean__", False)}))
    """
    )
    assert result["lean"] is True
    after_import, in_use = result["after_import"], result["in_use"]
    assert isinstance(after_import, list)
    assert isinstance(in_use, list)
    assert len(in_use) < 30, in_use
    assert not [m for m in in_use if m.startswith("kubernetes_asyncio.client.models.")]
    assert "kubernetes_asyncio.client.api.core_v1_api" in in_use
    assert "kubernetes_asyncio.client.api.apps_v1_api" not in in_use
    assert result["names"] == {
        "pod": "kubernetes_asyncio.client.models.v1_pod",
        "meta": "kubernetes_asyncio.client.models.v1_object_meta",
        "apps": "kubernetes_asyncio.client.api.apps_v1_api",
        "exception": "ApiException",
        "version": result["names"]["version"],  # type: ignore[index]
        "config": "kubernetes_asyncio.config.kube_config",
        "rest": "RESTClientObject",
        "watch": "Watch",
        "deserialized": "x",
    }
    assert "has no attribute 'NoSuchThing'" in str(result["missing"])


def test_the_shim_saves_memory_against_the_plain_import() -> None:
    """Measured, not timed: the same imports with and without the shim, in fresh processes."""
    code = (
        PROBE
        + """
    if sys.argv[-1] == "lean":
        import wholeip.kube
    import kubernetes_asyncio
    from kubernetes_asyncio import client, config
    import asyncio
    async def use():
        api = client.ApiClient(client.Configuration())
        client.CoreV1Api(api), client.DiscoveryV1Api(api)
        await api.close()
    asyncio.run(use())
    print(json.dumps({"rss": rss_mib(), "modules": len(loaded())}))
    """
    )
    runs = {}
    for mode in ("lean", "plain"):
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), mode], capture_output=True, text=True, timeout=120, check=True
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["plain"]["modules"] > 800
    assert runs["lean"]["modules"] < 30
    assert runs["plain"]["rss"] - runs["lean"]["rss"] > 15, runs


def test_an_earlier_plain_import_is_left_alone() -> None:
    result = _run(
        PROBE
        + """
    import kubernetes_asyncio.client
    before = len(loaded())
    from wholeip.kube import lean
    print(json.dumps({"installed": lean.install(), "same": len(loaded()) == before,
                      "lean": getattr(sys.modules["kubernetes_asyncio"], "__lean__", False)}))
    """
    )
    assert result == {"installed": False, "same": True, "lean": False}


def test_exports_reads_imports_and_literal_dunders() -> None:
    source = textwrap.dedent(
        """
        \"\"\"Docstring.\"\"\"
        from __future__ import absolute_import
        __version__ = "1.2.3"
        # a comment
        from pkg.client.api.core_v1_api import CoreV1Api
        from pkg.client.exceptions import ApiException  # noqa: E501
        from pkg.client.rest import RESTClientObject as Rest
        import pkg.client as client
        __all__ = ["CoreV1Api", "client"]
        """
    )
    names, constants = exports(source)
    assert names == {
        "CoreV1Api": ("pkg.client.api.core_v1_api", "CoreV1Api"),
        "ApiException": ("pkg.client.exceptions", "ApiException"),
        "Rest": ("pkg.client.rest", "RESTClientObject"),
        "client": ("pkg.client", None),
    }
    assert constants == {"__version__": "1.2.3", "__all__": ["CoreV1Api", "client"]}


@pytest.mark.parametrize(
    "extra",
    [
        "from pkg.models import *",
        "import pkg.plain",
        "def helper():\n    pass",
        "if True:\n    from pkg.x import Y",
        "__version__ = compute()",
        "registry = {}",
        "from .relative import Thing",
    ],
)
def test_exports_refuses_an_init_it_could_not_reproduce(extra: str) -> None:
    with pytest.raises(Unexpected):
        exports(f"from pkg.a import A\n{extra}\n")
