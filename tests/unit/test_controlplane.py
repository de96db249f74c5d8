"""Which addresses the agent learns it reaches the API server at (issue 15 item 1)."""

from __future__ import annotations

import ipaddress

import pytest

from wholeip.agent.controlplane import api_server_addresses, with_control_plane
from wholeip.settings import ModelSettings


async def _resolver(host: str) -> list[str]:
    if host == "api.example.com":
        return ["198.51.100.7", "2001:db8:5::7", "198.51.100.7"]
    raise OSError(f"no such host {host}")


@pytest.mark.parametrize(
    ("server", "env", "want"),
    [
        ("https://198.51.100.7:6443", {}, ["198.51.100.7"]),
        ("https://[2001:db8:5::7]:6443", {}, ["2001:db8:5::7"]),
        ("https://api.example.com:6443", {}, ["198.51.100.7", "2001:db8:5::7"]),
        ("http://127.0.0.1:8080", {}, ["127.0.0.1"]),
        # In-cluster: the client's server is built from these, and the host is guarded as such.
        ("https://10.96.0.1:443", {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, ["10.96.0.1"]),
        (
            "https://api.example.com",
            {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1"},
            ["198.51.100.7", "2001:db8:5::7", "fd00:10:96::1"],
        ),
        ("https://nowhere.invalid:6443", {}, []),  # logged, not fatal
    ],
)
async def test_the_server_host_and_the_in_cluster_host(server: str, env: dict[str, str], want: list[str]) -> None:
    got = await api_server_addresses(server, env=env, resolve=_resolver)
    assert [str(ip) for ip in got] == want


async def test_the_flag_and_the_learnt_addresses_add_up() -> None:
    given = ModelSettings(control_plane_ips=(ipaddress.ip_address("192.0.2.50"),))
    model = await with_control_plane(given, "https://api.example.com:6443", env={}, resolve=_resolver)
    assert [str(ip) for ip in model.control_plane_ips] == ["192.0.2.50", "198.51.100.7", "2001:db8:5::7"]
