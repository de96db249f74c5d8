"""Fixtures for the agent's tests: the API server double and a client configuration for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from wholeip_testkit.apiserver import ApiServer


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer(bookmark_interval=0.2, history=1000) as server:
        yield server


@pytest.fixture
async def kube_config(api: ApiServer, tmp_path: Path) -> client.Configuration:
    path = api.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    return cfg
